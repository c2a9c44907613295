"""Sana run configuration: pydantic models mirroring the official YAML schema, loading, overrides and dumping.

The official Sana YAML files load unchanged (spec §3.14); omitted keys take the official dataclass defaults
(spec §3.15). `load_config` is the single function in the toolkit that reads YAML:

    cfg = load_config("configs/sana_config/512ms/Sana_600M_img512.yaml", ["--train.train_batch_size=32"])

Fields the toolkit does not use are kept so the official files validate; their comments say
"compatibility". Every model is frozen and forbids unknown keys; errors are `ConfigError` naming the dotted
key (`model.multi_scal`), the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)

from linear_dit import LinearDiTConfig, get_preset
from sana._io import atomic_open
from sana._overrides import (
    ConfigError,
    check_key,
    check_key_syntax,
    parse_override_args,
    set_dotted,
    translate_errors,
)

__all__ = (
    # models
    "SanaConfig",
    "DataConfig",
    "ModelConfig",
    "ResumeConfig",
    "AEConfig",
    "TextEncoderConfig",
    "SchedulerConfig",
    "OptimizerConfig",
    "TrainingConfig",
    # reading and writing
    "ConfigError",
    "load_config",
    "parse_overrides",
    "dump_config",
    "save_config",
    "packaged_configs",
    # helpers for the pipeline
    "TEXT_ENCODER_IDS",
    "MODEL_PRESETS",
    "weight_dtype",
    "bucket_table_name",
    "dit_config",
)

# coerce_numbers_to_str: `--name=123` or `load_from: 2024` are strings, not type errors.
_FROZEN = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

ImageSize = Literal[256, 512, 1024, 2048, 4096]  # px, the side of the base square resolution
MixedPrecision = Literal["fp16", "bf16", "fp32"]
AspectRatioType = Literal[
    "ASPECT_RATIO_256", "ASPECT_RATIO_512", "ASPECT_RATIO_1024", "ASPECT_RATIO_2048", "ASPECT_RATIO_4096"
]
VisSampler = Literal["flow_dpm-solver", "flow_euler", "dpm-solver", "sa-solver"]
TorchDTypeName = Literal["float32", "bfloat16", "float16"]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class DataConfig(BaseModel):
    """`data:` section: training data (spec §6). Unused by inference."""

    model_config = _FROZEN

    data_dir: list[str] = []  # dataset folders or WebDataset shard dirs, concatenated
    buckets_file: str = "buckets.json"  # local bucket cache index (community trainer); compatibility
    caption_proportion: dict[str, float] = {"prompt": 1.0}  # caption type -> sampling weight
    external_caption_suffixes: list[str] = []  # sidecar caption files `<shard><suffix>.json`
    external_clipscore_suffixes: list[str] = []  # sidecar clip-score files `<shard><suffix>.json`
    clip_thr_temperature: PositiveFloat = 1.0  # softmax temperature of the clip-score caption sampler
    clip_thr: float = 0.0  # clip-score threshold of the caption sampler
    del_img_clip_thr: float = 0.0  # Sana-1.5 YAMLs: drop images below this clip score; compatibility
    sort_dataset: bool = False  # sort samples by caption length; compatibility
    load_text_feat: bool = False  # read precomputed text features (`<key>.npz`) instead of encoding
    load_vae_feat: bool = False  # read precomputed latents (`.npy`) instead of encoding images
    transform: str = "default_train"  # image transform name
    type: str = "SanaWebDatasetMS"  # dataset class: SanaImgDataset, SanaWebDataset, SanaWebDatasetMS
    image_size: PositiveInt = 512  # px, the square training size when model.multi_scale is false
    hq_only: bool = False  # keep only samples marked high quality; compatibility
    valid_num: int = 0  # number of validation samples held out; compatibility
    data: str | list[Any] | dict[str, Any] | None = None  # free-form dataset options; compatibility
    # Ours: a feature cache written by `sana encode-latents` (latents + text features at their buckets), read when
    # load_vae_feat and load_text_feat are both true.
    feature_cache: str | None = None


class ResumeConfig(BaseModel):
    """`model.resume_from:` a full training state to resume."""

    model_config = _FROZEN

    checkpoint: str | None = None  # path, `latest`, or None for nothing to resume
    load_ema: bool = False  # load the EMA weights instead of the raw ones
    resume_lr_scheduler: bool = True  # restore the LR scheduler state
    resume_optimizer: bool = True  # restore the optimizer state


class ModelConfig(BaseModel):
    """`model:` section: the Linear DiT and its precision (spec §3)."""

    model_config = _FROZEN

    model: str = "SanaMS_600M_P1_D28"  # official architecture name, see MODEL_PRESETS
    image_size: ImageSize = 512  # px, base resolution; sets the sin-cos PE grid when use_pe
    mixed_precision: MixedPrecision = "fp16"  # weight/compute dtype the checkpoint was trained in
    fp32_attention: bool = True  # linear-attention maths in fp32 (ignored under bf16, spec §3.13)
    load_from: str | None = None  # weights to start from (path, hf://, repo id); empty = none
    resume_from: ResumeConfig | None = ResumeConfig()  # full state to resume; YAML `resume_from:` empty = None
    aspect_ratio_type: AspectRatioType = "ASPECT_RATIO_1024"  # bucket table for multi-scale training
    multi_scale: bool = True  # bucketed multi-aspect batches (spec §7.6)
    pe_interpolation: PositiveFloat = 1.0  # sin-cos PE position divisor: 1.0 at 2K, 2.0 at 4K
    micro_condition: bool = False  # size/aspect micro-conditioning (unused by Sana)
    attn_type: str = "linear"  # self-attention kind; only "linear" is built by linear_dit
    autocast_linear_attn: bool = False  # run linear attention under autocast; compatibility
    ffn_type: str = "glumbconv"  # feed-forward kind; only "glumbconv" (Mix-FFN) is built
    mlp_acts: list[str | None] = ["silu", "silu", None]  # Mix-FFN activations (inverted, depthwise, point)
    mlp_ratio: PositiveFloat = 2.5  # Mix-FFN hidden = int(mlp_ratio * hidden)
    use_pe: bool = False  # add the 2D sin-cos positional embedding (2K/4K only)
    qk_norm: bool = False  # RMSNorm on linear-attention q, k (Sana-1.5)
    class_dropout_prob: Probability = 0.0  # CFG caption dropout during training (YAMLs: 0.1)
    linear_head_dim: PositiveInt = 32  # channels per linear-attention head
    cross_norm: bool = False  # RMSNorm on cross-attention q, k (Sana-1.5)
    cfg_scale: float = 4.0  # default guidance scale for validation images
    guidance_type: str = "classifier-free"  # validation guidance kind; compatibility
    pag_applied_layers: list[NonNegativeInt] = [14]  # block indices perturbed by PAG
    # Ours, not in the official schema: cross-attention heads of a checkpoint whose width has no official preset
    # (no shape reveals them; e.g. tiny test models). None: the preset of the checkpoint's width decides.
    cross_attention_heads: PositiveInt | None = None
    # Ours: the width and depth of a model built from scratch, in place of the preset's (the embedded recipe's
    # `dit_width` / `dit_depth`). None: the preset of `model.model` decides. A model loaded from `load_from` keeps
    # its checkpoint's.
    hidden_size: PositiveInt | None = None
    depth: PositiveInt | None = None


class AEConfig(BaseModel):
    """`vae:` section: the DC-AE autoencoder (spec §2)."""

    model_config = _FROZEN

    vae_type: str = "dc-ae"  # "dc-ae" (efficientvit weights) or "AutoencoderDC" (diffusers weights)
    vae_pretrained: str = "mit-han-lab/dc-ae-f32c32-sana-1.0"  # hub id or path
    weight_dtype: TorchDTypeName = "bfloat16"  # autoencoder dtype (later official versions: float32)
    scale_factor: PositiveFloat = 0.41407  # latent scaling: z_model = z_ae * scale_factor
    vae_latent_dim: PositiveInt = 32  # latent channels C_z
    vae_downsample_rate: PositiveInt = 32  # spatial compression f (pixels per latent side)
    sample_posterior: bool = True  # sample (vs mean) when encoding; compatibility (DC-AE is deterministic)


class TextEncoderConfig(BaseModel):
    """`text_encoder:` section: the caption encoder and CHI (spec §5)."""

    model_config = _FROZEN

    text_encoder_name: str = "gemma-2-2b-it"  # key of TEXT_ENCODER_IDS, else a hub id or local path
    caption_channels: PositiveInt = 2304  # D_txt, hidden size of the encoder
    y_norm: bool = True  # RMSNorm on the projected caption (spec §5.5)
    y_norm_scale_factor: float = 1.0  # initial weight of that RMSNorm (YAMLs: 0.01)
    model_max_length: PositiveInt = 300  # caption tokens fed to the DiT
    chi_prompt: list[str] = []  # complex human instruction lines, joined with "\n" (spec §5.2)
    skip_layers: NonNegativeInt = 0  # 0: the LLM's final hidden state (Sana); k: the one k blocks earlier, no norm


class SchedulerConfig(BaseModel):
    """`scheduler:` section: flow matching and the validation sampler (spec §4, §7)."""

    model_config = _FROZEN

    train_sampling_steps: PositiveInt = 1000  # discrete training timesteps
    predict_flow_v: bool = True  # predict the flow velocity v = eps - x0 (older YAMLs: `predict_v`)
    noise_schedule: str = "linear_flow"  # "linear_flow" for Sana
    pred_sigma: bool = False  # learned variance output channels (off for Sana)
    learn_sigma: bool = True  # learned variance loss, only with pred_sigma; compatibility
    vis_sampler: VisSampler = "flow_dpm-solver"  # sampler for validation images
    flow_shift: PositiveFloat = 1.0  # timestep shift s (YAMLs: 3.0, 4.0 for 0.6B-1024, 6.0 for 4K)
    weighting_scheme: str | None = "logit_normal"  # training timestep density; None = uniform
    logit_mean: float = 0.0  # mean of the logit-normal timestep density
    logit_std: PositiveFloat = 1.0  # std of the logit-normal timestep density

    @model_validator(mode="before")
    @classmethod
    def _rename_predict_v(cls, data: Any) -> Any:
        # `predict_v` is the older name of `predict_flow_v` (the Sana-1.5 4.8B YAML still writes it).
        if isinstance(data, Mapping) and "predict_v" in data:
            data = dict(data)
            old = data.pop("predict_v")
            if data.setdefault("predict_flow_v", old) != old:
                raise ValueError("predict_v (old name) and predict_flow_v disagree; give only predict_flow_v")
        return data


class OptimizerConfig(BaseModel):
    """`train.optimizer:` keyword arguments of the optimizer (spec §7.4)."""

    model_config = _FROZEN

    type: str = "AdamW"  # AdamW, CAMEWrapper, CAME8BitWrapper, AdamW8bit
    lr: PositiveFloat = 1e-4  # base learning rate (before the auto_lr rule)
    betas: list[float] | None = None  # (b1, b2) for AdamW, (b1, b2, b3) for CAME; None = optimizer default
    eps: float | list[float] = 1e-10  # AdamW eps, or CAME's (eps1, eps2)
    weight_decay: NonNegativeFloat = 0.03  # decoupled weight decay
    block_size: PositiveInt | None = None  # CAME8bit: quantisation block length along dim 0
    min_8bit_size: PositiveInt | None = None  # CAME8bit: tensors with more elements are stored 8-bit


class TrainingConfig(BaseModel):
    """`train:` section: the training loop (spec §7). Unused by inference."""

    model_config = _FROZEN

    num_workers: NonNegativeInt = 4  # data-loader worker processes
    seed: int = 43  # base seed (each process adds its rank)
    train_batch_size: PositiveInt = 32  # images per GPU per step
    num_epochs: PositiveInt = 100  # passes over the data
    gradient_accumulation_steps: PositiveInt = 1  # micro-batches per optimizer step
    grad_checkpointing: bool = False  # recompute block activations in backward
    gradient_clip: PositiveFloat = 1.0  # global grad-norm clip (YAMLs: 0.1)
    gc_step: PositiveInt = 1  # checkpoint every gc_step-th block
    optimizer: OptimizerConfig = OptimizerConfig()  # see OptimizerConfig
    load_from_optimizer: bool = False  # with model.load_from, also load the optimizer; compatibility
    load_from_lr_scheduler: bool = False  # with model.load_from, also load the LR scheduler; compatibility
    resume_lr_scheduler: bool = True  # Sana-1.5 YAMLs; compatibility
    lr_schedule: str = "constant"  # constant, cosine, cosine_decay_to_constant (all with linear warmup)
    lr_schedule_args: dict[str, int | float] = {"num_warmup_steps": 500}  # optimizer steps
    auto_lr: dict[str, str] | None = {"rule": "sqrt"}  # lr *= sqrt(global_batch / 256); None = off
    ema_rate: float = 0.9999  # EMA decay; compatibility (no EMA in the Sana loop)
    eval_batch_size: PositiveInt = 16  # validation batch
    use_fsdp: bool = False  # FSDP instead of DDP
    use_flash_attn: bool = False  # compatibility
    eval_sampling_steps: PositiveInt = 250  # steps between validation images
    lora_rank: PositiveInt = 4  # compatibility
    log_interval: PositiveInt = 50  # steps between log lines
    mask_type: str = "null"  # compatibility
    mask_loss_coef: float = 0.0  # compatibility
    load_mask_index: bool = False  # compatibility
    snr_loss: bool = False  # SNR loss weighting (off for Sana)
    real_prompt_ratio: float = 1.0  # compatibility
    training_hours: PositiveFloat = 10000.0  # h, wall-clock budget
    save_image_epochs: PositiveInt = 1  # compatibility
    save_model_epochs: PositiveInt = 1  # epochs between checkpoints
    save_model_steps: PositiveInt = 1_000_000  # steps between checkpoints
    visualize: bool = False  # write validation images
    null_embed_root: str = "output/pretrained_models/"  # cache dir of the empty-caption embedding
    valid_prompt_embed_root: str = "output/tmp_embed/"  # cache dir of the validation prompt embeddings
    validation_prompts: list[str] = [
        "dog",
        "portrait photo of a girl, photograph, highly detailed face, depth of field",
        "Self-portrait oil painting, a beautiful cyborg with golden hair, 8k",
        "Astronaut in a jungle, cold color palette, muted colors, detailed, 8k",
        "A photo of beautiful mountain with realistic sunset and blue lake, highly detailed, masterpiece",
    ]
    local_save_vis: bool = False  # also save validation images under work_dir/log_vis
    deterministic_validation: bool = True  # fixed validation noise
    online_metric: bool = False  # compatibility
    eval_metric_step: PositiveInt = 5000  # compatibility
    online_metric_dir: str = "metric_helper"  # compatibility
    work_dir: str = "/cache/exps/"  # compatibility (the top-level work_dir is the one used)
    skip_step: NonNegativeInt = 0  # steps to skip when resuming mid-epoch
    loss_type: str = "huber"  # LCM distillation only; compatibility
    huber_c: float = 0.001  # LCM only; compatibility
    num_ddim_timesteps: PositiveInt = 50  # LCM only; compatibility
    w_max: float = 15.0  # LCM only; compatibility
    w_min: float = 3.0  # LCM only; compatibility
    ema_decay: float = 0.95  # LCM only; compatibility
    debug_nan: bool = False  # register overflow hooks
    use_lora: bool = False  # ours: train LoRA adapters of rank lora_rank on the transformer instead of all weights
    # Ours, not in the official schema:
    max_steps: PositiveInt | None = None  # stop after this many optimizer steps (None: num_epochs decides)
    keep_last_checkpoints: PositiveInt = 3  # older checkpoints are deleted once a newer one is complete
    max_nan_steps: PositiveInt = 20  # abort after this many non-finite losses in a row (skipped steps)
    use_ema: bool = False  # keep an EMA of the transformer weights (decay ema_rate), saved with checkpoints
    validation_sampling_steps: PositiveInt = 20  # solver steps of the validation images


class SanaConfig(BaseModel):
    """A whole Sana run: the six sections plus run-level fields (spec §3.14-3.15)."""

    model_config = _FROZEN

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    vae: AEConfig = AEConfig()
    text_encoder: TextEncoderConfig = TextEncoderConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    train: TrainingConfig = TrainingConfig()
    work_dir: str = "output/"  # run directory (checkpoints, logs, visualisations)
    resume_from: str | None = None  # checkpoint path or "latest" (CLI-level twin of model.resume_from)
    load_from: str | None = None  # weights to start from (CLI-level twin of model.load_from)
    debug: bool = False  # small, verbose run
    caching: bool = False  # precompute the bucket sampler cache
    report_to: str = "wandb"  # wandb or tensorboard
    tracker_project_name: str = "t2i-evit-baseline"  # tracker project
    name: str = "baseline"  # run name
    loss_report_name: str = "loss"  # metric name of the loss

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        # An empty YAML section (`vae:` with nothing under it) reads as None: treat it as all defaults.
        if isinstance(data, Mapping):
            data = {k: ({} if v is None and k in _SECTIONS else v) for k, v in data.items()}
        return data


_SECTIONS = ("data", "model", "vae", "text_encoder", "scheduler", "train")
_RENAMED_KEYS = {"scheduler.predict_v": "scheduler.predict_flow_v"}  # old official name -> field


# ---------------------------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: Sequence[str] | Mapping[str, Any] = ()) -> SanaConfig:
    """Read a Sana YAML (or all defaults when `path` is None), apply overrides, validate.

    `path`: a file; a relative `configs/...` or `sana_config/...` path that does not exist falls back to the
    copy packaged in `sana/configs/`. `overrides`: argv-style strings (`["--train.train_batch_size=32",
    "--model.multi_scale", "false"]`, every token must be an override) or a mapping `{"train.seed": 3}`.
    Raises `ConfigError` naming the file, line or dotted key.
    """
    tree = _rename_old_keys(_read_yaml(path)) if path is not None else {}
    if isinstance(overrides, Mapping):
        pairs = dict(overrides)
    else:
        if isinstance(overrides, str):
            raise ConfigError(f"overrides must be a list of strings or a mapping, got the string {overrides!r}")
        pairs, rest = parse_overrides(overrides)
        for token in rest:  # `--trian.seed=1`: report the unknown key, not just a malformed token
            if token.startswith("--") and len(token) > 2:
                check_key(SanaConfig, token[2:].split("=", 1)[0])
        if rest:
            raise ConfigError(f"malformed override(s) {rest}: expected --section.key=value or --section.key value")
    for key, value in pairs.items():
        if not isinstance(key, str):
            raise ConfigError(f"override keys must be dotted strings, got {key!r}")
        check_key_syntax(key, key)
        key = _RENAMED_KEYS.get(key, key)
        check_key(SanaConfig, key)
        set_dotted(tree, key, value)
    try:
        return SanaConfig.model_validate(tree)
    except ValidationError as exc:
        raise translate_errors(SanaConfig, exc, where=str(path) if path is not None else "<defaults>") from None


def parse_overrides(argv: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """Split CLI `argv` into config overrides and the other arguments (for the `sana` command's argparse).

    Contract:
    - An override token is `--KEY=VALUE` or `--KEY VALUE`, where the first dot-component of KEY is a
      SanaConfig section (`data`, `model`, `vae`, `text_encoder`, `scheduler`, `train`) or a top-level field
      (`work_dir`, `resume_from`, `load_from`, `debug`, `caching`, `report_to`, `tracker_project_name`,
      `name`, `loss_report_name`). So other CLI flags must not use those names.
    - Returns `({"train.train_batch_size": 32, ...}, [every other token, in order])`. Values are parsed
      (`parse_value`): YAML scalars, `null`/`None`, booleans true/false/yes/no/1/0, and bracketed lists with
      quoted or bare items (`[a,b]`, `"[asset/example_data]"`). Keys are NOT checked here; `load_config`
      checks them against the schema. `--KEY` without a value raises `ConfigError`.
    """
    return parse_override_args(argv, _ROOTS)


def _rename_old_keys(tree: dict[str, Any]) -> dict[str, Any]:
    """Move old official key names to their fields first, so an override of either name wins over the file."""
    for old, new in _RENAMED_KEYS.items():
        section_name, old_leaf = old.split(".")
        new_leaf = new.split(".")[1]
        section = tree.get(section_name)
        if isinstance(section, dict) and old_leaf in section and new_leaf not in section:
            section[new_leaf] = section.pop(old_leaf)
    return tree


def _read_yaml(path: str | Path) -> dict[str, Any]:
    source, text = _locate(path)
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f", line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or exc
        raise ConfigError(f"YAML syntax error in {source}{line}: {problem}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {source} must hold a mapping of sections, got {type(tree).__name__}")
    return tree


def _locate(path: str | Path) -> tuple[str, str]:
    """(display name, text) of `path`, else of the packaged copy of a `configs/...` path."""
    local = Path(path).expanduser()
    if local.is_file():
        return str(local), local.read_text(encoding="utf-8")
    packaged = _packaged(local)
    if packaged is not None and packaged.is_file():
        return f"{path} (packaged sana/configs)", packaged.read_text(encoding="utf-8")
    hint = "" if local.is_absolute() else f"; packaged configs: {packaged_configs()}"
    raise ConfigError(f"config file not found: {str(path)!r} (cwd {os.getcwd()}){hint}")


def _packaged(path: Path) -> Traversable | None:
    parts = path.parts
    if path.is_absolute() or not parts:
        return None
    if parts[0] == "configs":
        parts = parts[1:]
    elif not parts[0].startswith("sana"):  # sana_config/, sana1-5_config/, sana_app_config/
        return None
    return resources.files("sana").joinpath("configs", *parts) if parts else None


def packaged_configs() -> list[str]:
    """Paths (`configs/...`) of the YAML files shipped inside the package, sorted."""
    found: list[str] = []

    def walk(node: Traversable, prefix: str) -> None:
        for child in node.iterdir():
            name = f"{prefix}/{child.name}"
            if child.is_dir():
                walk(child, name)
            elif child.name.endswith((".yaml", ".yml")):
                found.append(name)

    walk(resources.files("sana").joinpath("configs"), "configs")
    return sorted(found)


_ROOTS = frozenset(SanaConfig.model_fields)


# ------------------------------------------------------------------------------------------ writing


def dump_config(cfg: SanaConfig) -> str:
    """YAML text of the fully resolved config (every field, defaults included), for `--print-config`."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True, width=1000)


def save_config(cfg: SanaConfig, path: str | Path) -> Path:
    """Write `dump_config(cfg)` to `path` atomically (temp file in the same folder, then rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(target, "w", encoding="utf-8") as f:
        f.write(dump_config(cfg))
    return target


# ------------------------------------------------------------------------------- pipeline helpers

# Official `text_encoder_name` -> hub id (as in the official text-encoder builder). Other values are
# a hub id or local path for the caller to load as is.
TEXT_ENCODER_IDS: dict[str, str] = {
    "T5": "DeepFloyd/t5-v1_1-xxl",
    "T5-small": "google/t5-v1_1-small",
    "T5-base": "google/t5-v1_1-base",
    "T5-large": "google/t5-v1_1-large",
    "T5-xl": "google/t5-v1_1-xl",
    "T5-xxl": "google/t5-v1_1-xxl",
    "gemma-2b": "google/gemma-2b",
    "gemma-2b-it": "google/gemma-2b-it",
    "gemma-2-2b": "google/gemma-2-2b",
    "gemma-2-2b-it": "Efficient-Large-Model/gemma-2-2b-it",
    "gemma-2-9b": "google/gemma-2-9b",
    "gemma-2-9b-it": "google/gemma-2-9b-it",
    "Qwen2-0.5B-Instruct": "Qwen/Qwen2-0.5B-Instruct",
    "Qwen2-1.5B-Instruct": "Qwen/Qwen2-1.5B-Instruct",
}

# Official model name -> linear_dit preset. The non-MS names build the same blocks (fixed square size).
MODEL_PRESETS: dict[str, str] = {
    "SanaMS_600M_P1_D28": "sana-600m",
    "SanaMS_600M_P2_D28": "sana-600m",
    "SanaMS_600M_P4_D28": "sana-600m",
    "Sana_600M_P1_D28": "sana-600m",
    "SanaMS_1600M_P1_D20": "sana-1600m",
    "SanaMS_1600M_P2_D20": "sana-1600m",
    "Sana_1600M_P1_D20": "sana-1600m",
    "SanaMS_4800M_P1_D60": "sana-1.5-4800m",
    "SanaShapes_P1_D8": "sana-shapes",  # ours: the embedded default model (sana.embedded)
}
_PATCH_SIZES: dict[str, int] = {"SanaMS_600M_P2_D28": 2, "SanaMS_600M_P4_D28": 4, "SanaMS_1600M_P2_D20": 2}

_TORCH_DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
_DTYPE_NAMES: dict[str, Literal["float16", "bfloat16", "float32"]] = {
    "fp16": "float16",
    "bf16": "bfloat16",
    "fp32": "float32",
}
_BUILT_MLP_ACTS = ["silu", "silu", None]


def weight_dtype(cfg: SanaConfig) -> torch.dtype:
    """torch dtype of `model.mixed_precision` (fp16 -> float16, bf16 -> bfloat16, fp32 -> float32)."""
    return _TORCH_DTYPES[cfg.model.mixed_precision]


def bucket_table_name(cfg: SanaConfig) -> str:
    """Aspect-ratio table size from `model.aspect_ratio_type`: "ASPECT_RATIO_1024" -> "1024"."""
    return cfg.model.aspect_ratio_type.removeprefix("ASPECT_RATIO_")


def dit_config(cfg: SanaConfig) -> LinearDiTConfig:
    """The `linear_dit` architecture described by `cfg`: the preset of `model.model`, then the config's fields.

    Raises `ConfigError` for an unknown model name or a variant linear_dit does not build
    (attn_type, ffn_type, mlp_acts, micro_condition, y_norm).
    """
    m, te = cfg.model, cfg.text_encoder
    if m.model not in MODEL_PRESETS:
        raise ConfigError(f"config key 'model.model': unknown model {m.model!r}; valid: {sorted(MODEL_PRESETS)}")
    unsupported = {
        "model.attn_type": (m.attn_type, "linear"),
        "model.ffn_type": (m.ffn_type, "glumbconv"),
        "model.mlp_acts": (m.mlp_acts, _BUILT_MLP_ACTS),
        "model.micro_condition": (m.micro_condition, False),
        "text_encoder.y_norm": (te.y_norm, True),
    }
    for key, (value, built) in unsupported.items():
        if value != built:
            raise ConfigError(f"config key {key!r}: linear_dit builds only {built!r}, got {value!r}")
    patch = _PATCH_SIZES.get(m.model, 1)
    base = get_preset(MODEL_PRESETS[m.model])
    pe: dict[str, Any] = {"pos_embed": "none"}
    if m.use_pe:  # spec §3.4: base grid = (image_size / f) / patch tokens
        grid = m.image_size // cfg.vae.vae_downsample_rate // patch
        pe = {"pos_embed": "sincos", "pe_base_size": grid, "pe_interpolation": m.pe_interpolation}
    width, heads = base.hidden_size, base.cross_attention_heads
    if m.hidden_size:  # a model built at another width: its heads from the config (a `load_from` keeps its own)
        width, heads = m.hidden_size, m.cross_attention_heads or heads
    if width % m.linear_head_dim or width % heads:
        raise ConfigError(
            f"config keys 'model.hidden_size' / 'model.cross_attention_heads': width {width} must be a multiple of "
            f"model.linear_head_dim ({m.linear_head_dim}) and of the cross-attention heads ({heads})"
        )
    return dataclasses.replace(
        base,
        hidden_size=width,
        depth=m.depth or base.depth,
        cross_attention_heads=heads,
        in_channels=cfg.vae.vae_latent_dim,
        patch_size=patch,
        linear_head_dim=m.linear_head_dim,
        mlp_ratio=m.mlp_ratio,
        qk_norm=m.qk_norm,
        cross_norm=m.cross_norm,
        caption_channels=te.caption_channels,
        text_length=te.model_max_length,
        y_norm_scale=te.y_norm_scale_factor,
        pag_layers=tuple(m.pag_applied_layers),
        trained_dtype=_DTYPE_NAMES[m.mixed_precision],
        **pe,
    )
