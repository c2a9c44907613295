"""sana_text encoding throughput and memory for a Gemma-2-2B-shaped LLM (random weights) on this CPU.

For each weight dtype (bf16, fp32), in a fresh subprocess so peak RSS is per configuration:
1. Build `Gemma2Model` with the default `Gemma2Config` (the gemma-2-2b shape: 26 layers, width 2304, vocab 256k,
   2.6B parameters) on the meta device, then materialise it with N(0, 0.02) weights (fast, no Hub).
2. Encode a batch of `--batch` prompts with CHI on (tokenized length L_all = n_chi + 298 with the in-memory test
   tokenizer) -> seconds per prompt; fp32 also with CHI off (L = 300).
3. Store those embeddings in an `EmbeddingCache` (a miss costs one encode plus this write), serve them through
   `CachedTextEncoder`, `free()` the LLM and serve again -> cache cost per prompt, RSS with and without the LLM.

Writes `docs/benchmarks/text_encoder.json` and `.md`.
Run: `python benchmarks/text_encoder.py [--batch 1] [--dtypes bf16 fp32] [--layers 26]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _rss import current_rss_gib, peak_rss_gib

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "text_encoder"
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
PROMPTS = [
    "a cat sleeping on a warm sunny windowsill surrounded by pots of blooming red flowers",
    "a busy city street at dusk with glowing street lamps and a double-decker bus",
    "portrait of an old man with a long white beard, oil painting, dramatic light",
    "a photo of an astronaut riding a horse on the moon, digital art",
    "a bowl of fruit on a wooden table, soft morning light, photorealistic",
    "a red car parked next to a blue house in the snow",
    "一只可爱的猫坐在窗台上",
    "a lighthouse on a cliff during a storm, waves crashing",
]


def _rss_mb() -> float:
    return current_rss_gib() * 1024


def _peak_rss_mb() -> float:
    return peak_rss_gib() * 1024


def _gemma2_2b(dtype: torch.dtype, layers: int):
    from transformers import Gemma2Config, Gemma2Model
    from transformers.models.gemma2.modeling_gemma2 import Gemma2RotaryEmbedding

    # The defaults are the gemma-2-2b shape; `layers` < 26 only for a quick smoke run.
    config = Gemma2Config(num_hidden_layers=layers, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    with torch.device("meta"):
        model = Gemma2Model(config).to(dtype)
    model = model.to_empty(device="cpu")  # uninitialised storage in the target dtype; buffers are recomputed below
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.zero_()  # Gemma's RMSNorm scales by (1 + weight)
            else:
                param.normal_(0.0, 0.02, generator=generator)
        model.rotary_emb = Gemma2RotaryEmbedding(config)  # fp32 frequencies, as from_pretrained keeps them
        model.embed_tokens.embed_scale.fill_(config.hidden_size**0.5)
    return model.eval()


def _timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def run_one(dtype_name: str, batch: int, layers: int) -> dict:
    from sana_text import CachedTextEncoder, TextEncoder, cache_key
    from sana_text.testing import tiny_tokenizer

    dtype = DTYPES[dtype_name]
    rss_start = _rss_mb()
    model, build_s = _timed(_gemma2_2b, dtype, layers)
    params = sum(p.numel() for p in model.parameters())
    encoder = TextEncoder(model, tiny_tokenizer(), model_id="gemma-2-2b-shaped-random", on_truncate="ignore")
    prompts = PROMPTS[:batch]
    out, chi_s = _timed(encoder.encode, prompts)  # no warm-up: one forward is minutes, set-up costs are noise
    result = {
        "dtype": dtype_name,
        "params": params,
        "build_s": round(build_s, 1),
        "L_all": encoder.sequence_length,
        "batch": batch,
        "chi_s_per_prompt": round(chi_s / batch, 1),
        "chi_tokens_per_s": round(batch * encoder.sequence_length / chi_s, 1),
    }
    if dtype_name == "fp32":  # CHI off: 300 instead of L_all tokens (bf16 is too slow here to time twice)
        plain = TextEncoder(model, encoder.tokenizer, chi=None, model_id="gemma-2-2b-shaped-random")
        _, plain_s = _timed(plain.encode, prompts)
        result["no_chi_s_per_prompt"] = round(plain_s / batch, 1)
        del plain
    with tempfile.TemporaryDirectory() as folder:
        cached = CachedTextEncoder(encoder, folder)
        keys = [cache_key(encoder.fingerprint(), p) for p in prompts]
        rows = {k: (out.embeddings[i], out.mask[i]) for i, k in enumerate(keys)}
        _, put_s = _timed(cached.cache.put, rows)  # a miss = one encode + this write
        _, hit_s = _timed(cached.encode, prompts)
        assert cached.misses == 0 and torch.equal(cached.encode(prompts).embeddings, out.embeddings)
        result["rss_with_llm_mb"] = round(_rss_mb(), 0)
        del model
        encoder.free()
        _, freed_hit_s = _timed(cached.encode, prompts)
        result.update(
            cache_write_ms_per_prompt=round(1000 * put_s / batch, 2),
            cache_hit_ms_per_prompt=round(1000 * hit_s / batch, 2),
            cache_hit_after_free_ms_per_prompt=round(1000 * freed_hit_s / batch, 2),
            rss_after_free_mb=round(_rss_mb(), 0),
            rss_at_start_mb=round(rss_start, 0),
            peak_rss_mb=round(_peak_rss_mb(), 0),
        )
    return result


def _markdown(report: dict) -> str:
    rows = [
        "| dtype | params | L_all | s/prompt, CHI on | s/prompt, CHI off | tokens/s | cache write | cache hit "
        "| RSS with LLM | RSS after free() | peak RSS |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["runs"]:
        rows.append(
            f"| {r['dtype']} | {r['params'] / 1e9:.2f}B | {r['L_all']} | {r['chi_s_per_prompt']} "
            f"| {r.get('no_chi_s_per_prompt', '-')} | {r['chi_tokens_per_s']} "
            f"| {r['cache_write_ms_per_prompt']} ms | {r['cache_hit_ms_per_prompt']} ms "
            f"| {r['rss_with_llm_mb'] / 1024:.1f} GiB | {r['rss_after_free_mb'] / 1024:.2f} GiB "
            f"| {r['peak_rss_mb'] / 1024:.1f} GiB |"
        )
    head = (
        f"Machine: {report['machine']}; batch {report['batch']}; load average before the runs "
        f"{report['loadavg_before']} (other jobs shared the 2 cores).\n\n"
    )
    return head + "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=list(DTYPES))
    parser.add_argument(
        "--layers", type=int, default=26, help="decoder layers (26 = gemma-2-2b; fewer for a smoke run)"
    )
    parser.add_argument("--child", choices=list(DTYPES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one configuration in this process; the parent collects the JSON line
        print(json.dumps(run_one(args.child, args.batch, args.layers)), flush=True)
        return
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "loadavg_before": [round(x, 1) for x in os.getloadavg()],
        "batch": args.batch,
        "layers": args.layers,
        "runs": [],
    }
    for name in args.dtypes:
        cmd = [sys.executable, __file__, "--child", name, "--batch", str(args.batch), "--layers", str(args.layers)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        report["runs"].append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(report["runs"][-1]), flush=True)
    if args.layers != 26:
        print(_markdown(report))
        return  # smoke runs are not recorded
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    OUT.with_suffix(".md").write_text(_markdown(report))
    print(_markdown(report))


if __name__ == "__main__":
    main()
