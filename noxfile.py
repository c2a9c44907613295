"""Developer and CI sessions for the Sana toolkit monorepo.

`nox` (no arguments) runs lint, every package's tests in isolation, the integration tests and the docs
build: this is the README's test command and what `.ci/run` calls.

The pip/venv backend is deliberate: pip finds the machine's local CPU torch wheel, uv would not (it
would download a multi-GB CUDA build). torch is pinned here, packages declare ranges.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["lint", "tests", "integration", "docs"]
nox.options.error_on_missing_interpreters = True

ROOT = Path(__file__).parent
TORCH = "torch==2.13.0"
LINT_TOOLS = ["ruff==0.17.*"]
DOCS_TOOLS = ["mkdocs>=1.6", "mkdocs-material>=9.5", "mkdocstrings[python]>=0.26"]


def _pyproject(package: str) -> dict:
    return tomllib.loads((ROOT / "packages" / package / "pyproject.toml").read_text())


# Packages exist when their folder has a pyproject.toml; sessions follow the tree, nothing to keep in sync.
PACKAGES = sorted(p.parent.name for p in (ROOT / "packages").glob("*/pyproject.toml"))


def _local_deps(package: str) -> list[str]:
    """In-repo packages that `package` declares as dependencies (only the umbrella has any)."""
    declared = _pyproject(package)["project"].get("dependencies", [])
    names = {re.split(r"[\s<>=!~\[;]", d, maxsplit=1)[0].replace("-", "_") for d in declared}
    return [p for p in PACKAGES if p in names and p != package]


def _test_group(package: str) -> list[str]:
    return _pyproject(package).get("dependency-groups", {}).get("test", [])


def _install(session: nox.Session, package: str, *, editable: bool = False) -> None:
    """Install one package from its local path with only its declared dependencies (+ its test group)."""
    session.install(TORCH)
    flag = ["-e"] if editable else []
    local = [f"./packages/{dep}" for dep in _local_deps(package)]
    session.install(*flag, *local, f"./packages/{package}")
    if group := _test_group(package):
        session.install(*group)


@nox.session
def lint(session: nox.Session) -> None:
    session.install(*LINT_TOOLS)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
@nox.parametrize("package", PACKAGES)
def tests(session: nox.Session, package: str) -> None:
    """One package, installed alone and non-editable: proves it is separately installable."""
    _install(session, package)
    session.run("python", "-c", f"import {package}")
    session.run("python", "-m", "pytest", f"packages/{package}/tests", *session.posargs)


def _install_all(session: nox.Session) -> None:
    session.install(TORCH)
    session.install(*(f"./packages/{p}" for p in PACKAGES))
    groups = sorted({req for p in PACKAGES for req in _test_group(p)})
    session.install(*groups)


@nox.session
def integration(session: nox.Session) -> None:
    """Cross-package tests with every package installed together."""
    _install_all(session)
    session.run("python", "-m", "pytest", "tests/integration", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the docs strictly and execute every ```python block in docs/ against the installed packages."""
    _install_all(session)
    session.install(*DOCS_TOOLS)
    session.run("python", "-m", "pytest", "tests/docs", *session.posargs)
    site = str(Path(session.create_tmp()) / "site")
    session.run("mkdocs", "build", "--strict", "--site-dir", site, env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session
def benchmarks(session: nox.Session) -> None:
    """Run the benchmarks (not part of the default sessions); writes JSON/Markdown/PNG into docs/.

    The recipe sweeps (`*_recipe_sweep.py`) need a recipe run's folder and a GPU: run them by hand (their
    docstrings say how). `_*.py` are helpers of the others."""
    _install_all(session)
    session.install("matplotlib>=3.8")
    scripts = sorted(str(p) for p in (ROOT / "benchmarks").glob("[!_]*.py") if not p.name.endswith("_recipe_sweep.py"))
    for script in session.posargs or scripts:
        session.run("python", script)


@nox.session
def demo(session: nox.Session) -> None:
    """The README's main job: install the toolkit and generate with the embedded default model (offline).

    `nox -s demo -- "a prompt" ...` generates other prompts; images land in outputs/demo/."""
    session.install(TORCH)
    session.install(*(f"./packages/{p}" for p in PACKAGES))
    prompts = session.posargs or ["a red circle to the left of a blue square"]
    session.run("sana", "generate", *prompts, "-o", "outputs/demo", env={"HF_HUB_OFFLINE": "1"})


@nox.session
def train_embedded(session: nox.Session) -> None:
    """Train the embedded default model from scratch (81 minutes on 2 CPU cores with AVX512-BF16; resumable).

    Writes runs/embedded/model; copy it to packages/sana/src/sana/default_model to ship it. Pass `-- --quick` for a
    few-step check of every stage. On a CPU without AVX-512 the command first says how long the default recipe
    takes there (about 102 minutes on a 2-core AVX2 EPYC) and that `-- --set dit_steps=8000` keeps to about 85."""
    session.install(TORCH)
    session.install(*(f"./packages/{p}" for p in PACKAGES if p != "sana"), "./packages/sana[train]")
    session.run("sana", "train-embedded", "--work-dir", "runs/embedded", *session.posargs,
                env={"HF_HUB_OFFLINE": "1"})  # fmt: skip
