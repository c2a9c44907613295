"""`sana train`: Sana's flow-matching training on `accelerate` (spec §7).

One process or many (`torchrun --nproc_per_node N -m sana train ...`; DDP through accelerate, gloo on CPUs): each
step every rank trains on its slice of one global same-bucket batch, and every random draw is keyed by (seed,
step, sample), so N ranks reproduce one process with the same global batch and a resumed run reproduces the
uninterrupted one. Checkpoints are atomic `accelerate` states (see `sana.train.checkpoint`).
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sana import _compose
from sana.config import SanaConfig, dit_config, save_config
from sana.train import checkpoint as ckpt
from sana.train.data import build_cached_data, build_data, loader, uses_cache
from sana.train.objective import ObjectiveSettings, draw, drop_captions, loss_fn

log = logging.getLogger("sana.train")

METRICS = "metrics.csv"
FIELDS = ("step", "loss", "lr", "grad_norm", "skipped", "t_data", "t_vae", "t_text", "t_model")
# CPUs have no fp16 autocast worth using; accelerate's names for the config's mixed_precision values.
_ACCELERATE_PRECISION = {"fp32": "no", "fp16": "fp16", "bf16": "bf16"}


class NonFiniteLossError(RuntimeError):
    """Too many non-finite losses in a row; the last checkpoint is intact."""


@dataclass
class TrainerState:
    """What `accelerate` does not know: progress, the sampler position, the NaN counters."""

    step: int = 0
    sampler: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    nan_streak: int = 0

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "sampler": dict(self.sampler), "skipped": self.skipped, "nan": self.nan_streak}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.sampler = int(state["step"]), dict(state["sampler"])
        self.skipped, self.nan_streak = int(state["skipped"]), int(state["nan"])


class EMA:
    """Exponential moving average of the transformer weights (`train.use_ema`, decay `train.ema_rate`)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().float().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, v in model.state_dict().items():
            self.shadow[k].lerp_(v.float(), 1 - self.decay)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shadow = {k: v.clone() for k, v in state.items()}


def build_denoiser(cfg: SanaConfig) -> torch.nn.Module:
    """From `load_from` (weights only: ours, official .pth, diffusers; its graph) or from scratch (the YAML's)."""
    from linear_dit import LinearDiT, load_linear_dit

    source = cfg.load_from or cfg.model.load_from
    graph = dit_config(cfg)
    if not source:
        return LinearDiT(graph)
    path = _compose.resolve_field(source, "model.load_from")
    extra: dict[str, Any] = {"pag_layers": graph.pag_layers, "trained_dtype": graph.trained_dtype}
    if cfg.model.cross_attention_heads is not None:
        extra["cross_attention_heads"] = cfg.model.cross_attention_heads
    return load_linear_dit(path, dtype=torch.float32, **extra)


def _check_locations(cfg: SanaConfig) -> None:
    from sana.config import TEXT_ENCODER_IDS

    te = cfg.text_encoder
    _compose.resolve_field(cfg.vae.vae_pretrained, "vae.vae_pretrained")
    _compose.resolve_field(
        TEXT_ENCODER_IDS.get(te.text_encoder_name, te.text_encoder_name), "text_encoder.text_encoder_name"
    )
    if cfg.load_from or cfg.model.load_from:
        _compose.resolve_field(cfg.load_from or cfg.model.load_from, "model.load_from")


def _check_ranks_in_sync(run: Run) -> None:
    """DDP keeps every rank's weights identical; verify it at each checkpoint (cheap: one sum per rank)."""
    if run.accelerator.num_processes == 1:
        return
    model = run.accelerator.unwrap_model(run.model)
    total = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
    sums = run.accelerator.gather(total.to(run.accelerator.device))
    if not bool(torch.all(sums == sums[0])):
        raise RuntimeError(f"ranks diverged at step {run.state.step}: parameter sums {sums.tolist()}")


def _set_null_caption(model: Any, null: torch.Tensor) -> None:
    """The stored null caption becomes the text encoder's "" (spec §7.7), resized to its length L if needed."""
    import dataclasses

    buffer = model.y_embedder.y_embedding
    if buffer.shape == null.shape:
        buffer.copy_(null)
        return
    model.y_embedder.register_buffer("y_embedding", null.to(buffer).clone())  # (L, D_txt)
    model.config = dataclasses.replace(model.config, text_length=null.shape[0])


def _accelerator(cfg: SanaConfig, work_dir: Path) -> Any:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import ProjectConfiguration

    # accelerate keeps one precision per process and refuses an Accelerator with another; each run owns its state,
    # so a second run in the process (the recipe's bf16 transformer, then a fp32 one; a notebook) starts afresh.
    # The distributed part (PartialState: process group, device) is kept.
    AcceleratorState._reset_state()
    precision = _ACCELERATE_PRECISION[cfg.model.mixed_precision]
    if precision == "fp16" and not torch.cuda.is_available():
        log.info("model.mixed_precision=fp16 needs a GPU (loss scaling); training in fp32 on this CPU")
        precision = "no"
    if precision == "bf16" and _compose.slow_bf16("cuda" if torch.cuda.is_available() else "cpu"):
        log.warning(
            "model.mixed_precision=bf16 on a CPU without AVX-512: bf16 kernels are emulated here and a step can take "
            "several times as long as in fp32; set model.mixed_precision=fp32"
        )
    trackers = [cfg.report_to] if cfg.report_to in _installed_trackers() else None
    return Accelerator(
        cpu=not torch.cuda.is_available(),  # makes torchrun's environment give MULTI_CPU (gloo) DDP on CPUs
        mixed_precision=precision,
        gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
        project_config=ProjectConfiguration(project_dir=str(work_dir), logging_dir=str(work_dir / "logs")),
        log_with=trackers,
    )


def _installed_trackers() -> set[str]:
    from importlib.util import find_spec

    return {name for name, module in (("tensorboard", "tensorboard"), ("wandb", "wandb")) if find_spec(module)}


@dataclass
class Run:
    """Everything one training run holds; built by `prepare_run`, advanced by `train`."""

    cfg: SanaConfig
    accelerator: Any
    model: Any
    optimizer: Any
    scheduler: Any
    autoencoder: Any
    text_encoder: Any
    null: torch.Tensor
    dataset: Any
    sampler: Any
    state: TrainerState
    ema: EMA | None
    settings: ObjectiveSettings
    work_dir: Path
    total_steps: int


def prepare_run(cfg: SanaConfig) -> Run:
    """Check the config and data, load the frozen parts, build model/optimizer/scheduler, resume if asked."""
    from sana.train.optim import build_lr_scheduler, build_optimizer

    work_dir = Path(cfg.work_dir)
    _check_locations(cfg)  # unreachable models fail here, before any data is read or model built
    accelerator = _accelerator(cfg, work_dir)
    build = build_cached_data if uses_cache(cfg) else build_data
    dataset, sampler = build(cfg, rank=accelerator.process_index, world=accelerator.num_processes)
    device = accelerator.device
    frozen_dtype = torch.bfloat16 if accelerator.mixed_precision == "bf16" else torch.float32
    autoencoder, _ = _compose.load_autoencoder(cfg, dtype=frozen_dtype, device=device)
    text_encoder, _ = _compose.load_config_text_encoder(cfg, dtype=frozen_dtype, device=device)
    model = build_denoiser(cfg)
    null = text_encoder.null_embedding().embeddings[0].float()  # (L, D_txt): the caption-dropout features
    _set_null_caption(model, null)
    model.grad_checkpointing = cfg.train.grad_checkpointing
    if cfg.train.use_lora:
        from sana.train.lora import add_lora

        add_lora(model, rank=cfg.train.lora_rank)  # freezes the base; only the adapters train
    model.train()
    t = cfg.train
    global_batch = t.train_batch_size * accelerator.num_processes * t.gradient_accumulation_steps
    rule = (t.auto_lr or {}).get("rule")
    optimizer = build_optimizer(model, t.optimizer, global_batch=global_batch, auto_lr=rule)
    total = t.max_steps or t.num_epochs * len(sampler) // t.gradient_accumulation_steps
    warmup = int(t.lr_schedule_args.get("num_warmup_steps", 0))
    scheduler = build_lr_scheduler(optimizer, t.lr_schedule, warmup_steps=warmup, total_steps=total)
    model, optimizer = accelerator.prepare(model, optimizer)
    state, ema = TrainerState(), EMA(accelerator.unwrap_model(model), t.ema_rate) if t.use_ema else None
    accelerator.register_for_checkpointing(scheduler, state, *([ema] if ema else []))
    settings = ObjectiveSettings(
        flow_shift=cfg.scheduler.flow_shift, weighting=cfg.scheduler.weighting_scheme or "uniform",
        logit_mean=cfg.scheduler.logit_mean, logit_std=cfg.scheduler.logit_std,
        caption_dropout=cfg.model.class_dropout_prob,
    )  # fmt: skip
    run = Run(cfg, accelerator, model, optimizer, scheduler, autoencoder, text_encoder, null, dataset, sampler,
              state, ema, settings, work_dir, total)  # fmt: skip
    resume = cfg.resume_from or (cfg.model.resume_from.checkpoint if cfg.model.resume_from else None)
    if resume:
        _resume(run, ckpt.resolve_resume(work_dir, resume))
    elif accelerator.is_main_process:
        work_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, work_dir / "config.yaml")
    return run


def _resume(run: Run, folder: Path) -> None:
    run.accelerator.load_state(str(folder))
    run.sampler.load_state_dict(run.state.sampler)
    log.info("resumed from %s at step %d", folder, run.state.step)
    if run.accelerator.is_main_process:
        _truncate_metrics(run.work_dir / METRICS, run.state.step)


@torch.no_grad()
def _encode(run: Run, batch: dict[str, Any], times: dict[str, float]) -> tuple[torch.Tensor, ...]:
    device = run.accelerator.device
    if "latent" in batch:  # a feature cache: raw latents and text features computed by `sana encode-latents`
        x0 = _compose.to_diffusion_latents(run.autoencoder, batch["latent"].to(device).float())  # (B, C_z, h, w)
        return x0, batch["text"].to(device).float(), batch["text_mask"].to(device)
    start = time.perf_counter()
    raw = run.autoencoder.encode(batch["image"].to(device)).float()  # (B, C_z, h, w), unscaled
    x0 = _compose.to_diffusion_latents(run.autoencoder, raw)
    times["t_vae"] += time.perf_counter() - start
    start = time.perf_counter()
    text, mask = run.text_encoder.encode(batch["caption"])  # (B, L, D_txt), (B, L)
    times["t_text"] += time.perf_counter() - start
    return x0, text.float(), mask


def _micro_step(run: Run, batch: dict[str, Any], micro: int, times: dict[str, float]) -> torch.Tensor:
    x0, text, mask = _encode(run, batch, times)
    B = x0.shape[0]
    first = run.sampler.offset()
    noise, t, drop = draw(tuple(x0.shape[1:]), run.settings, seed=run.cfg.train.seed, step=run.state.step,
                          micro=micro, indices=list(range(first, first + B)))  # fmt: skip
    text, mask = drop_captions(text, mask, run.null, drop)
    device = run.accelerator.device
    start = time.perf_counter()
    with run.accelerator.autocast():
        loss = loss_fn(run.model, x0, text, mask.to(device), noise.to(device), t.to(device))
    times["t_model"] += time.perf_counter() - start
    return loss


def train(cfg: SanaConfig, *, on_step: Callable[[dict[str, Any]], Any] | None = None) -> Run:
    """Train until `train.max_steps` (or `num_epochs`); returns the run (model, state, ...)."""
    run = prepare_run(cfg)
    acc, t = run.accelerator, cfg.train
    bar = _progress(run)
    consumed = run.state.sampler.get("position", 0)
    micro, times, losses = 0, _zero_times(), []
    deadline = time.monotonic() + t.training_hours * 3600
    while run.state.step < run.total_steps and time.monotonic() < deadline:
        run.dataset.set_epoch(run.sampler.epoch)  # caption draws follow the epoch
        start = time.perf_counter()
        for batch in loader(run.dataset, run.sampler, t.num_workers):
            times["t_data"] += time.perf_counter() - start
            consumed += 1
            with acc.accumulate(run.model):
                loss = _micro_step(run, batch, micro, times)
                losses.append(loss.detach())
                acc.backward(loss)
                micro += 1
                if acc.sync_gradients:
                    record = _optimizer_step(run, torch.stack(losses).mean(), consumed, times)
                    micro, times, losses = 0, _zero_times(), []
                    _after_step(run, record, bar, on_step)
            if run.state.step >= run.total_steps:
                break
            start = time.perf_counter()
        consumed = 0
    if run.state.step % t.save_model_steps:
        _save(run)
    bar.close()
    acc.end_training()
    return run


def _optimizer_step(run: Run, loss: torch.Tensor, consumed: int, times: dict[str, float]) -> dict[str, Any]:
    acc, t = run.accelerator, run.cfg.train
    loss_all = acc.gather(loss.reshape(1)).mean()
    finite = bool(torch.isfinite(loss_all))
    grad_norm = float("nan")
    if finite:
        grad_norm = float(acc.clip_grad_norm_(run.model.parameters(), t.gradient_clip))
        run.optimizer.step()
        run.scheduler.step()
        if run.ema is not None:
            run.ema.update(acc.unwrap_model(run.model))
        run.state.nan_streak = 0
    else:
        run.state.skipped += 1
        run.state.nan_streak += 1
    run.optimizer.zero_grad(set_to_none=True)
    run.state.step += 1
    run.state.sampler = run.sampler.state_dict(consumed)
    if run.state.nan_streak >= t.max_nan_steps:
        raise NonFiniteLossError(
            f"{run.state.nan_streak} non-finite losses in a row (step {run.state.step}); the last checkpoint under "
            f"{ckpt.checkpoint_dir(run.work_dir)} is intact. Try a lower train.optimizer.lr, "
            "model.mixed_precision=bf16 instead of fp16, or a smaller train.gradient_clip"
        )
    lr = run.scheduler.get_last_lr()[0]
    return {"step": run.state.step, "loss": float(loss_all), "lr": lr, "grad_norm": grad_norm,
            "skipped": run.state.skipped, **times}  # fmt: skip


def _after_step(run: Run, record: dict[str, Any], bar: Any, on_step: Any) -> None:
    acc, t, step = run.accelerator, run.cfg.train, run.state.step
    if acc.is_main_process:
        _append_metrics(run.work_dir / METRICS, record)
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
    if step % t.log_interval == 0 or step == 1:
        acc.log({run.cfg.loss_report_name: record["loss"], "lr": record["lr"]}, step=step)
    if on_step is not None:
        on_step(record)
    if step % t.save_model_steps == 0:
        _save(run)
    if t.visualize and (step % t.eval_sampling_steps == 0 or step == 1) and acc.is_main_process:
        from sana.train.validation import save_validation_grid

        save_validation_grid(run, step)


def _save(run: Run) -> Path:
    _check_ranks_in_sync(run)
    model = run.accelerator.unwrap_model(run.model)

    def write_weights(folder: Path) -> None:
        if run.cfg.train.use_lora:  # the adapters only, in diffusers' LoRA format (the base is load_from)
            from sana.train.lora import save_lora

            save_lora(model, folder.parent / "lora")
            return
        from linear_dit import save_linear_dit

        save_linear_dit(model, folder)
        if run.ema is not None:  # also as a loadable model folder `ema/` (the weights to ship or sample from)
            raw = {k: v.detach().clone() for k, v in model.state_dict().items()}
            try:
                model.load_state_dict(run.ema.shadow)
                save_linear_dit(model, folder.parent / "ema")
            finally:
                model.load_state_dict(raw)

    return ckpt.save_checkpoint(run.accelerator, run.work_dir, run.state.step, write_weights,
                                run.cfg.train.keep_last_checkpoints)  # fmt: skip


def _zero_times() -> dict[str, float]:
    return {"t_data": 0.0, "t_vae": 0.0, "t_text": 0.0, "t_model": 0.0}


def _progress(run: Run) -> Any:
    from tqdm.auto import tqdm

    disable = not run.accelerator.is_main_process
    return tqdm(total=run.total_steps, initial=run.state.step, desc="train", unit="step", disable=disable)


def _append_metrics(path: Path, record: dict[str, Any]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(
            {k: (f"{v:.8g}" if isinstance(v, float) and math.isfinite(v) else v) for k, v in record.items()}
        )


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop rows after the resumed step (written by the interrupted run after its last checkpoint)."""
    if not path.exists():
        return
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def read_metrics(work_dir: str | Path) -> list[dict[str, str]]:
    """The rows of a run's `metrics.csv`."""
    with (Path(work_dir) / METRICS).open(newline="") as f:
        return list(csv.DictReader(f))


__all__ = ("train", "prepare_run", "build_denoiser", "read_metrics", "NonFiniteLossError", "TrainerState", "EMA")
