"""`sana app`: the request checks and generation of `AppBackend`, and the real server (started with `python -m sana
app`) driven in Debian's Chromium through Playwright and through `gradio_client`.

Nothing is downloaded: the model is the embedded default (see `app_model`), Playwright launches the system
Chromium (`.ci/run` installs it with apt), and the browser test checks that the page fetched nothing from outside
the server.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from sana.app import AppBackend, Limits, default_port
from sana.images import read_metadata

ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = ROOT / "test-artifacts"
DOCS_SCREENSHOT = ROOT / "docs" / "assets" / "app.png"
SERVER_LIMITS = ["--max-pixels", str(512 * 512), "--max-steps", "8", "--max-images", "3", "--queue-size", "8"]
STARTUP_SECONDS = 180


@pytest.fixture(scope="module")
def app_model() -> Path:
    """The pipeline folder the app serves: the embedded default model (`sana.embedded.default_model_path()`).

    Set the environment variable `SANA_APP_TEST_MODEL` to a pipeline folder to test against another model with the
    same layout (e.g. `SANA_APP_TEST_MODEL=/tmp/emb/quick/model`, a `sana train-embedded --quick` output, while the
    default model is being trained).
    """
    override = os.environ.get("SANA_APP_TEST_MODEL")
    if override:
        return Path(override)
    from sana.embedded import default_model_path

    return default_model_path()


@pytest.fixture(scope="module")
def pipe(app_model: Path) -> Any:
    from sana.pipeline import SanaPipeline

    return SanaPipeline.from_pretrained(app_model)


@pytest.fixture
def backend(pipe: Any, tmp_path: Path) -> AppBackend:
    return AppBackend(pipe, Limits(max_pixels=512 * 512, max_steps=8, max_images=3), out_dir=tmp_path / "out")


def _args(**changes: Any) -> dict[str, Any]:
    """A valid request (as the page sends it: sliders give floats), with `changes` applied."""
    values = {"prompt": "a red circle to the left of a blue square", "negative_prompt": "", "width": 256.0,
              "height": 256.0, "steps": 2.0, "guidance_scale": 4.5, "pag_guidance_scale": 1.0,
              "sampler": "flow_dpm-solver", "seed": 3, "randomize_seed": False, "images": 1.0}  # fmt: skip
    return {**values, **changes}


# --- request checks and generation (in process) -------------------------------------------------------------------


def test_importing_the_app_module_does_not_import_gradio() -> None:
    code = "import sys, sana.app, sana.cli; sana.cli._parser(); assert 'gradio' not in sys.modules, 'gradio imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_sana_app_without_gradio_says_how_to_install(
    app_model: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sana import cli

    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` now raises ImportError
    assert cli.main(["app", "--model_path", str(app_model)]) == 2
    assert "pip install './packages/sana[app]'" in capsys.readouterr().err


def test_port_comes_from_the_flag_then_demo_port_then_15432(monkeypatch: pytest.MonkeyPatch) -> None:
    from sana import cli

    monkeypatch.delenv("DEMO_PORT", raising=False)
    assert default_port() == 15432
    monkeypatch.setenv("DEMO_PORT", "8123")
    assert default_port() == 8123
    args = cli._parser().parse_args(["app", "--port", "9000", "--max-steps", "5"])
    assert (args.port, args.max_steps, args.host, args.run.__name__) == (9000, 5, "127.0.0.1", "run_app")
    monkeypatch.setenv("DEMO_PORT", "web")
    with pytest.raises(ValueError, match="DEMO_PORT must be a port number"):
        default_port()


@pytest.mark.parametrize("field", ["max_pixels", "max_steps", "max_images", "concurrency", "queue_size"])
def test_limits_must_be_positive_ints(field: str) -> None:
    with pytest.raises(ValueError, match=f"Limits.{field} must be an int >= 1"):
        Limits(**{field: 0})


def test_presets_are_the_buckets_the_autoencoder_can_decode(backend: AppBackend, pipe: Any) -> None:
    f = pipe.autoencoder.spatial_compression
    presets = backend.presets()
    assert set(presets.values()) == {tuple(v) for v in pipe.bucket_table.values() if v[0] % f == 0 and v[1] % f == 0}
    assert all(h % f == 0 and w % f == 0 for h, w in presets.values())
    assert backend.default_size == (pipe.config.model.image_size,) * 2
    assert f"{pipe.config.model.image_size} × {pipe.config.model.image_size} (1:1)" in presets


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prompt": "  "}, "the prompt is empty"),
        ({"prompt": None}, "the prompt must be text"),
        ({"prompt": "x" * 2001}, "at most 2000"),
        ({"prompt": "a red circle --hw 4096:4096"}, "size flags"),
        ({"width": 1024, "height": 1024}, "1,048,576 pixels is more than this server allows (262,144 pixels"),
        ({"width": 100000}, "width must be between 64 and 1024 pixels"),
        ({"width": 256.5}, "width must be a whole number"),
        ({"width": 1024, "height": 64}, "outside the model's buckets"),
        ({"steps": 9}, "steps must be between 1 and 8 on this server, got 9"),
        ({"steps": 0}, "steps must be between 1 and 8"),
        ({"images": 4}, "images per prompt must be between 1 and 3 on this server, got 4"),
        ({"guidance_scale": float("nan")}, "CFG scale must be a finite number"),
        ({"pag_guidance_scale": 100}, "PAG scale must be between 0 and 20"),
        ({"sampler": "ddim"}, "unknown sampler 'ddim'"),
        ({"seed": -1}, "seed must be between 0 and"),
        ({"seed": "7"}, "seed must be a whole number"),
        ({"randomize_seed": "yes"}, "randomize seed must be true or false"),
    ],
)
def test_bad_requests_are_refused_with_the_reason(backend: AppBackend, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as err:
        backend.check(**_args(**changes))
    assert message in str(err.value)


def test_generate_writes_pngs_of_the_asked_size_with_metadata_and_reports_each_step(backend: AppBackend) -> None:
    request = backend.check(**_args(width=300.0, height=200.0, steps=3.0, images=2.0, seed=11))
    calls: list[tuple[int, int]] = []
    paths, settings = backend.generate(request, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert [p.name for p in paths] == ["sana_11.png", "sana_12.png"]
    assert settings["seeds"] == [11, 12] and settings["bucket"] == [192, 320] and settings["seed"] == 11
    for j, path in enumerate(paths):
        with Image.open(path) as image:
            assert (image.format, image.size) == ("PNG", (300, 200))
        meta = read_metadata(path)
        assert meta["prompt"] == request.prompt and meta["seed"] == 11 + j and meta["index"] == j
        assert (meta["width"], meta["height"], meta["num_inference_steps"]) == (300, 200, 3)
        assert meta["bucket"] == [192, 320] and meta["generator"] == "sana app"


def test_images_match_the_pipeline_and_the_echoed_seed_reproduces_them(backend: AppBackend, pipe: Any) -> None:
    first, settings = backend.generate(backend.check(**_args(randomize_seed=True, images=2.0, width=320, height=192)))
    seed = settings["seed"]
    assert settings["randomize_seed"] is True and read_metadata(first[0])["seed"] == seed
    again, _ = backend.generate(backend.check(**_args(seed=seed, images=2.0, width=320, height=192)))
    expected = pipe("a red circle to the left of a blue square", height=192, width=320, num_inference_steps=2,
                    guidance_scale=4.5, pag_guidance_scale=1.0, seed=seed, num_images_per_prompt=2,
                    sampler="flow_dpm-solver", output_type="np", progress=False)  # fmt: skip
    for j in range(2):
        a, b = np.asarray(Image.open(first[j]).convert("RGB")), np.asarray(Image.open(again[j]).convert("RGB"))
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, expected[j])  # the same pixels as the pipeline (and `sana generate`)
    assert settings["command"].startswith("sana generate 'a red circle to the left of a blue square' --height 192")
    assert f"--seed {seed} " in settings["command"]


def test_a_size_whose_table_bucket_cannot_be_decoded_bins_to_the_closest_usable_bucket(
    backend: AppBackend, pipe: Any
) -> None:
    from sana_data import get_table

    f = pipe.autoencoder.spatial_compression
    unusable = [(h, w) for h, w in get_table(f"{pipe.config.model.image_size}_TEST").values() if h % f or w % f]
    assert unusable, "the test model's bucket table has no bucket the autoencoder cannot decode"
    h, w = next(s for s in unusable if s[0] * s[1] <= backend.limits.max_pixels)
    image = pipe("a star", height=h, width=w, num_inference_steps=1, progress=False, output_type="pil")[0]
    assert image.size == (w, h)  # generated at a usable bucket, resized and cropped back
    paths, settings = backend.generate(backend.check(**_args(width=w, height=h)))
    assert Image.open(paths[0]).size == (w, h)
    bh, bw = settings["bucket"]
    assert bh % f == 0 and bw % f == 0 and settings["command"].startswith("sana generate")


def test_the_page_function_feeds_progress_per_step_and_turns_failures_into_page_errors(
    backend: AppBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gradio as gr

    from sana.app import build_app

    app = build_app(None, backend=backend)
    (fn,) = [f.fn for f in app.fns.values() if f.api_name == "generate"]
    calls: list[Any] = []

    def progress(value: Any, desc: str | None = None, unit: str = "steps", **kw: Any) -> None:
        calls.append((value, desc))

    gallery, files, settings = fn(*_args(steps=4.0, seed=21).values(), progress=progress)
    assert calls == [((k, 4), "denoising") for k in range(5)]
    assert gallery == [(files[0], "seed 21")] and settings["num_inference_steps"] == 4
    with pytest.raises(gr.Error, match="steps must be between 1 and 8 on this server, got 80"):
        fn(*_args(steps=80).values(), progress=progress)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(backend, "generate", broken)
    with pytest.raises(gr.Error, match="generation failed: RuntimeError: CUDA out of memory"):
        fn(*_args().values(), progress=progress)


# --- the real server: `python -m sana app` ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(app_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m sana app` on a free localhost port (given through DEMO_PORT), serving `app_model`.

    The server runs with smaller limits than the defaults (`SERVER_LIMITS`) so the refusals can be tested cheaply."""
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {**os.environ, "DEMO_PORT": str(port), "HF_HUB_OFFLINE": "1", "GRADIO_TEMP_DIR": str(log.parent / "gr")}
    env.pop("GRADIO_ANALYTICS_ENABLED", None)  # the app must turn analytics off itself
    from sana.embedded import DEFAULT_MODEL_DIR

    # The embedded default is served the way a user starts it, with no --model_path.
    model = [] if app_model.resolve() == DEFAULT_MODEL_DIR.resolve() else ["--model_path", str(app_model)]
    command = [sys.executable, "-m", "sana", "app", *model, "--device", "cpu", *SERVER_LIMITS]
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=log.parent)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(f"`sana app` exited with {process.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(url + "config", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"`sana app` did not answer on {url} within {STARTUP_SECONDS} s:\n{log.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode in (0, -15), f"`sana app` ended with {process.returncode}:\n{log.read_text()}"


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Debian's Chromium is not installed (apt-get install chromium; .ci/run does it)")
    return path


def test_browser_generates_an_image_with_metadata_and_fetches_nothing_external(server: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
            page.on("request", lambda request: requests.append(request.url))
            page.goto(server)
            expect(page.locator("#prompt textarea")).to_be_visible(timeout=60_000)
            page.locator("#prompt textarea").fill("a red circle to the left of a blue square")
            page.locator("#aspect_ratio input").click()
            page.get_by_role("option", name="320 × 192 (5:3)").click()
            expect(page.locator("#width input[type=number]")).to_have_value("320", timeout=30_000)
            expect(page.locator("#height input[type=number]")).to_have_value("192", timeout=30_000)
            page.locator("#steps input[type=number]").fill("2")
            page.locator("#steps input[type=number]").press("Tab")
            page.locator("#randomize_seed input[type=checkbox]").uncheck()
            page.locator("#seed input").fill("5")
            page.locator("#seed input").press("Tab")
            page.locator("#generate").click()
            expect(page.locator("#gallery img").first).to_be_visible(timeout=120_000)
            link = page.locator("#downloads a[download]").first
            expect(link).to_be_visible(timeout=30_000)
            with page.expect_download() as download:
                link.click()
            png = tmp_path / "download.png"
            download.value.save_as(png)
            expect(page.locator("#settings")).to_contain_text("num_inference_steps", timeout=30_000)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "app.png"), full_page=True)
            settings_text = page.locator("#settings").inner_text()

            # An error is shown in the page and the server goes on serving.
            page.locator("#prompt textarea").fill("")
            page.locator("#generate").click()
            expect(page.get_by_text("the prompt is empty").first).to_be_visible(timeout=30_000)
        finally:
            browser.close()

    with Image.open(png) as image:
        assert (image.format, image.size) == ("PNG", (320, 192))
        assert image.convert("RGB").getextrema() != ((0, 0), (0, 0), (0, 0))
    meta = read_metadata(png)
    assert meta["prompt"] == "a red circle to the left of a blue square"
    assert (meta["width"], meta["height"], meta["num_inference_steps"], meta["seed"]) == (320, 192, 2, 5)
    assert "seed" in settings_text and "sana generate" in settings_text
    hosts = {urlparse(url).hostname for url in requests if urlparse(url).scheme in ("http", "https", "ws", "wss")}
    assert hosts == {"127.0.0.1"}, f"the page fetched from outside the server: {sorted(hosts)}"
    if os.environ.get("SANA_APP_SCREENSHOT_DOCS") == "1":
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ARTIFACTS / "app.png", DOCS_SCREENSHOT)


def _client(server: str, tmp_path: Path) -> Any:
    from gradio_client import Client

    return Client(server, verbose=False, download_files=str(tmp_path))


def _call(client: Any, **changes: Any) -> Any:
    a = _args(**changes)
    return client.predict(a["prompt"], a["negative_prompt"], a["width"], a["height"], a["steps"],
                          a["guidance_scale"], a["pag_guidance_scale"], a["sampler"], a["seed"],
                          a["randomize_seed"], a["images"], api_name="/generate")  # fmt: skip


def test_api_three_concurrent_requests_all_complete(server: str, tmp_path: Path) -> None:
    results: dict[int, Any] = {}
    errors: list[BaseException] = []

    def one(seed: int) -> None:
        try:
            results[seed] = _call(_client(server, tmp_path / str(seed)), seed=seed, width=192, height=320)
        except BaseException as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=one, args=(seed,)) for seed in (100, 200, 300)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert sorted(results) == [100, 200, 300]
    for seed, (gallery, files, settings) in results.items():
        assert settings["seed"] == seed and len(gallery) == len(files) == 1
        with Image.open(files[0]) as image:
            assert image.size == (192, 320)
        assert read_metadata(files[0])["seed"] == seed


def test_api_refuses_an_oversized_request_clearly_and_keeps_serving(server: str, tmp_path: Path) -> None:
    from gradio_client.exceptions import AppError

    client = _client(server, tmp_path)
    with pytest.raises(AppError, match=r"1,048,576 pixels is more than this server allows \(262,144"):
        _call(client, width=1024, height=1024)
    with pytest.raises(AppError, match="steps must be between 1 and 8 on this server, got 500"):
        _call(client, steps=500)
    _, files, settings = _call(client, seed=9)
    assert settings["seed"] == 9 and Image.open(files[0]).size == (256, 256)
    with urllib.request.urlopen(server + "config", timeout=10) as response:
        assert response.status == 200

    # The echoed command makes the same image with `sana generate`.
    words = shlex.split(settings["command"])
    assert words[:2] == ["sana", "generate"]
    out = tmp_path / "cli"
    done = subprocess.run([sys.executable, "-m", "sana", *words[1:], "--device", "cpu", "-o", str(out)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (made,) = out.glob("*.png")
    pixels = [np.asarray(Image.open(path).convert("RGB")) for path in (made, files[0])]
    np.testing.assert_array_equal(*pixels)
