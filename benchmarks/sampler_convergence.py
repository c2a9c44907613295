"""Error vs NFE of every flow_dpm sampler setting and of diffusers' flow schedulers, on Gaussian mixtures.

    python benchmarks/sampler_convergence.py            # writes docs/benchmarks/sampler_convergence.{json,md,png}

Two errors against the exact probability-flow map of the same noise (t = 1 to 0, RK4 with 4000 steps in float64,
checked against 8000 steps), each averaged over the mixtures: the median over samples of the per-sample L2 error
(typical accuracy; the goal is judged on it) and the RMS error. The RMS error is dominated by the few samples that
lie near a boundary between modes and land in another mode, which happens at random NFE for every solver.
Every method gets the same noise, the same flow shift and the same number of velocity evaluations (NFE); NFE
are counted, not assumed. diffusers is the reference (test/benchmark dependency only).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from flow_dpm import RECOMMENDED, FlowDPMSolver, FlowEuler, FlowHeun
from flow_dpm.testing import GaussianMixture, reference_solution

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
NFES = [5, 6, 8, 10, 12, 14, 16, 20, 25, 30, 40, 50, 75, 100]
GOAL_NFES = [10, 14, 20]
Field = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mixtures(d: int = 4) -> dict[str, GaussianMixture]:
    g = torch.Generator().manual_seed(0)
    return {
        "2 wide modes": GaussianMixture(torch.tensor([[-1.5] * d, [1.5] * d]), [0.3, 0.3], [0.5, 0.5]),
        "8 modes": GaussianMixture(2 * torch.randn(8, d, generator=g), [0.15] * 8, [1 / 8] * 8),
        "unequal 3": GaussianMixture(torch.randn(3, d, generator=g), [0.5, 0.2, 0.1], [0.6, 0.3, 0.1]),
        "25 grid": GaussianMixture(
            torch.cartesian_prod(*[torch.linspace(-2, 2, 5)] * 2).repeat(1, d // 2), [0.15] * 25, [1 / 25] * 25
        ),
    }


def run_diffusers(scheduler, field: Field, noise: torch.Tensor, nfe: int) -> torch.Tensor:
    """A diffusers-style loop. The model gets the scheduler's exact sigma: diffusers' multistep schedulers
    store `timesteps` as int64 (floor(1000 σ)), and feeding that to the field would charge them an error that
    is the pipeline's, not the solver's."""
    scheduler.set_timesteps(nfe)
    x = noise.clone()
    for i, timestep in enumerate(scheduler.timesteps):
        t = torch.full((x.shape[0],), float(scheduler.sigmas[i]), dtype=x.dtype)
        x = scheduler.step(field(x, t), timestep, x).prev_sample.to(x.dtype)
    return x


def methods(shift: float) -> dict[str, Callable[[Field, torch.Tensor, int], torch.Tensor | None]]:
    ours = {
        "flow_dpm 2M sana (default, Sana-exact)": FlowDPMSolver(flow_shift=shift),
        "flow_dpm 3M sana": FlowDPMSolver(order=3, flow_shift=shift),
        "flow_dpm 2M-heun sana": FlowDPMSolver(solver_type="heun", flow_shift=shift),
        "flow_dpm 2M logsnr": FlowDPMSolver(discretization="logsnr_uniform", flow_shift=shift),
        "flow_dpm 3M logsnr": FlowDPMSolver(order=3, discretization="logsnr_uniform", flow_shift=shift),
        "flow_dpm RECOMMENDED": FlowDPMSolver(**{**RECOMMENDED.__dict__, "flow_shift": shift}),
    }
    table: dict[str, Callable] = {k: (lambda f, n, nfe, s=s: s.sample(f, n, nfe)) for k, s in ours.items()}
    table["flow_dpm Euler"] = lambda f, n, nfe: FlowEuler(flow_shift=shift).sample(f, n, nfe)
    table["flow_dpm Heun"] = lambda f, n, nfe: (
        FlowHeun(flow_shift=shift).sample(f, n, (nfe + 1) // 2) if nfe % 2 == 1 else None
    )
    flow = {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": shift}
    table["diffusers DPM++2M"] = lambda f, n, nfe: run_diffusers(DPMSolverMultistepScheduler(**flow), f, n, nfe)
    table["diffusers DPM++3M"] = lambda f, n, nfe: run_diffusers(
        DPMSolverMultistepScheduler(solver_order=3, **flow), f, n, nfe
    )
    table["diffusers UniPC"] = lambda f, n, nfe: run_diffusers(UniPCMultistepScheduler(**flow), f, n, nfe)
    table["diffusers FlowMatchEuler"] = lambda f, n, nfe: run_diffusers(
        FlowMatchEulerDiscreteScheduler(shift=shift), f, n, nfe
    )
    return table


def counted(field: Field) -> tuple[Field, list[int]]:
    calls = [0]

    def wrapped(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return field(x, t)

    return wrapped, calls


def measure(shift: float, n_samples: int) -> dict:
    results: dict[str, dict[int, float]] = {}  # median per-sample L2 error
    rms: dict[str, dict[int, float]] = {}
    ref_check = 0.0
    for mix in mixtures().values():
        g = torch.Generator().manual_seed(1)
        noise = torch.randn(n_samples, mix.means.shape[1], generator=g, dtype=torch.float64)
        exact = reference_solution(mix.velocity, noise, 1.0, 4000)
        ref_check = max(ref_check, (exact - reference_solution(mix.velocity, noise, 1.0, 8000)).abs().max().item())
        for name, run in methods(shift).items():
            for nfe in NFES:
                field, calls = counted(mix.velocity)
                x = run(field, noise, nfe)
                if x is None:
                    continue
                assert calls[0] == nfe, f"{name} used {calls[0]} NFE for a budget of {nfe}"
                rmse = (x - exact).pow(2).mean().sqrt().item()
                median = (x - exact).norm(dim=1).median().item()
                for table, value in ((results, median), (rms, rmse)):
                    table.setdefault(name, {}).setdefault(nfe, 0.0)
                    table[name][nfe] += value / len(mixtures())
    return {"results": results, "rms": rms, "reference_max_abs_error": ref_check}


def best_diffusers(res: dict[str, dict[int, float]], nfe: int) -> tuple[str, float]:
    return min(((k, v[nfe]) for k, v in res.items() if k.startswith("diffusers") and nfe in v), key=lambda kv: kv[1])


def markdown(all_results: dict[float, dict]) -> str:
    lines = []
    for shift, data in all_results.items():
        res = data["results"]
        lines += [f"### flow_shift = {shift}", ""]
        for title, table in (("Median per-sample L2 error", res), ("RMS error", data["rms"])):
            lines += [f"{title} vs the exact flow map (mean over 4 mixtures):", ""]
            lines += ["| method | " + " | ".join(f"NFE {n}" for n in NFES) + " |", "|---|" + "---:|" * len(NFES)]
            for name, row in table.items():
                lines.append(f"| {name} | " + " | ".join(f"{row[n]:.2e}" if n in row else "–" for n in NFES) + " |")
            lines.append("")
        lines += [
            "Goal check on the median error:",
            "",
            "| NFE | best diffusers | its error | RECOMMENDED | ratio (goal ≤ 0.8) |",
        ]
        lines += ["|---:|---|---:|---:|---:|"]
        for nfe in GOAL_NFES:
            name, err = best_diffusers(res, nfe)
            ours = res["flow_dpm RECOMMENDED"][nfe]
            lines.append(f"| {nfe} | {name} | {err:.2e} | {ours:.2e} | {ours / err:.2f} |")
        lines.append("")
    return "\n".join(lines)


def plot(all_results: dict[float, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(all_results), figsize=(7 * len(all_results), 5), squeeze=False)
    for ax, (shift, data) in zip(axes[0], all_results.items()):
        for name, row in data["results"].items():
            style = "--" if name.startswith("diffusers") else "-"
            ax.loglog(list(row), list(row.values()), style, marker=".", label=name)
        ax.set(title=f"flow_shift = {shift}", xlabel="NFE", ylabel="median L2 error vs exact flow map")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shifts", type=float, nargs="+", default=[3.0, 6.0])
    parser.add_argument("--samples", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    all_results = {s: measure(s, args.samples) for s in args.shifts}
    OUT.mkdir(parents=True, exist_ok=True)
    md = markdown(all_results)
    print(md)
    payload = {str(s): d for s, d in all_results.items()} | {"nfes": NFES, "seconds": time.time() - start}
    (OUT / "sampler_convergence.json").write_text(json.dumps(payload, indent=1))
    (OUT / "sampler_convergence.md").write_text(md)
    plot(all_results, OUT / "sampler_convergence.png")
    ok = all(
        all_results[s]["results"]["flow_dpm RECOMMENDED"][n] <= 0.8 * best_diffusers(all_results[s]["results"], n)[1]
        for s in all_results
        for n in GOAL_NFES
    )
    print(f"goal (RECOMMENDED <= 0.8x best diffusers at NFE {GOAL_NFES}): {'met' if ok else 'NOT met'}")
    ref = max(d["reference_max_abs_error"] for d in all_results.values())
    print(f"reference check: max |RK4(4000) - RK4(8000)| = {ref:.1e}")
    assert not math.isnan(sum(v for d in all_results.values() for r in d["results"].values() for v in r.values()))


if __name__ == "__main__":
    main()
