"""One training step on CPU: ours (`LinearDiT` + `sana.train`) vs a step built on diffusers' `SanaTransformer2DModel`.

Writes docs/benchmarks/train_step.{json,md} and prints the table.

    python benchmarks/train_step.py                  # tiny + Sana-0.6B fp32 (ckpt off/on) + bf16 (ckpt off)
    python benchmarks/train_step.py --bf16-ckpt      # also bf16 autocast with gradient checkpointing
    python benchmarks/train_step.py --no-bf16        # fp32 only
    python benchmarks/train_step.py --only embedded  # re-measure some configs; the other rows of the JSON stay

A step is the DiT part of training on precomputed latents and text features: forward, loss, backward, gradient
clipping (Sana's `gradient_clip` 0.1) and the optimizer update (CAME, the `train.optimizer` of Sana's
`Sana_600M_img512.yaml`, built by `sana.train.optim.build_optimizer`). No VAE, no text encoder, no data loader.

- Ours: `linear_dit.LinearDiT` with `sana.train.objective.loss_fn`; checkpointing via `model.grad_checkpointing`.
- Reference: diffusers' `SanaTransformer2DModel` loaded from a diffusers folder of the SAME weights
  (`save_linear_dit(model, dir, fmt="diffusers")`), the same loss maths written inline, the same CAME class built
  the same way over its parameters, the same data; checkpointing via `enable_gradient_checkpointing()`.

Every (config, impl, precision, checkpointing) runs in its own subprocess, so the peak RSS (`VmHWM`) is per row;
ours and diffusers run back to back, so the ratio compares runs made under close conditions. The first step's loss
and global gradient norm (before clipping) are compared between the two as a correctness check.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _rss import peak_rss_gib

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
SANA_YAML = "configs/sana_config/512ms/Sana_600M_img512.yaml"  # its train.optimizer: CAMEWrapper, wd 0
GRAD_CLIP = 0.1  # train.gradient_clip of the Sana YAMLs
BF16_SINGLE_STEP_S = 60.0  # a bf16 step slower than this is timed once (no warm-up, no repeats)
BF16_STEP_LIMIT_S = 120  # a bf16 step still running after this is abandoned: the row reports "> limit"
TIMESTEP_SCALE = 1000.0  # diffusers' Sana takes t in [0, 1000]
# Data per architecture: batch, latent side, text tokens, real (unpadded) text tokens per sample.
ARCHES = {
    "tiny": {"batch": 4, "side": 64, "text_len": 16, "real": [16, 12, 9, 5]},
    "sana-600m": {"batch": 1, "side": 16, "text_len": 300, "real": [64]},  # 512² -> 16×16, a ~50-word prompt
    # the embedded default model's transformer stage (sana.embedded): 256² -> 8×8, batch 32, 6-14 caption tokens
    "embedded": {"batch": 32, "side": 8, "text_len": 32, "real": [6 + i % 9 for i in range(32)]},
    # the same stage with the recipe's `--set dit_width=128` (4 heads of 32): 2.3 M parameters against 5.1 M
    "embedded-128": {"batch": 32, "side": 8, "text_len": 32, "real": [6 + i % 9 for i in range(32)]},
    # the same stage with `--set dit_batch_size=16`: half the samples per step
    "embedded-b16": {"batch": 16, "side": 8, "text_len": 32, "real": [6 + i % 9 for i in range(16)]},
    # `--set dit_batch_size=8`, the recipe's default since 2026-12-08 (runs/embedded18)
    "embedded-b8": {"batch": 8, "side": 8, "text_len": 32, "real": [6 + i % 9 for i in range(8)]},
}
STEPS = {
    "tiny": (2, 5),
    "sana-600m": (1, 3),
    "embedded": (3, 10),
    "embedded-128": (3, 10),
    "embedded-b16": (3, 10),
    "embedded-b8": (3, 15),
}  # (warm-up, timed) steps
LABELS = {"tiny": "tiny (64×64 latent, B=4)", "sana-600m": "Sana-0.6B (512², B=1)",
          "embedded": "embedded sana-shapes (8×8 latent, B=32)",
          "embedded-128": "embedded, width 128 (8×8 latent, B=32)",
          "embedded-b16": "embedded, batch 16 (8×8 latent, B=16)",
          "embedded-b8": "embedded, batch 8 (8×8 latent, B=8)"}  # fmt: skip


# --- child: one configuration ------------------------------------------------------------------------------------


def _data(arch: str, in_channels: int, caption_channels: int) -> tuple[torch.Tensor, ...]:
    """Deterministic (x0, text, mask, noise, t): every child draws the same batch."""
    spec = ARCHES[arch]
    g = torch.Generator().manual_seed(0)
    B, side, L = spec["batch"], spec["side"], spec["text_len"]
    x0 = torch.randn(B, in_channels, side, side, generator=g)
    text = torch.randn(B, L, caption_channels, generator=g)
    mask = torch.arange(L)[None] < torch.tensor(spec["real"])[:, None]  # (B, L) right padding
    noise = torch.randn(B, in_channels, side, side, generator=g)
    t = torch.rand(B, generator=g) * 0.98 + 0.01
    return x0, text, mask, noise, t


def _build(impl: str, folder: Path, ckpt: bool):
    """The model of `impl` from its folder, in train mode, and its loss function (model, x0, text, mask, noise, t)."""
    if impl == "ours":
        from linear_dit import load_linear_dit
        from sana.train.objective import loss_fn

        model = load_linear_dit(folder / "ours", dtype=torch.float32).train()
        model.grad_checkpointing = ckpt
        return model, loss_fn, model.config.in_channels, model.config.caption_channels
    from diffusers import SanaTransformer2DModel

    model = SanaTransformer2DModel.from_pretrained(folder / "diffusers").train()
    if ckpt:
        model.enable_gradient_checkpointing()

    def diffusers_loss(model, x0, text, mask, noise, t):
        x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * noise
        v = model(x_t, encoder_hidden_states=text, encoder_attention_mask=mask.float(), timestep=TIMESTEP_SCALE * t)
        # why fp32: the same fp32 reduction as flow_dpm.flow_matching_loss under autocast
        return F.mse_loss(v.sample.float(), (noise - x0).float())

    return model, diffusers_loss, model.config.in_channels, model.config.caption_channels


def _abandon(limit: int) -> None:
    """Watchdog: end this child with a message on stderr (its last line becomes the row's note)."""
    print(f"one bf16 step > {limit} s (emulated bf16 on this AVX2-only CPU): abandoned", file=sys.stderr, flush=True)
    os._exit(3)  # the step is inside C++ (autograd), where no Python exception can reach it


def run_child(
    arch: str, impl: str, precision: str, ckpt: bool, folder: Path, threads: int, limit: int = BF16_STEP_LIMIT_S
) -> dict:
    """Time warm-up + timed optimizer steps of one configuration; returns times, first loss/grad-norm, peak RSS."""
    from sana.config import load_config
    from sana.train.optim import build_optimizer

    torch.set_num_threads(threads)
    model, loss_of, in_ch, cap_ch = _build(impl, folder, ckpt)
    optimizer = build_optimizer(model, load_config(SANA_YAML).train.optimizer)
    batch = _data(arch, in_ch, cap_ch)
    params = [p for p in model.parameters() if p.requires_grad]
    autocast = precision == "bf16"

    def step() -> tuple[float, float]:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = loss_of(model, *batch)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        optimizer.step()
        return loss.item(), norm.item()

    warm, timed = STEPS[arch]
    times, first = [], None
    for i in range(warm + timed):
        t0 = time.perf_counter()
        watchdog = threading.Timer(limit, _abandon, (limit,))
        if i == 0 and autocast:  # emulated bf16 can take many minutes per step on an AVX2-only CPU
            watchdog.start()
        loss, norm = step()
        watchdog.cancel()
        times.append(time.perf_counter() - t0)
        first = first or (loss, norm)
        if i == 0 and autocast and times[0] > BF16_SINGLE_STEP_S:
            break  # emulated bf16: one step is all this CPU can afford
    single = len(times) == 1
    kept = times if single else times[warm:]
    return {
        "arch": arch,
        "impl": impl,
        "precision": precision,
        "checkpointing": ckpt,
        "params": sum(p.numel() for p in params),
        "steps_timed": len(kept),
        "single_step": single,
        "step_s_min": round(min(kept), 4),
        "step_s_median": round(statistics.median(kept), 4),
        "first_step_s": round(times[0], 4),
        "first_loss": first[0],
        "first_grad_norm": first[1],
        "peak_rss_gib": round(peak_rss_gib(), 3),
    }


# --- parent: weights, subprocesses, tables -----------------------------------------------------------------------


def _write_weights(arch: str, folder: Path) -> None:
    """The same random weights as our folder and as a diffusers folder."""
    from linear_dit import LinearDiT, get_preset, save_linear_dit
    from linear_dit.testing import randomize_, tiny_config

    if arch == "tiny":
        config = tiny_config()
    elif arch.startswith("embedded"):
        config = get_preset("sana-shapes")
        if arch == "embedded-128":
            config = dataclasses.replace(config, hidden_size=128, cross_attention_heads=4)
    else:
        config = get_preset(arch)
    with torch.device("meta"):
        model = LinearDiT(config)
    model = randomize_(model.to_empty(device="cpu"), seed=0)
    save_linear_dit(model, folder / "ours", fmt="linear_dit")
    save_linear_dit(model, folder / "diffusers", fmt="diffusers")


def _spawn(arch: str, impl: str, precision: str, ckpt: bool, folder: Path, threads: int, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--child", arch, impl, precision, str(int(ckpt)), str(folder)]
    cmd += ["--threads", str(threads), "--bf16-limit", str(BF16_STEP_LIMIT_S)]
    label = f"{arch} {impl} {precision} ckpt={'on' if ckpt else 'off'}"
    print(f"running {label} ...", flush=True)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {
            "arch": arch,
            "impl": impl,
            "precision": precision,
            "checkpointing": ckpt,
            "error": f"timeout {timeout}s",
        }
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no stderr"]
        print(done.stderr[-2000:], file=sys.stderr)
        return {"arch": arch, "impl": impl, "precision": precision, "checkpointing": ckpt, "error": tail[0]}
    row = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  step {row['step_s_min']} s (min), peak RSS {row['peak_rss_gib']} GiB", flush=True)
    return row


def _pair(rows: list[dict]) -> dict:
    """Ratio ours/diffusers (min times) and the first-step loss / grad-norm agreement of one configuration."""
    theirs, ours = rows
    if "error" in ours or "error" in theirs:
        return {"ratio": None}
    rel = lambda a, b: abs(a - b) / abs(b)  # noqa: E731
    return {
        "ratio": round(ours["step_s_min"] / theirs["step_s_min"], 3),
        "ratio_median": round(ours["step_s_median"] / theirs["step_s_median"], 3),
        "loss_rel_diff": float(f"{rel(ours['first_loss'], theirs['first_loss']):.3g}"),
        "grad_norm_rel_diff": float(f"{rel(ours['first_grad_norm'], theirs['first_grad_norm']):.3g}"),
    }


def _cases(args: argparse.Namespace) -> list[tuple[str, str, bool]]:
    cases = [("tiny", "fp32", False), ("tiny", "fp32", True)]
    if not args.tiny_only:
        cases += [("embedded", "fp32", False), ("embedded-128", "fp32", False), ("embedded-b16", "fp32", False),
                  ("embedded-b8", "fp32", False),
                  ("sana-600m", "fp32", False), ("sana-600m", "fp32", True)]  # fmt: skip
        if not args.no_bf16:
            cases += [("embedded", "bf16", False), ("embedded-128", "bf16", False), ("embedded-b16", "bf16", False),
                      ("embedded-b8", "bf16", False), ("sana-600m", "bf16", False)]  # fmt: skip
            if args.bf16_ckpt:
                cases.append(("sana-600m", "bf16", True))
    return [c for c in cases if not args.only or c[0] in args.only]


def _environment(threads: int) -> dict:
    import diffusers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "threads": threads,
        "loadavg_before": [round(x, 1) for x in os.getloadavg()],
    }


def _fmt_row(r: dict, pair: dict | None) -> str:
    label = LABELS[r["arch"]]
    ckpt = "on" if r["checkpointing"] else "off"
    head = f"| {label} | {r['impl']} | {r['precision']} | {ckpt} |"
    if "error" in r:
        return f"{head} not timed: {r['error']} | - | - | - |"
    times = f"{r['step_s_min']} / {r['step_s_median']}"
    if r["single_step"]:
        times = f"{r['step_s_min']} (single step)"
    ratio = "-"
    if pair is not None and pair.get("ratio") is not None:
        ratio = f"**{pair['ratio']}** ({pair['ratio_median']})" if not r["single_step"] else f"{pair['ratio']} (1 step)"
    check = (
        "-" if pair is None or pair.get("ratio") is None else f"{pair['loss_rel_diff']} / {pair['grad_norm_rel_diff']}"
    )
    return f"{head} {times} | {r['peak_rss_gib']} | {ratio} | {check} |"


def _markdown(report: dict) -> str:
    env = report["environment"]
    rows = [
        "| config | impl | precision | grad ckpt | step s (min / median) | peak RSS GiB "
        "| ours / diffusers: min (median) "
        "| first-step loss / grad-norm rel. diff |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for pair in report["results"]:
        for r in pair["runs"]:
            rows.append(_fmt_row(r, pair["compare"] if r["impl"] == "ours" else None))
    note = (
        "\nCommand: `python benchmarks/train_step.py` (or `nox -s benchmarks -- benchmarks/train_step.py`). One step ="
        " forward + MSE flow loss + backward + grad clip + CAME update on precomputed latents/text features (the DiT"
        " part of training); each row is its own process. bf16 = `torch.autocast` (emulated on an AVX2-only CPU,"
        " native on one with AVX512-BF16)."
        f"\n{env['cpu']} ({env['cpu_capability']}), {env['threads']} threads, torch {env['torch']}, diffusers "
        f"{env['diffusers']}; load average before the run {env['loadavg_before']} (the 2 cores are shared: noisy, "
        "min of N kept). Steps timed (after warm-up ones): "
        + ", ".join(f"{LABELS[a].split(' (')[0]} {STEPS[a][1]} after {STEPS[a][0]}" for a in _archs(report))
        + f". Total wall time {report['wall_s']:.0f} s.\n"
    )
    for later in report.get("updates", []):  # `--only` runs merged into this report
        note += (
            f"Rows {', '.join(later.get('rows') or later['only'])} re-measured on {later['date']}"
            + (f" on {later['cpu']} ({later['cpu_capability']})" if "cpu" in later else "")
            + " (load average before "
            f"{later['loadavg_before']}, torch {later['torch']}, {later['wall_s']:.0f} s).\n"
        )
    return "\n".join(rows) + "\n" + note


def _key(result: dict) -> str:
    """A result row's name in `updates`: "arch precision ckpt-on|off"."""
    return f"{result['arch']} {result['precision']} ckpt-{'on' if result['checkpointing'] else 'off'}"


def _archs(report: dict) -> list[str]:
    return list(dict.fromkeys(r["arch"] for r in report["results"]))


def _merge(report: dict, only: list[str]) -> dict:
    """The existing JSON with the rows of `only` replaced by (or added from) this run's."""
    path = OUT / "train_step.json"
    if not path.is_file():
        return report
    old = json.loads(path.read_text())
    fresh = {_key(r) for r in report["results"]}
    kept = [r for r in old["results"] if _key(r) not in fresh]
    env = report["environment"]
    update = {"only": only, "rows": sorted(fresh), "date": time.strftime("%Y-%m-%d"),
              "loadavg_before": env["loadavg_before"], "torch": env["torch"], "wall_s": report["wall_s"],
              "cpu": env["cpu"], "cpu_capability": env["cpu_capability"]}  # fmt: skip
    updates = []
    for u in old.get("updates", []):  # an earlier update keeps the rows this run did not re-measure
        rows = u.get("rows") or sorted(_key(r) for r in old["results"] if r["arch"] in u["only"])
        if rest := [k for k in rows if k not in fresh]:
            updates.append({**u, "rows": rest})
    updates.append(update)
    order = list(LABELS)
    results = sorted(kept + report["results"], key=lambda r: order.index(r["arch"]))
    return {**old, "results": results, "updates": updates}


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_all(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    env = _environment(args.threads)
    results = []
    with tempfile.TemporaryDirectory(prefix="train_step_") as tmp:
        written = set()
        for arch, precision, ckpt in _cases(args):
            folder = Path(tmp) / arch
            if arch not in written:
                _write_weights(arch, folder)
                written.add(arch)
            runs = [
                _spawn(arch, impl, precision, ckpt, folder, args.threads, args.timeout)
                for impl in ("diffusers", "ours")
            ]
            results.append(
                {"arch": arch, "precision": precision, "checkpointing": ckpt, "runs": runs, "compare": _pair(runs)}
            )
    return {"environment": env, "results": results, "wall_s": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast rows")
    parser.add_argument("--bf16-ckpt", action="store_true", help="also bf16 autocast with gradient checkpointing")
    parser.add_argument("--tiny-only", action="store_true", help="only the tiny config (a smoke run)")
    parser.add_argument("--bf16-limit", type=int, default=BF16_STEP_LIMIT_S, help="seconds for one bf16 step")
    parser.add_argument("--only", nargs="+", choices=list(ARCHES), help="run these configs; keep the JSON's others")
    parser.add_argument("--render", action="store_true", help="only rewrite train_step.md from train_step.json")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per subprocess")
    parser.add_argument(
        "--child", nargs=5, metavar=("ARCH", "IMPL", "PRECISION", "CKPT", "FOLDER"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        arch, impl, precision, ckpt, folder = args.child
        print(json.dumps(run_child(arch, impl, precision, ckpt == "1", Path(folder), args.threads, args.bf16_limit)))
        return
    if args.render:
        _atomic_write(OUT / "train_step.md", _markdown(json.loads((OUT / "train_step.json").read_text())))
        return
    report = run_all(args)
    if args.only:
        report = _merge(report, args.only)
    table = _markdown(report)
    OUT.mkdir(parents=True, exist_ok=True)
    _atomic_write(OUT / "train_step.json", json.dumps(report, indent=2) + "\n")
    _atomic_write(OUT / "train_step.md", table)
    print(table)


if __name__ == "__main__":
    main()
