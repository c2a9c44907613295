"""Linear DiT forward on CPU: ours vs diffusers' SanaTransformer2DModel on the Sana-0.6B architecture.

Writes docs/benchmarks/dit_forward.{json,md} and docs/benchmarks/dit_scaling.png, and prints the table.

    python benchmarks/dit_forward.py                 # the full run (about 10 minutes on 2 quiet cores)
    python benchmarks/dit_forward.py --quick         # 512² only, one repeat

Both models hold the same random weights (diffusers' is built from ours), run the same inputs (300 text tokens,
all real, so nothing can be skipped), and are timed alternately in one process; each time is the best of the
repeats, so ratios come from one run on one machine. Achieved GFLOP/s count matmul/conv FLOPs analytically and
are compared with a large fp32 GEMM timed in the same run. The scaling part times one self-attention layer
(qkv, attention, projection) at a tiny width for ReLU linear vs softmax (SDPA) attention.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from linear_dit import LinearDiT, LinearDiTConfig, get_preset, ops
from linear_dit.attention import LinearSelfAttention
from linear_dit.testing import diffusers_twin, randomize_

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
TEXT_TOKENS = 300


def forward_flops(c: LinearDiTConfig, batch: int, tokens: int, text: int = TEXT_TOKENS) -> float:
    """Multiply-add FLOPs (x2) of one forward: every Linear/conv and both attention cores."""
    D, h, hd, N, L = c.hidden_size, c.mlp_hidden, c.linear_head_dim, tokens, text
    per_token = 2 * D * (3 * D + D + D + D + 2 * h + h) + 2 * 2 * h * 9  # qkv, proj, q, out, Mix-FFN convs
    per_token += 2 * D * (2 * hd + 1)  # linear attention: kᵀv and q·[kv | Σk]
    per_token += 2 * 2 * L * D  # cross-attention scores and weighted sum
    per_block = N * per_token + 2 * L * D * 2 * D  # + text keys/values
    embed = 2 * L * (c.caption_channels * D + D * D) + 2 * N * D * (c.in_channels + c.in_channels)
    return batch * (c.depth * per_block + embed)


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def matmul_peak(dtype: torch.dtype = torch.float32, repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of a large GEMM shaped like the Mix-FFN expansion at 1024 tokens, through MKL (`F.linear`) and
    through `linear_dit.ops.linear` (oneDNN's 1×1 convolution where that is the faster one); "peak" is the best."""
    a, w = torch.randn(1, 1024, 1152, dtype=dtype), torch.randn(5760, 1152, dtype=dtype)
    flop = 2 * 1024 * 1152 * 5760
    with torch.no_grad():
        runs = {"f_linear": lambda: F.linear(a, w), "ops_linear": lambda: ops.linear(a, w)}
        for fn in runs.values():
            fn()
        out = {name: round(flop / best_time(fn, repeats) / 1e9, 1) for name, fn in runs.items()}
    return {**out, "peak": max(out.values())}


@functools.cache
def half_model(model: LinearDiT, dtype: torch.dtype) -> LinearDiT:
    """A half-precision copy (built once); `model` keeps its fp32 weights for the fp32 rows."""
    return copy.deepcopy(model).to(dtype)


def compare(
    model: LinearDiT, twin, batch: int, side: int, repeats: int, dtype_ours: torch.dtype, real: int = TEXT_TOKENS
) -> dict:
    """Time both models on one input; `real` of the 300 text tokens are real (the rest is right padding)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 32, side, side, generator=g)
    text = torch.randn(batch, TEXT_TOKENS, 2304, generator=g)
    mask = (torch.arange(TEXT_TOKENS) < real)[None].expand(batch, -1)
    t = torch.full((batch,), 0.5)
    ours_model = model if dtype_ours == torch.float32 else half_model(model, dtype_ours)
    with torch.no_grad():
        run_ours = lambda: ours_model(x, t, text, mask)  # noqa: E731
        run_theirs = lambda: twin(x, text, 1000 * t, encoder_attention_mask=mask.float()).sample  # noqa: E731
        ref, out = run_theirs(), run_ours()  # warm-up, and the outputs compared below
        times = {"diffusers": [], "ours": []}
        for _ in range(repeats):  # alternate, so slow phases of a shared machine hit both
            times["diffusers"].append(best_time(run_theirs, 1))
            times["ours"].append(best_time(run_ours, 1))
    rel_err = ((out.float() - ref).norm() / ref.norm()).item()
    flops = forward_flops(model.config, batch, side * side, text=real)  # the padding columns are never computed
    flops_theirs = forward_flops(model.config, batch, side * side)
    ours_s, theirs_s = min(times["ours"]), min(times["diffusers"])
    return {
        "dtype": str(dtype_ours).removeprefix("torch."),
        "real_text_tokens": real,
        "batch": batch,
        "resolution": side * 32,
        "tokens": side * side,
        "diffusers_fp32_s": round(theirs_s, 3),
        "ours_s": round(ours_s, 3),
        "ratio": round(ours_s / theirs_s, 3),
        "rel_err_vs_diffusers_fp32": float(f"{rel_err:.3g}"),
        "gflop": round(flops / 1e9, 1),
        "ours_gflops": round(flops / ours_s / 1e9, 1),
        "diffusers_gflops": round(flops_theirs / theirs_s / 1e9, 1),
    }


def scaling(tokens: list[int], width: int = 64, repeats: int = 3) -> dict:
    """Time vs tokens for one self-attention layer: ReLU linear (ours) vs softmax (SDPA), same projections."""
    layer = LinearSelfAttention(width, 32, eps=1e-8, qk_norm=False, clamp_fp16=False).eval()

    def softmax_attention(x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = (t.view(B, N, D // 32, 32).transpose(1, 2) for t in layer.qkv(x).chunk(3, dim=-1))
        return layer.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, D))

    out: dict = {"width": width, "tokens": tokens, "linear_s": [], "softmax_s": []}
    with torch.no_grad():
        for n in tokens:
            x = torch.randn(1, n, width)
            layer(x), softmax_attention(x)
            out["linear_s"].append(best_time(lambda: layer(x), repeats))  # noqa: B023
            out["softmax_s"].append(best_time(lambda: softmax_attention(x), repeats))  # noqa: B023
    big = [i for i, n in enumerate(tokens) if n >= 1024]
    for kind in ("linear", "softmax"):
        out[f"{kind}_exponent"] = round(_slope([tokens[i] for i in big], [out[f"{kind}_s"][i] for i in big]), 3)
    faster = [n for n, a, b in zip(tokens, out["linear_s"], out["softmax_s"]) if a < b]
    out["linear_faster_from_tokens"] = min(faster) if faster else None
    return out


def _slope(xs: list[int], ys: list[float]) -> float:
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def _plot(scale: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot")
        return
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for kind, style in (("linear", "o-"), ("softmax", "s--")):
        label = f"{kind} (slope {scale[f'{kind}_exponent']})"
        ax.loglog(scale["tokens"], [s * 1e3 for s in scale[f"{kind}_s"]], style, label=label)
    ax.set_xlabel("image tokens N")
    ax.set_ylabel("ms per self-attention layer")
    ax.set_title(f"Self-attention time vs tokens (width {scale['width']}, CPU)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _markdown(result: dict) -> str:
    rows = [
        "| dtype | batch | resolution | tokens | real text tokens | diffusers fp32 (s) | ours (s) | "
        "ours / diffusers | ours GFLOP/s | % of GEMM peak | rel. error vs diffusers fp32 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["forward"]:
        peak = result["matmul_peak_gflops" if r["dtype"] == "float32" else "matmul_peak_bf16_gflops"]
        rows.append(
            f"| {r['dtype']} | {r['batch']} | {r['resolution']}² | {r['tokens']} | {r['real_text_tokens']} | "
            f"{r['diffusers_fp32_s']} | "
            f"{r['ours_s']} | {r['ratio']} | {r['ours_gflops']} | {100 * r['ours_gflops'] / peak:.0f}% | "
            f"{r['rel_err_vs_diffusers_fp32']} |"
        )
    s, m = result["scaling"], result["matmul_gflops"]
    rows += [
        "",
        f"GEMM peak (1024×1152·1152×5760, the best of MKL `F.linear` and oneDNN via `linear_dit.ops.linear`; "
        f"each row's % uses its dtype's): fp32 {result['matmul_peak_gflops']} GFLOP/s "
        f"(MKL {m['f_linear']}, oneDNN {m['ops_linear']}), bf16 {result['matmul_peak_bf16_gflops']} GFLOP/s. "
        f"Threads: {result['threads']}. CPU capability: {result['cpu_capability']}, native bf16: "
        f"{result['native_bf16']}.",
        "",
        "| tokens | " + " | ".join(str(n) for n in s["tokens"]) + " |",
        "|---|" + "---:|" * len(s["tokens"]),
        "| linear (ms) | " + " | ".join(f"{1e3 * v:.2f}" for v in s["linear_s"]) + " |",
        "| softmax (ms) | " + " | ".join(f"{1e3 * v:.2f}" for v in s["softmax_s"]) + " |",
        "",
        f"Fitted exponent (N ≥ 1024): linear {s['linear_exponent']}, softmax {s['softmax_exponent']}; "
        f"linear is faster from {s['linear_faster_from_tokens']} tokens on.",
    ]
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="512² only, one repeat, short scaling sweep")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 row")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats

    with torch.device("meta"):
        model = LinearDiT(get_preset("sana-600m"))
    model = randomize_(model.to_empty(device="cpu"), seed=0).eval()
    twin = diffusers_twin(model)
    peak = matmul_peak()
    peak_bf16 = None if args.no_bf16 else matmul_peak(torch.bfloat16)
    cases = [(1, 16), (2, 16)] if args.quick else [(1, 16), (2, 16), (1, 32), (2, 32)]
    forward = [compare(model, twin, b, side, repeats, torch.float32) for b, side in cases]
    # A typical prompt fills ~40 of the 300 slots: padding columns are dropped before the text projections.
    forward.append(compare(model, twin, 2, 16 if args.quick else 32, repeats, torch.float32, real=40))
    if not args.no_bf16:  # every case where bf16 is native (AVX512-BF16/AMX); one row where it is emulated
        bf16_cases = cases if ops.native_bf16() else cases[:1]
        forward += [compare(model, twin, b, side, repeats, torch.bfloat16) for b, side in bf16_cases]
    tokens = [256, 1024, 4096] if args.quick else [256, 512, 1024, 2048, 4096, 8192, 16384]
    result = {
        "machine": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "threads": args.threads,
        "native_bf16": ops.native_bf16(),
        "matmul_peak_gflops": peak["peak"],
        "matmul_gflops": peak,
        "matmul_peak_bf16_gflops": peak_bf16["peak"] if peak_bf16 else None,
        "forward": forward,
        "scaling": scaling(tokens),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "dit_forward.json").write_text(json.dumps(result, indent=2) + "\n")
    table = _markdown(result)
    (OUT / "dit_forward.md").write_text(table)
    _plot(result["scaling"], OUT / "dit_scaling.png")
    print(table)


if __name__ == "__main__":
    main()
