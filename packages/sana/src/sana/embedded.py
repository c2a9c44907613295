"""The embedded default model: a tiny Sana trained here on the shapes world, and the recipe that reproduces it.

`sana generate "a red circle to the left of a blue square"` needs no download: with no `--model_path` it loads
`DEFAULT_MODEL_DIR`, a pipeline folder (`sana.convert` layout) shipped inside this package. It was written by
`train_embedded` (`sana train-embedded`, `nox -s train_embedded`), which runs the project's own commands end to
end on a 2-core CPU:

1. `data`: the shapes world (`sana_data.ShapesSource`, training split: no held-out prompt is ever seen),
   square and two other aspect ratios, written as an image folder;
2. `autoencoder`: a small f32 DC-AE (`dcae.train`, same block types as Sana's, far fewer channels);
3. `text_encoder`: a BPE tokenizer trained on the captions and a 4-layer Gemma-2 pretrained on them as a causal LM
   (`sana_text.pretrain`), then frozen and used through the normal `sana_text` path (no CHI; captions encoded
   with `skip_layers`, an earlier hidden state than the last);
4. `features`: `sana encode-latents` into a feature cache (raw latents per aspect-ratio bucket + text features);
5. `transformer`: `sana train` of a tiny Linear DiT on the cache (multi-scale buckets, CFG caption dropout, EMA);
6. `decoder`: the autoencoder's decoder refined with a PatchGAN term, the encoder frozen (DC-AE's last phase; the
   latents the transformer learned do not change);
7. `export`: the pipeline folder (weights in safetensors, the training config, `recipe.json`) and its model card;
8. `eval`: `sana eval shapes` on held-out prompts and the autoencoder's held-out PSNR/SSIM, written into the card.

Every stage is resumable: an interrupted recipe run with the same settings continues where it stopped (finished
stages are skipped, the training stages resume from their checkpoints), and a run with different settings in the
same work folder is refused with the list of what changed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sana import _compose

__all__ = (
    "DEFAULT_MODEL_DIR",
    "QUICK",
    "RECIPE_CONFIG",
    "STAGES",
    "STAGE_SETTINGS",
    "RecipeSettings",
    "default_model_path",
    "recipe_settings",
    "slow_cpu_note",
    "train_embedded",
)

DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"
RECIPE_CONFIG = Path(__file__).parent / "configs" / "embedded" / "Sana_Shapes_img256.yaml"
STAGES = ("data", "autoencoder", "text_encoder", "features", "transformer", "decoder", "export", "eval")
# which `RecipeSettings` fields each stage's output depends on directly (later stages depend on it in turn)
STAGE_SETTINGS = {
    "data": ("images", "seed", "data_object_scale"),
    "autoencoder": ("ae_steps", "ae_batch_size", "ae_crop", "ae_crop_candidates", "ae_lr", "ae_latent_weight",
                    "ae_latent_channels"),
    "text_encoder": ("lm_steps", "lm_caption_chain"),
    "features": ("te_skip_layers",),
    "transformer": ("dit_steps", "dit_batch_size", "dit_lr", "dit_bf16", "dit_width", "dit_depth"),
    "decoder": ("dec_steps", "dec_lr"),
    "export": (),
    "eval": ("eval_prompts", "eval_steps", "ae_eval_images"),
}  # fmt: skip
STAGE_OUTPUTS = {  # folders of the work folder a stage writes (deleted when it is redone)
    "data": ("data",), "autoencoder": ("autoencoder",), "text_encoder": ("text_encoder",),
    "features": ("features",), "transformer": ("transformer",), "decoder": ("decoder",), "eval": ("eval",),
}  # fmt: skip
RECIPE_FILE = "recipe.json"  # settings + per-stage seconds, in the work folder and in the exported model
TRANSFORMER_STORAGE = torch.bfloat16  # dtype of the exported transformer weights
CHI_OFF: list[str] = []  # the tiny text encoder never saw an instruction; prompts are encoded as written


@dataclass(frozen=True)
class RecipeSettings:
    """Sizes and lengths of one recipe run; the defaults are the shipped model's (about an hour on 2 cores)."""

    images: int = 6000  # shapes-world training images (sizes 256², 192×320, 320×192)
    seed: int = 0  # data world, weights and batch order of every stage
    # factor on the training images' object sizes (`sana_data.sample_scene`'s object_scale; the eval's held-out
    # prompts name no size and its images are always the scale-1 world): 1 draws "small" shapes 41 px wide, 1.3
    # latent pixels of the f32 autoencoder, too few for a star's points or a diamond's corners. 1.5 (shipped
    # 2026-12-03): the first model to draw a named shape more often than chance (docs/embedded.md)
    data_object_scale: float = 1.5
    ae_steps: int = 2500  # autoencoder optimizer steps
    ae_batch_size: int = 8
    ae_crop: int = 128  # random crops (px) the autoencoder trains on
    ae_crop_candidates: int = 4  # of this many crops, the one with the most edges (most 128² crops hold no shape)
    ae_lr: float = 1e-3  # 2e-3 with L1 alone collapsed every shape to a dark blob
    ae_latent_weight: float = 1e-2  # mean(z²) penalty: without it the latents grew to RMS ~280 and colours were lost
    ae_latent_channels: int = 16  # C_z of the autoencoder and the transformer's in/out channels (Sana: 32)
    lm_steps: int = 600  # text-encoder pretraining steps (batch 64)
    # 1 (shipped 2026-12-03): the LM reads each image's prompt followed by its tags and long caption, which name the
    # objects again, so its hidden states must carry every word forward (shape spread at the shape token 0.06 ->
    # 0.32); 0: the prompts only. 1 finds the named colour in ~170 more eval images than chance against ~100 with 0
    # (three transformers each, docs/embedded.md)
    lm_caption_chain: int = 1
    te_skip_layers: int = 2  # features from 2 blocks before the LM's last: the last barely keeps the shape word
    # Linear DiT optimizer steps and batch. 18,500 x 8 in fp32 (shipped 2026-12-08, runs/embedded18): overall 0.377,
    # the whole recipe in 81 min on the AVX512-BF16 CPU it was trained on; 10,500 x 16, the same transformer minutes
    # planned, scored 0.370 in 73 min (a tie within the eval's +-0.04). Updates, not samples, were the lever: 6,000
    # x 32 under bf16 autocast scored 0.223 (docs/embedded.md). On an AVX2-only CPU `slow_cpu_note` says how many
    # steps keep to 90 minutes (14,000 at batch 8)
    dit_steps: int = 18500
    dit_batch_size: int = 8
    dit_lr: float = 3e-4  # 1e-3 let the prompt's influence fade (benchmarks/dit_recipe_sweep.py)
    # 1: bf16 autocast (`model.mixed_precision: bf16`; weights, optimizer and EMA stay fp32). At batch 16 it saves
    # only 5% of the fp32 step on an AVX512-BF16 CPU (benchmarks/train_step.py --only embedded-b16); on an AVX2-only
    # CPU bf16 is emulated and a step takes ~19x the fp32 one
    dit_bf16: int = 0
    # the Linear DiT's width (a multiple of 32: linear-attention heads and cross-attention heads are 32 wide) and
    # its number of blocks (`model.hidden_size` / `model.depth`; the `sana-shapes` preset's 192 x 8, 5.1 M parameters)
    dit_width: int = 192
    dit_depth: int = 8
    dec_steps: int = 600  # decoder refinement, encoder frozen, with the PatchGAN term: sharper corners
    dec_lr: float = 3e-4
    eval_prompts: int = 300  # held-out prompts for the GenEval-style score (0: no eval stage)
    eval_steps: int = 20  # solver steps of the eval images
    ae_eval_images: int = 32  # held-out images for the autoencoder's PSNR/SSIM

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, float):
                if not value > 0:
                    raise ValueError(f"RecipeSettings.{field.name} must be > 0, got {value!r}")
                continue
            low = 0 if field.name in ("seed", "eval_prompts", "te_skip_layers", "lm_caption_chain", "dit_bf16") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"RecipeSettings.{field.name} must be an int >= {low}, got {value!r}")
        for name in ("lm_caption_chain", "dit_bf16"):
            if getattr(self, name) not in (0, 1):
                raise ValueError(f"RecipeSettings.{name} must be 0 or 1, got {getattr(self, name)!r}")
        from sana_data.shapes import check_object_scale

        try:
            check_object_scale(self.data_object_scale)
        except ValueError as exc:
            raise ValueError(f"RecipeSettings.data_object_scale: {exc}") from None
        if self.dit_width % 32:
            raise ValueError(
                f"RecipeSettings.dit_width must be a multiple of 32 (the attention heads' width), got {self.dit_width}"
            )
        if self.ae_crop % 32:
            raise ValueError(
                f"RecipeSettings.ae_crop must be a multiple of 32 (the f32 compression), got {self.ae_crop}"
            )


# A run of every stage in a few minutes: what the tests and `sana train-embedded --quick` use.
QUICK = RecipeSettings(images=48, ae_steps=3, ae_batch_size=2, ae_crop=64, lm_steps=3, dit_steps=3,
                       dit_batch_size=4, dec_steps=2, eval_prompts=6, eval_steps=2, ae_eval_images=2)  # fmt: skip


def recipe_settings(base: RecipeSettings, assignments: list[str]) -> RecipeSettings:
    """`base` with `NAME=VALUE` assignments applied (`sana train-embedded --set`), each value read as its field's
    type; an unknown name or an unreadable value is a `ValueError` that names it and the fields there are."""
    fields = {f.name: f for f in dataclasses.fields(RecipeSettings)}
    changes: dict[str, Any] = {}
    for item in assignments:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or name not in fields:
            raise ValueError(f"--set {item!r}: expected NAME=VALUE with NAME one of {', '.join(fields)}")
        kind = float if fields[name].type in (float, "float") else int
        try:
            changes[name] = kind(text.strip())
        except ValueError:
            raise ValueError(f"--set {item!r}: {name} takes {kind.__name__} values, got {text.strip()!r}") from None
    return dataclasses.replace(base, **changes)


# A 2-core AVX2-only EPYC (no AVX-512), 2026-12-07: the mean step of a whole 9,000-step batch-16 fp32 transformer
# stage (runs/embedded15, 3,603 s; 0.47x that CPU's batch-32 step, benchmarks/train_step.py --only embedded
# embedded-b16 --no-bf16) and the minutes of the recipe's other stages there. That run scored overall 0.313 in
# 92.0 min, so 8,000 steps keep to the 90 there. Other batches scale the step by (batch / 16) ** 0.8: in whole runs
# on the Zen 4 a batch-8 step took 0.58x a batch-16 one (runs/embedded17, 0.167 s; runs/embedded16, 0.29 s), not 0.5x.
AVX2_B16_STEP_S, AVX2_OTHER_STAGES_MIN, AVX2_BATCH_EXPONENT = 0.40, 31.9, 0.8
AVX2_TARGET_MIN = 85  # what the suggested steps aim at: a margin under 90 for the CPU's wandering speed


def _avx2_step_s(batch: int) -> float:
    """The estimated fp32 transformer step of `batch` on the 2-core AVX2-only EPYC, in seconds."""
    return AVX2_B16_STEP_S * (batch / 16) ** AVX2_BATCH_EXPONENT


def avx2_minutes(steps: int, batch: int) -> float:
    """The whole recipe's estimated minutes on the 2-core AVX2-only EPYC, at `steps` fp32 steps of `batch`."""
    return AVX2_OTHER_STAGES_MIN + steps * _avx2_step_s(batch) / 60


def avx2_steps(batch: int, minutes: float = AVX2_TARGET_MIN) -> int:
    """The transformer steps of `batch` (a multiple of 500) that make the whole recipe about `minutes` there."""
    return max(500, round((minutes - AVX2_OTHER_STAGES_MIN) * 60 / _avx2_step_s(batch) / 500) * 500)


def slow_cpu_note(work_dir: str | Path, settings: RecipeSettings, device: str = "cpu") -> str | None:
    """What `sana train-embedded` says before it starts on a CPU without AVX-512, or None.

    The default recipe takes 81 minutes on the AVX512-BF16 CPU the shipped model was trained on. A 2-core
    AVX2-only CPU is slower (`avx2_minutes`): the note gives the estimate there and the step count at the same
    batch that keeps to about 85 minutes (`avx2_steps`). None on a CPU with AVX-512 (`_compose.slow_bf16` false),
    under bf16 autocast (the training loop warns about emulated bf16 itself), when the estimate is within 90
    minutes, or when `work_dir`'s run has finished its transformer stage already.
    """
    if settings.dit_bf16 or not _compose.slow_bf16(device):
        return None
    record = Path(work_dir) / RECIPE_FILE
    if record.is_file() and "transformer" in json.loads(record.read_text()).get("done", []):
        return None
    batch = settings.dit_batch_size
    minutes = avx2_minutes(settings.dit_steps, batch)
    if minutes <= 90:
        return None
    steps = avx2_steps(batch)
    measured = " (9,000 such steps scored 0.313 overall there, docs/embedded.md)" if batch == 16 else ""
    return (
        f"note: this CPU ({torch.backends.cpu.get_cpu_capability()}) has no AVX-512. On a 2-core AVX2 EPYC the "
        f"recipe's other stages took {AVX2_OTHER_STAGES_MIN} min and a batch-16 fp32 transformer step "
        f"{AVX2_B16_STEP_S} s, so these settings ({settings.dit_steps} steps of batch {batch}) take about "
        f"{minutes:.0f} min there, over the recipe's 90. --set dit_steps={steps} keeps to about "
        f"{avx2_minutes(steps, batch):.0f} min{measured}"
    )


def default_model_path() -> Path:
    """The shipped pipeline folder; a clear error if this install lacks its weights (e.g. a partial checkout)."""
    from sana.hub import PIPELINE_MANIFEST

    if not (DEFAULT_MODEL_DIR / PIPELINE_MANIFEST).is_file():
        raise FileNotFoundError(
            f"the embedded default model is missing from {DEFAULT_MODEL_DIR} (no {PIPELINE_MANIFEST}); reinstall "
            "sana from the repository (pip install ./packages/sana) or pass --model_path"
        )
    return DEFAULT_MODEL_DIR


def train_embedded(
    work_dir: str | Path,
    settings: RecipeSettings = RecipeSettings(),
    *,
    export_to: str | Path | None = None,
    log: Callable[[str], None] | None = None,
    redo_from: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) the whole recipe in `work_dir`; returns the recipe record (settings, seconds per stage,
    scores). The model folder is `export_to` (default `work_dir/model`); it is replaced atomically at the end.

    `redo_from` (a stage name) keeps the finished stages before it and runs it and every later stage again, from
    scratch: how to try, say, other transformer settings without retraining the autoencoder. Settings may change
    only where they affect the redone stages (`STAGE_SETTINGS`).

    Raises:
        ValueError: `work_dir` holds a run made with other settings (the message lists them and the stage to redo
            from), or `redo_from` would keep a stage that a changed setting affects.
    """
    say = log or (lambda text: print(text, file=sys.stderr, flush=True))
    work = Path(work_dir).expanduser().resolve()
    work.mkdir(parents=True, exist_ok=True)
    export = Path(export_to).expanduser().resolve() if export_to else work / "model"
    record = _open_record(work, settings, redo_from)
    stages: dict[str, Callable[[Path, RecipeSettings, Callable[[str], None]], dict[str, Any] | None]] = {
        "data": _stage_data,
        "autoencoder": _stage_autoencoder,
        "text_encoder": _stage_text_encoder,
        "features": _stage_features,
        "transformer": _stage_transformer,
        "decoder": _stage_decoder,
    }
    total = len(STAGES) if settings.eval_prompts else len(STAGES) - 1
    for index, name in enumerate(STAGES[:total], start=1):
        if name in record["done"]:
            say(f"[{index}/{total}] {name}: done earlier ({record['seconds'][name]:.0f} s), skipped")
            continue
        say(f"[{index}/{total}] {name} ...")
        started, before = time.perf_counter(), record["seconds"].get(name, 0.0)

        def beat(text: str, name: str = name, started: float = started, before: float = before) -> None:
            """Progress lines also persist the stage's time so far: an interrupted call's time is kept."""
            record["seconds"][name] = round(before + time.perf_counter() - started, 1)
            _write_json(work / RECIPE_FILE, record)
            say(text)

        if name == "export":
            result = _stage_export(work, settings, export)
        elif name == "eval":
            result = _stage_eval(work, settings, export, beat)
        else:
            result = stages[name](work, settings, beat)
        seconds = time.perf_counter() - started + before
        record["seconds"][name] = round(seconds, 1)
        record["results"][name] = result or {}
        record["done"].append(name)
        _write_json(work / RECIPE_FILE, record)
        say(f"[{index}/{total}] {name}: {seconds:.0f} s")
    if "eval" in record["done"] and "card" not in record["done"]:
        _write_card(export, record)
        shutil.copyfile(work / RECIPE_FILE, export / RECIPE_FILE)
        record["done"].append("card")
        _write_json(work / RECIPE_FILE, record)
    return record


# ---------------------------------------------------------------------------------------------------------- stages


def _stage_data(work: Path, s: RecipeSettings, say: Callable[[str], None]) -> dict[str, Any]:
    from sana_data import ShapesSource, write_folder

    target = work / "data"
    tmp = work / f".data-{uuid.uuid4().hex[:8]}"
    try:
        write_folder(ShapesSource(s.images, seed=s.seed, split="train", object_scale=s.data_object_scale), tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"images": s.images, "object_scale": s.data_object_scale, "folder": str(target)}


def _stage_autoencoder(work: Path, s: RecipeSettings, say: Callable[[str], None]) -> dict[str, Any]:
    from dcae import DCAE
    from dcae.train import LossWeights, latest_checkpoint, train_autoencoder

    out = work / "autoencoder"
    torch.manual_seed(s.seed)
    with torch.inference_mode(False), torch.enable_grad():
        report = train_autoencoder(
            DCAE(autoencoder_config(s)), work / "data", out, steps=s.ae_steps, batch_size=s.ae_batch_size,
            crop=s.ae_crop, crop_candidates=s.ae_crop_candidates,
            lr=s.ae_lr, warmup_steps=min(50, s.ae_steps // 10), seed=s.seed, holdout=16,
            losses=LossWeights(latent=s.ae_latent_weight),
            resume=latest_checkpoint(out) is not None, save_every=250, log_every=25,
            progress=_every(s.ae_steps, say, "autoencoder"),
        )  # fmt: skip
    return {"psnr": report.eval_psnr, "ssim": report.eval_ssim, "scaling_factor": report.scaling_factor,
            "steps": report.steps, "seconds": report.seconds}  # fmt: skip


def autoencoder_config(s: RecipeSettings) -> Any:
    """The recipe's autoencoder graph: `dcae.train.EMBEDDED_F32` with `s.ae_latent_channels` latent channels."""
    from dcae.train import EMBEDDED_F32

    if s.ae_latent_channels == EMBEDDED_F32.latent_channels:
        return EMBEDDED_F32
    name = EMBEDDED_F32.name.replace(f"c{EMBEDDED_F32.latent_channels}-", f"c{s.ae_latent_channels}-")
    return dataclasses.replace(EMBEDDED_F32, latent_channels=s.ae_latent_channels, name=name)


def _captions(work: Path, chain: bool = False) -> list[str]:
    """The training images' prompts; with `chain`, each followed by the image's `tags` and `long` captions (the
    data stage's `_captions.json` sidecars), the text the LM pretrains on when `lm_caption_chain=1`."""
    texts = []
    for path in sorted((work / "data").glob("*.txt")):
        text = path.read_text().strip()
        if chain:
            sidecar = path.with_name(f"{path.stem}_captions.json")
            try:
                captions = json.loads(sidecar.read_text())[path.stem]
                text = f"{text}. {captions['tags']}. {captions['long']}"
            except (OSError, ValueError, KeyError) as exc:
                raise ValueError(f"lm_caption_chain=1 needs the tags and long captions of {path.name} in "
                                 f"{sidecar.name} (written by the data stage): {exc!r}") from exc  # fmt: skip
        texts.append(text)
    return texts


def _stage_text_encoder(work: Path, s: RecipeSettings, say: Callable[[str], None]) -> dict[str, Any]:
    from sana_text.pretrain import PretrainConfig, pretrain_causal_lm

    config = PretrainConfig(steps=s.lm_steps, seed=s.seed, save_every=max(1, s.lm_steps // 4),
                            warmup_steps=min(100, s.lm_steps // 10))  # fmt: skip
    show = _every(s.lm_steps, say, "text_encoder")
    with torch.inference_mode(False), torch.enable_grad():
        texts = _captions(work, chain=bool(s.lm_caption_chain))
        report = pretrain_causal_lm(texts, work / "text_encoder", config, resume=True,
                                    progress=lambda step, loss: show(step, s.lm_steps, {"loss": loss}))  # fmt: skip
    shutil.rmtree(work / "text_encoder" / "checkpoints", ignore_errors=True)
    return {"heldout_perplexity": report.heldout_perplexity, "parameters": report.num_parameters}


def recipe_config(
    work: Path, s: RecipeSettings, *, resume: bool = False, overrides: dict[str, Any] | None = None
) -> Any:
    """The `sana train` config of the transformer stage: `RECIPE_CONFIG` pointed at this run's parts; `overrides`
    (dotted keys, as `sana train --key=value`) come last, e.g. to try another setting on the same parts."""
    from sana.config import load_config

    text = work / "text_encoder"
    width = json.loads((text / "config.json").read_text())["hidden_size"]
    return load_config(
        RECIPE_CONFIG,
        {
            "data.data_dir": [str(work / "data")],
            "data.feature_cache": str(work / "features"),
            "vae.vae_pretrained": str(work / "autoencoder" / "model"),
            "text_encoder.text_encoder_name": str(text),
            "text_encoder.caption_channels": width,
            "text_encoder.chi_prompt": CHI_OFF,
            "text_encoder.skip_layers": s.te_skip_layers,
            "vae.vae_latent_dim": s.ae_latent_channels,
            "train.max_steps": s.dit_steps,
            "train.train_batch_size": s.dit_batch_size,
            "train.optimizer.lr": s.dit_lr,
            "model.mixed_precision": "bf16" if s.dit_bf16 else "fp32",
            "model.hidden_size": s.dit_width,
            "model.depth": s.dit_depth,
            "model.cross_attention_heads": s.dit_width // 32,
            "train.seed": s.seed,
            "work_dir": str(work / "transformer"),
            **({"model.resume_from.checkpoint": "latest"} if resume else {}),
            **(overrides or {}),
        },
    )


def _stage_features(work: Path, s: RecipeSettings, say: Callable[[str], None]) -> dict[str, Any]:
    from sana.features import encode_latents

    cache = encode_latents(recipe_config(work, s), work / "features", batch_size=16)
    return {"samples": len(cache.sample_keys())}


def _stage_transformer(work: Path, s: RecipeSettings, say: Callable[[str], None]) -> dict[str, Any]:
    from sana.train.checkpoint import list_checkpoints
    from sana.train.loop import train

    resume = bool(list_checkpoints(work / "transformer"))
    cfg = recipe_config(work, s, resume=resume)
    with torch.inference_mode(False), torch.enable_grad():
        run = train(cfg, on_step=_train_progress(s.dit_steps, say))
    return {"steps": run.state.step}


def _stage_decoder(work: Path, s: RecipeSettings, say: Callable[[str], None]) -> dict[str, Any]:
    """DC-AE's last phase: the decoder alone, refined with the PatchGAN term while the encoder stays frozen. The
    latents do not change, so the cached features and the transformer trained on them stay valid."""
    from dcae import load_dcae
    from dcae.train import LossWeights, latest_checkpoint, train_autoencoder

    source = work / "autoencoder" / "model"
    model = load_dcae(source, dtype=torch.float32)
    encoder = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    out = work / "decoder"
    with torch.inference_mode(False), torch.enable_grad():
        report = train_autoencoder(
            model, work / "data", out, steps=s.dec_steps, batch_size=s.ae_batch_size, crop=s.ae_crop,
            crop_candidates=s.ae_crop_candidates, lr=s.dec_lr, warmup_steps=min(20, s.dec_steps // 10),
            seed=s.seed + 1, holdout=16, losses=LossWeights(latent=s.ae_latent_weight), adversarial_from_step=0,
            resume=latest_checkpoint(out) is not None, save_every=200, log_every=25,
            progress=_every(s.dec_steps, say, "decoder"),
        )  # fmt: skip
    refined = load_dcae(out / "model", dtype=torch.float32)
    changed = [k for k, v in refined.encoder.state_dict().items() if not torch.equal(v, encoder[k])]
    if changed or not math.isclose(refined.scaling_factor, model.scaling_factor, rel_tol=1e-5):
        raise RuntimeError(
            f"the decoder stage changed the encoder ({changed[:3]}) or its scaling factor "
            f"({model.scaling_factor} -> {refined.scaling_factor}): the cached latents would be stale"
        )
    return {"psnr": report.eval_psnr, "ssim": report.eval_ssim, "steps": report.steps, "seconds": report.seconds}


def _stage_export(work: Path, s: RecipeSettings, export: Path) -> dict[str, Any]:
    from sana.train.checkpoint import list_checkpoints

    cfg = recipe_config(work, s)
    last = list_checkpoints(cfg.work_dir)[-1]
    return export_pipeline(cfg, last, export, flow_shift=cfg.scheduler.flow_shift, vae=work / "decoder" / "model")


def _stage_eval(work: Path, s: RecipeSettings, export: Path, say: Callable[[str], None]) -> dict[str, Any]:
    from sana.cli import main as sana_main

    out = work / "eval"
    argv = ["eval", "shapes", "--model_path", str(export), "-n", str(s.eval_prompts), "--steps", str(s.eval_steps),
            "--ae_images", str(s.ae_eval_images), "-o", str(out), "--device", "cpu"]  # fmt: skip
    if sana_main(argv) != 0:
        raise RuntimeError(f"sana {' '.join(argv)} failed")
    report = json.loads((out / "report.json").read_text())
    shutil.copyfile(out / "grid.png", export / "samples.png")
    scores = {**report["scores"], "overall": report["overall"]}
    return {"scores": scores, "counts": report["counts"], "autoencoder": report["autoencoder"],
            "ceiling": report["autoencoder_ceiling"], "transformer": report["transformer"],
            "timing": _time_one(export)}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------- export


def export_pipeline(
    cfg: Any, checkpoint: Path, dst: Path, *, flow_shift: float, vae: Path | None = None
) -> dict[str, Any]:
    """Write a pipeline folder (the `sana.convert` layout plus `settings`) from a training checkpoint: the EMA
    transformer when the run kept one, the autoencoder (`vae`, default: the config's; it must encode as the config's
    does) and the text encoder the config names. Atomic."""
    from dcae import load_dcae, save_dcae
    from linear_dit import load_linear_dit, save_linear_dit
    from sana.config import save_config
    from sana.convert import PIPELINE_FORMAT_TAG, PIPELINE_FORMAT_VERSION
    from sana.hub import PIPELINE_MANIFEST, PIPELINE_PARTS

    weights = checkpoint / "ema" if (checkpoint / "ema").is_dir() else checkpoint / "transformer"
    tmp = dst.with_name(f".{dst.name}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir(parents=True)
        # bf16 storage halves the transformer (Sana's own checkpoints ship in half precision); it is computed in
        # fp32 on CPUs and the shipped scores are measured on exactly these weights.
        save_linear_dit(load_linear_dit(weights, dtype=TRANSFORMER_STORAGE), tmp / "transformer")
        save_dcae(load_dcae(vae or cfg.vae.vae_pretrained, dtype=torch.float32), tmp / "vae")
        text = Path(cfg.text_encoder.text_encoder_name)
        _copy_text_encoder(text, tmp / "text_encoder", tmp / "tokenizer")
        (tmp / "scheduler").mkdir()
        _write_json(tmp / "scheduler" / "scheduler_config.json", {
            "_class_name": "DPMSolverMultistepScheduler", "flow_shift": flow_shift, "use_flow_sigmas": True,
            "prediction_type": "flow_prediction", "algorithm_type": "dpmsolver++", "solver_order": 2,
            "num_train_timesteps": 1000,
        })  # fmt: skip
        save_config(cfg, tmp / "training_config.yaml")
        _write_json(tmp / PIPELINE_MANIFEST, {
            "format": PIPELINE_FORMAT_TAG, "format_version": PIPELINE_FORMAT_VERSION,
            "parts": {name: name for name in PIPELINE_PARTS}, "source": f"sana train-embedded ({checkpoint.name})",
            "flow_shift": flow_shift, "diffusers_model_index": None,
            "settings": {
                "model.image_size": cfg.model.image_size, "model.aspect_ratio_type": cfg.model.aspect_ratio_type,
                "model.pag_applied_layers": list(cfg.model.pag_applied_layers),
                "text_encoder.chi_prompt": list(cfg.text_encoder.chi_prompt),
                "text_encoder.skip_layers": cfg.text_encoder.skip_layers,
                "scheduler.flow_shift": flow_shift, "scheduler.vis_sampler": cfg.scheduler.vis_sampler,
            },
        })  # fmt: skip
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    sizes = {p.name: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) for p in dst.iterdir() if p.is_dir()}
    return {"folder": str(dst), "bytes": sizes, "total_bytes": sum(sizes.values()), "checkpoint": checkpoint.name}


def _copy_text_encoder(src: Path, model_dst: Path, tokenizer_dst: Path) -> None:
    """The pretrained causal LM's decoder stack (`AutoModel`: Gemma2Model, no LM head, as in Sana's own pipeline
    folders, so diffusers reads it too) and its tokenizer."""
    from transformers import AutoModel, AutoTokenizer

    AutoModel.from_pretrained(src, dtype=torch.float32).save_pretrained(model_dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(tokenizer_dst)


def _time_one(folder: Path) -> dict[str, float]:
    """Seconds for one 256² image, 20 steps, CFG and PAG as `sana generate` runs it by default (the median of 3
    after a warm-up), and its split."""
    from sana.pipeline import SanaPipeline

    pipe = SanaPipeline.from_pretrained(folder)
    runs = []
    for seed in range(4):
        started = time.perf_counter()
        pipe("a red circle to the left of a blue square", height=256, width=256, num_inference_steps=20,
             guidance_scale=4.5, seed=seed, output_type="pil", progress=False)  # fmt: skip
        runs.append((time.perf_counter() - started, dict(pipe.timings)))
    runs = sorted(runs[1:], key=lambda r: r[0])
    seconds, split = runs[len(runs) // 2]
    return {"total": round(seconds, 3), **{k: round(float(v), 3) for k, v in split.items()}}


# ---------------------------------------------------------------------------------------------------------- record


def _open_record(work: Path, settings: RecipeSettings, redo_from: str | None = None) -> dict[str, Any]:
    path = work / RECIPE_FILE
    wanted = dataclasses.asdict(settings)
    if redo_from is not None and redo_from not in STAGES:
        raise ValueError(f"unknown stage {redo_from!r} to redo from; stages: {', '.join(STAGES)}")
    if path.is_file():
        record = json.loads(path.read_text())
        record["settings"] = recorded_settings(record)
        changed = {k: (record["settings"].get(k), v) for k, v in wanted.items() if record["settings"].get(k) != v}
        listed = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
        if changed and redo_from is None:
            first = STAGES[min(STAGES.index(first_stage_of(k)) for k in changed)]
            raise ValueError(f"{work} holds a recipe run with other settings ({listed}); use another work folder, or "
                             f"keep its stages before {first!r} with --redo-from {first}")  # fmt: skip
        if redo_from is not None:
            _forget_stages(work, record, redo_from, changed)
            record["settings"] = wanted
        record.setdefault("calls", []).append(
            _call() | ({"redo_from": redo_from, "changed": listed} if redo_from else {})
        )
        _write_json(path, record)
        return record
    machine = {
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    record = {"settings": wanted, "done": [], "seconds": {}, "results": {}, "machine": machine, "calls": [_call()]}
    _write_json(path, record)
    return record


# RecipeSettings fields added after runs were recorded, with the value those runs used without naming it. A field
# missing here (the decoder stage's: those runs had no such stage) stays missing, so it reads as a changed setting.
BEFORE_FIELD = {"ae_crop_candidates": 1, "te_skip_layers": 0, "ae_latent_channels": 32, "lm_caption_chain": 0,
                "data_object_scale": 1.0, "dit_bf16": 0, "dit_width": 192, "dit_depth": 8}  # fmt: skip


def recorded_settings(record: dict[str, Any]) -> dict[str, Any]:
    """A recipe record's settings, with `BEFORE_FIELD`'s values for the fields it predates."""
    return {**BEFORE_FIELD, **record["settings"]}


def work_settings(work: str | Path) -> RecipeSettings:
    """The settings a recipe work folder was made with (its `recipe.json`), or the defaults if it has none: what
    to pass to `recipe_config` to train more on a run's parts (`benchmarks/dit_recipe_sweep.py`)."""
    path = Path(work) / RECIPE_FILE
    if not path.is_file():
        return RecipeSettings()
    names = {f.name for f in dataclasses.fields(RecipeSettings)}
    return RecipeSettings(**{k: v for k, v in recorded_settings(json.loads(path.read_text())).items() if k in names})


def first_stage_of(setting: str) -> str:
    """The first stage whose output a `RecipeSettings` field changes (every later stage depends on it too)."""
    for stage, names in STAGE_SETTINGS.items():
        if setting in names:
            return stage
    raise KeyError(f"{setting!r} is not a RecipeSettings field")


def _forget_stages(work: Path, record: dict[str, Any], redo_from: str, changed: dict[str, Any]) -> None:
    """Drop `redo_from` and every later stage from the record and delete their outputs; refuse if a changed
    setting also changes an earlier stage (its output would no longer match the settings)."""
    start = STAGES.index(redo_from)
    early = {k: first_stage_of(k) for k in changed if STAGES.index(first_stage_of(k)) < start}
    if early:
        listed = ", ".join(f"{k} (stage {stage!r})" for k, stage in early.items())
        first = STAGES[min(STAGES.index(stage) for stage in early.values())]
        raise ValueError(f"--redo-from {redo_from} keeps stages that these changed settings affect: {listed}; "
                         f"redo from {first!r} or use another work folder")  # fmt: skip
    for stage in STAGES[start:]:
        for folder in STAGE_OUTPUTS.get(stage, ()):
            shutil.rmtree(work / folder, ignore_errors=True)
    redone = set(STAGES[start:]) | {"card"}
    record["done"] = [stage for stage in record["done"] if stage not in redone]
    for key in ("seconds", "results"):
        record[key] = {stage: value for stage, value in record[key].items() if stage not in redone}


def _call() -> dict[str, Any]:
    """One `train_embedded` call: when it started and with how many torch threads (resumed runs have several)."""
    return {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "threads": torch.get_num_threads()}


def _write_json(path: Path, data: Any) -> None:
    _compose.write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def _every(total: int, say: Callable[[str], None], name: str) -> Callable[[int, int, dict[str, float]], None]:
    """A progress callback printing about 20 lines per stage."""
    period = max(1, total // 20)

    def show(step: int, steps: int, values: dict[str, float]) -> None:
        if step % period == 0 or step == steps:
            loss = values.get("loss")
            say(f"  {name} step {step}/{steps}" + (f" loss {loss:.4f}" if loss is not None else ""))

    return show


def _train_progress(total: int, say: Callable[[str], None]) -> Callable[[dict[str, Any]], None]:
    show = _every(total, say, "transformer")
    return lambda record: show(int(record["step"]), total, {"loss": float(record["loss"])})


def _parameters(folder: Path) -> int:
    from safetensors import safe_open

    total = 0
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as f:
            total += sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())  # noqa: SIM118
    return total


def _cpu(machine: dict[str, Any]) -> str:
    """The card's name for the recipe's machine: "2-core CPU", with torch's CPU capability where the record has it
    ("2-core CPU (AVX2)"; records before 2026-12-07 lack it)."""
    capability = machine.get("cpu_capability")
    return f"{machine['cpus']}-core CPU" + (f" ({capability})" if capability else "")


def model_card(export: Path, record: dict[str, Any]) -> str:
    """The model card (README.md) of an exported model, from its recipe record."""
    s, seconds, results = recorded_settings(record), record["seconds"], record["results"]
    ev = results.get("eval", {})
    scores, ae, timing = ev.get("scores") or {}, ev.get("autoencoder") or {}, ev.get("timing") or {}
    gain = (ev.get("transformer") or {}).get("text_gain", float("nan"))
    train_stages = ("data", "autoencoder", "text_encoder", "features", "transformer", "decoder", "export")
    train_seconds = sum(seconds.get(k, 0.0) for k in train_stages)
    parts = {name: _parameters(export / name) for name in ("transformer", "vae", "text_encoder")}
    size = results.get("export", {}).get("total_bytes", 0)
    scale = results.get("autoencoder", {}).get("scaling_factor", float("nan"))
    channels = s["ae_latent_channels"]
    counts = ev.get("counts") or {}
    rows = "\n".join(f"| {k} | {v:.3f} | {counts.get(k, '')} |" for k, v in scores.items()) or "| (none) | | |"
    interval = ""
    if counts:
        from sana.eval import overall_interval

        half = overall_interval({k: v for k, v in scores.items() if k in counts}, counts)
        interval = (
            f"\nOverall {scores['overall']:.3f} ± {half:.3f}: the 95% interval from the prompt sample alone (another\n"
            "draw of held-out prompts moves the score about this much; retraining with another seed can move it more)."
        )
    stage_rows = "\n".join(f"| {k} | {seconds.get(k, 0.0) / 60:.1f} |" for k in STAGES if k in seconds)
    split = ", ".join(f"{k} {v:.3f} s" for k, v in timing.items() if k != "total")
    redos = [c for c in record.get("calls", []) if c.get("redo_from")]
    redone = ""
    if redos:
        steps = "; then ".join(f"from `{c['redo_from']}` ({c['changed'] or 'same settings'})" for c in redos)
        redone = (
            f"\n- Redone after settings changes (`--redo-from STAGE`, in this order): {steps}. Each stage's weights "
            "come from the last call that ran it; the stages before, with unchanged settings, were kept."
        )
    caption_norm = _training_setting(export, "text_encoder", "y_norm_scale_factor")
    lm_texts = (
        "each image's prompt followed by its tags and long caption, which name its objects again"
        if s["lm_caption_chain"]
        else "the images' prompts"
    )
    object_scale = ""
    if s.get("data_object_scale", 1.0) != 1.0:
        object_scale = (
            f" Their objects are drawn {s['data_object_scale']}× as large as the evaluation world's "
            "(`data_object_scale`); the evaluation prompts name no size."
        )
    dit_shape = f"{s['dit_depth']} `SanaShapes_P1_D8` blocks of width {s['dit_width']}"
    ceiling = ""
    if top := ev.get("ceiling"):  # runs evaluated before `sana eval shapes` measured it have none
        per = " / ".join(f"{v:.2f}" for v in top["scores"].values())
        ceiling = (
            f" The evaluation prompts' own scenes, through the\nautoencoder and scored the same way, reach overall "
            f"{top['overall']:.3f}\n({' / '.join(top['scores'])}: {per}):\nwhat a transformer that drew each "
            "prompt's held-out scene exactly would score with this autoencoder. A\ntransformer that draws larger or "
            "cleaner objects than the evaluation world's can score above it."
        )
    dit_optimizer = f"AdamW lr {s['dit_lr']}" + (", bf16 autocast (fp32 weights)" if s.get("dit_bf16") else ", fp32")
    decoder = ""
    if "dec_steps" in s:  # runs recorded before the decoder stage had none
        decoder = (
            f"\n- Decoder refinement: {s['dec_steps']} steps with the encoder frozen (the latents, and so the "
            f"transformer's training data, do not change), the same losses plus a PatchGAN hinge term, lr "
            f"{s['dec_lr']}."
        )
    return f"""# sana-shapes-256: the embedded default model

A tiny Sana (Linear DiT + f32 DC-AE + Gemma-2 text encoder) trained from scratch on this repository's synthetic
shapes world by `sana train-embedded` on a {_cpu(record["machine"])}. It is the model `sana generate`
uses when no `--model_path` is given. It is trained to draw coloured circles, squares, triangles, diamonds and
stars on plain backgrounds at 256 px (square, 192×320 and 320×192 buckets) and knows nothing else; how well it
does is the evaluation below (overall {scores.get("overall", float("nan")):.3f}; the goal is 0.80).

## Parts

| part | what | parameters |
|---|---|---|
| transformer | Linear DiT, {dit_shape} (see `training_config.yaml`) | {parts["transformer"]:,} |
| vae | DC-AE f32, {channels} latent channels (`dcae.train` graph), scaling factor {scale:.5f} | {parts["vae"]:,} |
| text_encoder | Gemma-2, 4 layers, width 128, BPE tokenizer trained on the captions | {parts["text_encoder"]:,} |

Folder size: {size / 2**20:.1f} MiB (safetensors; the transformer stored in bf16, the rest in fp32).

## Data and training

- {s["images"]} shapes-world images of the training split (seed {s["seed"]}); the evaluation prompts come from the
  held-out split, never seen in training.{object_scale}
- Autoencoder: {s["ae_steps"]} steps, batch {s["ae_batch_size"]}, {s["ae_crop"]} px crops (of
  {s["ae_crop_candidates"]} random crops, the one with the most edges), L1 + L2 + SSIM + Sobel-edge losses
  and a mean(z²) latent penalty ({s["ae_latent_weight"]}), lr {s["ae_lr"]}.
- Text encoder: causal-LM pretraining, {s["lm_steps"]} steps of 64 texts ({lm_texts}); held-out perplexity
  {results.get("text_encoder", {}).get("heldout_perplexity", float("nan")):.2f}. Captions are encoded with
  `skip_layers={s["te_skip_layers"]}`: the hidden state that many blocks before the last (0: the last).
- Transformer: {s["dit_steps"]} steps, batch {s["dit_batch_size"]}, {dit_optimizer}, flow matching with
  logit-normal timesteps, 10% caption dropout (CFG), caption RMSNorm started at {caption_norm}, EMA weights
  shipped.{decoder}{redone}

| stage | minutes |
|---|---|
{stage_rows}

Training stages total: **{train_seconds / 60:.1f} min** (eval not included).

## Evaluation (`sana eval shapes`, {s["eval_prompts"]} held-out prompts, {s["eval_steps"]} steps, CFG 4.5)

| category | score | prompts |
|---|---|---|
{rows}
{interval}

Autoencoder on {s["ae_eval_images"]} held-out images: PSNR {ae.get("psnr", float("nan")):.2f} dB, SSIM
{ae.get("ssim", float("nan")):.4f}; the detector finds the original's objects in
{ae.get("detector_agreement", float("nan")):.1%} of its reconstructions.{ceiling}

Text gain {gain:.3f}: the transformer's loss on held-out images with the null caption over its loss with their own
captions (1.0 would mean it ignores the prompt; `sana eval shapes`).

One 256² image, 20 steps, CFG 4.5 and PAG 2.5 (the pipeline defaults: three transformer passes per step), fp32
on this CPU: {timing.get("total", float("nan")):.3f} s ({split}).

`samples.png` shows the first evaluation images.

## Reproduce

```
sana train-embedded --work-dir runs/embedded
```

writes the same folder to `runs/embedded/model` (every stage is resumable; `recipe.json` records the settings
and the seconds per stage). Same settings and thread count give the same weights on the same machine. On a
CPU without AVX-512 the transformer steps take longer, and the command says how many keep to 90 minutes there.
"""


def _training_setting(export: Path, section: str, name: str) -> Any:
    """One value of the exported `training_config.yaml` ("?" when the folder has none)."""
    import yaml

    path = export / "training_config.yaml"
    if not path.is_file():
        return "?"
    return (yaml.safe_load(path.read_text()) or {}).get(section, {}).get(name, "?")


def _write_card(export: Path, record: dict[str, Any]) -> None:
    _compose.write_text_atomic(export / "README.md", model_card(export, record))
