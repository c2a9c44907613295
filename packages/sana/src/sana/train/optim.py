"""Optimizers and learning-rate schedules of `sana train` (spec §7.4).

- `CAME`: Sana's `CAMEWrapper`, the Confidence-guided Adaptive Memory Efficient optimizer, exactly as spec §7.4.
  We implement it here rather than use the PyPI package `came-pytorch` (0.1.3): that package factors every tensor
  with two or more dims by its *last two* dims, so a (O, I, 3, 3) conv weight gets (O, I, 3) / (O, I, 1) statistics
  and a (O, I, 1, 1) 1×1 conv is factored over its two unit dims. Sana's CAMEWrapper factors only 2-D tensors
  (Linear weights, the (6, C) scale-shift tables, 2-D embedding tables) and 1×1 conv weights viewed as (out, in);
  everything else (biases, norms, depthwise and 3×3 convs, (1, N, C) position embeddings, 1-D) keeps a full
  second moment. No bias correction; all maths in fp32 whatever the parameter dtype.
- `CAME8bit`: Sana-1.5's `CAME8BitWrapper`: the same algorithm with the first moment of large Linear / 1×1-conv
  tensors stored 8-bit, block-wise min-max quantised, re-quantised every step.
- `build_optimizer`: the config's `train.optimizer.type` (a dict literal of the official names) to an optimizer,
  with the `auto_lr` rule applied explicitly (`auto_lr_scale`).
- `build_lr_scheduler`: constant / cosine / cosine-decay-to-constant with linear warmup, as plain `LambdaLR`s so
  their `state_dict` round-trips.

Shapes: a factored parameter is viewed as a matrix (O, I) = (shape[0], shape[1]); its statistics are a row vector
(O,) and a column vector (I,). Both optimizers' `state_dict()` / `load_state_dict()` round-trip bit-exactly
(fp32 statistics of bf16 parameters stay fp32, 8-bit codes stay uint8), which the exact resume of a run needs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR

if TYPE_CHECKING:
    from sana.config import OptimizerConfig

_LOG = logging.getLogger(__name__)

CAME_BETAS = (0.9, 0.999, 0.9999)  # (β1 first moment, β2 squared gradient, β3 instability)
CAME_EPS = (1e-30, 1e-16)  # (ε1 added to g², ε2 added to the instability)
CAME_CLIP_THRESHOLD = 1.0  # update RMS clip
DEFAULT_BLOCK_SIZE = 2048  # CAME8bit: elements per quantisation block
DEFAULT_MIN_8BIT_SIZE = 16384  # CAME8bit: only tensors with more elements are stored 8-bit
AUTO_LR_BASE_BATCH = 256  # the auto_lr rules scale lr by (a function of) global_batch / 256
COSINE_DECAY_FRACTION = 0.667  # cosine_decay_to_constant: the cosine spans this fraction of total_steps (Sana)
COSINE_CYCLES = 0.5  # cosine schedules: half a cosine period, 1 -> minimum
_UINT8_MAX = 255  # the largest uint8 code of the min-max quantiser
_QUANT_SUFFIXES = ("_scale", "_min")  # per-block fp32 side tensors of an 8-bit moment
_QUANT_LAYOUTS = ("flat", "dim0")  # CAME8bit block layouts (see CAME8bit)


# --- CAME ---------------------------------------------------------------------------------------------------------


def is_factored(shape: Sequence[int]) -> bool:
    """Sana's CAMEWrapper rule: 2-D tensors and 1×1 conv weights (O, I, 1, 1) get factored statistics."""
    if len(shape) == 2:
        return True
    return len(shape) == 4 and shape[2] == 1 and shape[3] == 1


def _rms(tensor: Tensor) -> Tensor:
    return tensor.norm(2) / math.sqrt(tensor.numel())


def _approx_rsqrt(row: Tensor, col: Tensor) -> Tensor:
    """rsqrt(R / mean(R)) ⊗ rsqrt(C): (O,), (I,) -> (O, I), the factored inverse square root (§7.4)."""
    r_factor = (row / row.mean()).rsqrt_().unsqueeze(-1)  # (O, 1)
    c_factor = col.rsqrt().unsqueeze(0)  # (1, I)
    return r_factor * c_factor


def _check_range(name: str, value: float, low: float, high: float | None = None, *, open_high: bool = True) -> None:
    ok = math.isfinite(value) and value >= low and (high is None or (value < high if open_high else value <= high))
    if not ok:
        bound = "" if high is None else (f" and < {high}" if open_high else f" and <= {high}")
        raise ValueError(f"{name} must be a finite number >= {low}{bound}, got {value!r}")


def _came_defaults(
    lr: float, betas: Sequence[float], eps: Sequence[float], clip_threshold: float, weight_decay: float
) -> dict[str, Any]:
    """Validate CAME's hyper-parameters; returns the `defaults` dict of the optimizer."""
    _check_range("lr", lr, 0.0)
    if isinstance(betas, str) or len(betas) != len(CAME_BETAS):
        raise ValueError(f"betas must be 3 floats (beta1, beta2, beta3) in [0, 1), got {betas!r}")
    for i, beta in enumerate(betas):
        _check_range(f"betas[{i}]", beta, 0.0, 1.0)
    if isinstance(eps, (str, float, int)) or len(eps) != len(CAME_EPS):
        raise ValueError(f"eps must be 2 floats (eps1, eps2) >= 0, got {eps!r}")
    for i, value in enumerate(eps):
        _check_range(f"eps[{i}]", value, 0.0)
    if not (math.isfinite(clip_threshold) and clip_threshold > 0):
        raise ValueError(f"clip_threshold must be a finite number > 0, got {clip_threshold!r}")
    _check_range("weight_decay", weight_decay, 0.0)
    return {
        "lr": float(lr),
        "betas": tuple(float(b) for b in betas),
        "eps": tuple(float(e) for e in eps),
        "clip_threshold": float(clip_threshold),
        "weight_decay": float(weight_decay),
    }


class CAME(torch.optim.Optimizer):
    """Sana's CAMEWrapper (spec §7.4); see the module docstring for the factoring rule.

    Args:
        params: parameters or param-group dicts, of any floating dtype (the maths runs in fp32 and the result is
            written back in the parameter's dtype, rounded once per step).
        lr: learning rate (>= 0).
        betas: (β1, β2, β3) for the first moment, the squared gradient and the instability, each in [0, 1).
        eps: (ε1, ε2) added to g² and to the instability.
        clip_threshold: the update is divided by max(1, RMS(update) / clip_threshold).
        weight_decay: decoupled: p <- p - lr · weight_decay · p before the update.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-4,
        betas: Sequence[float] = CAME_BETAS,
        eps: Sequence[float] = CAME_EPS,
        clip_threshold: float = CAME_CLIP_THRESHOLD,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, _came_defaults(lr, betas, eps, clip_threshold, weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One CAME step for every parameter with a gradient; returns the closure's loss (or None)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise TypeError(f"{type(self).__name__} does not support sparse gradients (param {tuple(p.shape)})")
                self._step_param(p, group)
        return loss

    def _step_param(self, p: Tensor, group: dict[str, Any]) -> None:
        beta1 = group["betas"][0]
        factored = is_factored(p.shape)
        work_shape = (p.shape[0], p.shape[1]) if factored else p.shape  # (O, I) view of a Linear / 1×1 conv
        # why fp32: CAME's statistics (g² + 1e-30, rsqrt) underflow / lose precision in bf16 and fp16
        grad = p.grad.float().reshape(work_shape)
        state = self.state[p]
        if not state:
            self._init_state(state, p, group, factored)
        state["step"] += 1
        if factored:
            update = self._factored_direction(grad, state, group)
        else:
            update = self._full_direction(grad, p, state, group)
        update.div_((_rms(update) / group["clip_threshold"]).clamp_(min=1.0))
        exp_avg = self._load_moment(state, "exp_avg", p, group).view(work_shape)
        exp_avg.mul_(beta1).add_(update, alpha=1.0 - beta1)
        self._store_moment(state, "exp_avg", exp_avg, p, group)
        update = self._confident_update(update, exp_avg, state, group) if factored else exp_avg
        self._apply_update(p, update.view(p.shape), group)

    def _init_state(self, state: dict[str, Any], p: Tensor, group: dict[str, Any], factored: bool) -> None:
        state["step"] = 0
        self._init_moment(state, "exp_avg", p, group)
        if not factored:
            self._init_moment(state, "exp_avg_sq", p, group)
            return
        rows, cols = p.shape[0], p.shape[1]  # (O,) and (I,) statistics of g² and of the instability
        for key, size in (("exp_avg_sq_row", rows), ("exp_avg_sq_col", cols)):
            state[key] = torch.zeros(size, dtype=torch.float32, device=p.device)
            state[key.replace("_sq_", "_res_")] = torch.zeros(size, dtype=torch.float32, device=p.device)

    def _factored_direction(self, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> Tensor:
        """(O, I) gradient -> approx_rsqrt(R, C) · g after updating the row/column statistics of g² + ε1."""
        beta2 = group["betas"][1]
        u = grad * grad + group["eps"][0]
        state["exp_avg_sq_row"].mul_(beta2).add_(u.mean(dim=1), alpha=1.0 - beta2)  # (O,): mean over inputs
        state["exp_avg_sq_col"].mul_(beta2).add_(u.mean(dim=0), alpha=1.0 - beta2)  # (I,): mean over outputs
        return _approx_rsqrt(state["exp_avg_sq_row"], state["exp_avg_sq_col"]).mul_(grad)

    def _full_direction(self, grad: Tensor, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> Tensor:
        """Non-factored: V <- β2 V + (1 - β2)(g² + ε1); the direction is g · rsqrt(V)."""
        beta2 = group["betas"][1]
        exp_avg_sq = self._load_moment(state, "exp_avg_sq", p, group)
        exp_avg_sq.mul_(beta2).add_(grad * grad + group["eps"][0], alpha=1.0 - beta2)
        self._store_moment(state, "exp_avg_sq", exp_avg_sq, p, group)
        return exp_avg_sq.rsqrt().mul_(grad)

    def _confident_update(
        self, update: Tensor, exp_avg: Tensor, state: dict[str, Any], group: dict[str, Any]
    ) -> Tensor:
        """Factored: the instability (update - m)² + ε2 gets β3 row/column statistics; returns approx_rsqrt · m."""
        beta3 = group["betas"][2]
        res = (update - exp_avg) ** 2 + group["eps"][1]
        state["exp_avg_res_row"].mul_(beta3).add_(res.mean(dim=1), alpha=1.0 - beta3)
        state["exp_avg_res_col"].mul_(beta3).add_(res.mean(dim=0), alpha=1.0 - beta3)
        return _approx_rsqrt(state["exp_avg_res_row"], state["exp_avg_res_col"]).mul_(exp_avg)

    @staticmethod
    def _apply_update(p: Tensor, update: Tensor, group: dict[str, Any]) -> None:
        """p <- p - lr·wd·p; p <- p - lr·update, in fp32, written back once in the parameter's dtype."""
        lr, weight_decay = group["lr"], group["weight_decay"]
        # why fp32: a bf16 parameter would round the weight decay and the update separately
        target = p if p.dtype == torch.float32 else p.float()
        if weight_decay != 0:
            target.add_(target, alpha=-weight_decay * lr)
        target.sub_(update * lr)
        if target is not p:
            p.copy_(target)

    # Moment storage: fp32 tensors in the parameter's shape; CAME8bit overrides these three for 8-bit storage.
    def _init_moment(self, state: dict[str, Any], key: str, p: Tensor, group: dict[str, Any]) -> None:
        state[key] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)

    def _load_moment(self, state: dict[str, Any], key: str, p: Tensor, group: dict[str, Any]) -> Tensor:
        return state[key]  # updated in place: nothing to store back

    def _store_moment(self, state: dict[str, Any], key: str, value: Tensor, p: Tensor, group: dict[str, Any]) -> None:
        return None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load like `torch.optim.Optimizer`, but keep each state tensor's saved dtype.

        torch casts floating state to the parameter's dtype (fp32 statistics of a bf16 parameter would be rounded
        to bf16) and would turn uint8 codes into floats; here every state tensor comes back exactly as saved,
        moved to its parameter's device.
        """
        super().load_state_dict(state_dict)  # validates the groups, restores hyper-parameters
        saved_ids = [pid for group in state_dict["param_groups"] for pid in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        saved_state = state_dict["state"]
        for pid, p in zip(saved_ids, params, strict=True):
            if pid in saved_state:
                self.state[p] = {
                    key: value.to(device=p.device, copy=True) if isinstance(value, Tensor) else value
                    for key, value in saved_state[pid].items()
                }


# --- CAME8bit -----------------------------------------------------------------------------------------------------


def quantize_blockwise(x: Tensor, block_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Block-wise min-max 8-bit quantisation: x (any shape) -> (codes uint8 (n,), scale (nb,), min (nb,)).

    x is flattened and cut into nb = ceil(n / block_size) blocks; each block stores round((x - min) / scale) with
    scale = (max - min) / 255 (a constant block, scale 0, gets code 0).
    """
    flat = x.reshape(-1)
    n = flat.numel()
    block_size = min(block_size, n)  # a tensor smaller than one block is one block, unpadded
    n_blocks = -(-n // block_size)
    padded = torch.cat([flat, flat[-1:].expand(n_blocks * block_size - n)])  # pad with a value already present
    blocks = padded.view(n_blocks, block_size)  # (nb, block_size)
    block_min = blocks.amin(dim=1)
    scale = (blocks.amax(dim=1) - block_min) / _UINT8_MAX
    safe_scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = ((blocks - block_min[:, None]) / safe_scale[:, None]).round_().clamp_(0, _UINT8_MAX)
    return codes.to(torch.uint8).reshape(-1)[:n].clone(), scale, block_min


def dequantize_blockwise(
    codes: Tensor, scale: Tensor, block_min: Tensor, shape: Sequence[int], block_size: int
) -> Tensor:
    """Inverse of `quantize_blockwise` (same `block_size`): codes · scale + min per block, as fp32 in `shape`."""
    n = codes.numel()
    block_size = min(block_size, n)
    padded = torch.zeros(scale.numel() * block_size, dtype=torch.uint8, device=codes.device)
    padded[:n] = codes
    # why fp32: the moment is updated in fp32 between the 8-bit round trips
    values = padded.view(-1, block_size).float() * scale[:, None] + block_min[:, None]  # (nb, block_size)
    return values.reshape(-1)[:n].view(tuple(shape))


class CAME8bit(CAME):
    """Sana-1.5's CAME8BitWrapper (spec §7.4): CAME with 8-bit first moments for large Linear / 1×1-conv tensors.

    A factored parameter with more than `min_8bit_size` elements keeps its first moment m as uint8 codes plus
    per-block fp32 scale and min (`quantize_blockwise`); each step dequantises m, updates it in fp32, uses the fp32
    value for this step's update and stores it re-quantised. Row/column statistics stay fp32; the second moment V
    exists only for non-factored tensors, which are never quantised (as in Sana). State keys of a quantised m:
    `exp_avg` (uint8, flat), `exp_avg_scale`, `exp_avg_min` (fp32, one per block).

    Args:
        block_size: block length. With `block_layout="dim0"` (default, the official code's `tensor.split(block_size)`,
            bit-identical to it) a block is `block_size` rows along dim 0: one scale for up to 2048 whole rows. With
            `"flat"` a block is `block_size` consecutive elements of the flattened tensor: finer, more accurate.
        min_8bit_size: only tensors with more elements are stored 8-bit.
        Others: as `CAME`.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-4,
        betas: Sequence[float] = CAME_BETAS,
        eps: Sequence[float] = CAME_EPS,
        clip_threshold: float = CAME_CLIP_THRESHOLD,
        weight_decay: float = 0.0,
        block_size: int = DEFAULT_BLOCK_SIZE,
        min_8bit_size: int = DEFAULT_MIN_8BIT_SIZE,
        block_layout: str = "dim0",
    ) -> None:
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
        if isinstance(min_8bit_size, bool) or not isinstance(min_8bit_size, int) or min_8bit_size < 0:
            raise ValueError(f"min_8bit_size must be an int >= 0, got {min_8bit_size!r}")
        if block_layout not in _QUANT_LAYOUTS:
            raise ValueError(f"block_layout must be one of {_QUANT_LAYOUTS}, got {block_layout!r}")
        defaults = _came_defaults(lr, betas, eps, clip_threshold, weight_decay)
        defaults.update(block_size=block_size, min_8bit_size=min_8bit_size, block_layout=block_layout)
        torch.optim.Optimizer.__init__(self, params, defaults)  # CAME.__init__ would drop the 8-bit defaults

    @staticmethod
    def uses_8bit(p: Tensor, group: dict[str, Any]) -> bool:
        """Whether `p`'s first moment is stored 8-bit: a Linear / 1×1-conv tensor with > min_8bit_size elements."""
        return is_factored(p.shape) and p.shape[0] * p.shape[1] > group["min_8bit_size"]

    @staticmethod
    def _block_elements(p: Tensor, group: dict[str, Any]) -> int:
        if group["block_layout"] == "dim0":
            return group["block_size"] * (p.numel() // p.shape[0])  # block_size whole rows
        return group["block_size"]

    def _init_moment(self, state: dict[str, Any], key: str, p: Tensor, group: dict[str, Any]) -> None:
        super()._init_moment(state, key, p, group)
        self._store_moment(state, key, state[key], p, group)

    def _load_moment(self, state: dict[str, Any], key: str, p: Tensor, group: dict[str, Any]) -> Tensor:
        if state[key].dtype != torch.uint8:
            return state[key]
        scale, block_min = state[key + _QUANT_SUFFIXES[0]], state[key + _QUANT_SUFFIXES[1]]
        return dequantize_blockwise(state[key], scale, block_min, p.shape, self._block_elements(p, group))

    def _store_moment(self, state: dict[str, Any], key: str, value: Tensor, p: Tensor, group: dict[str, Any]) -> None:
        if self.uses_8bit(p, group):
            codes, scale, block_min = quantize_blockwise(value, self._block_elements(p, group))
            state[key], state[key + _QUANT_SUFFIXES[0]], state[key + _QUANT_SUFFIXES[1]] = codes, scale, block_min


# --- building from the config -------------------------------------------------------------------------------------

_AUTO_LR_RULES: dict[str, Callable[[float], float]] = {
    "sqrt": math.sqrt,  # the Sana default (spec §7.4 "LR scaling")
    "linear": lambda ratio: ratio,
}


def auto_lr_scale(global_batch: int, rule: str) -> float:
    """The `auto_lr` factor: sqrt(global_batch / 256) for "sqrt", global_batch / 256 for "linear".

    global_batch = per-GPU batch × world size × gradient accumulation steps.
    """
    if not isinstance(rule, str) or rule not in _AUTO_LR_RULES:  # a str, not the config's {"rule": ...} dict
        raise ValueError(f"train.auto_lr.rule must be one of {sorted(_AUTO_LR_RULES)}, got {rule!r}")
    if isinstance(global_batch, bool) or not isinstance(global_batch, int) or global_batch < 1:
        raise ValueError(f"global_batch must be an int >= 1 when train.auto_lr is set, got {global_batch!r}")
    return _AUTO_LR_RULES[rule](global_batch / AUTO_LR_BASE_BATCH)


def _betas(config: OptimizerConfig, count: int) -> dict[str, Any]:
    if config.betas is None:
        return {}
    if len(config.betas) != count:
        raise ValueError(f"train.optimizer.betas must have {count} values for {config.type}, got {config.betas!r}")
    return {"betas": tuple(config.betas)}


def _came_eps(config: OptimizerConfig) -> tuple[float, float]:
    if isinstance(config.eps, float) or len(config.eps) != len(CAME_EPS):
        raise ValueError(
            f"train.optimizer.eps must be a list of two floats [eps1, eps2] for {config.type} "
            f"(Sana: {list(CAME_EPS)}), got {config.eps!r}"
        )
    return (config.eps[0], config.eps[1])


def _reject_8bit_args(config: OptimizerConfig) -> None:
    for name, value in (("block_size", config.block_size), ("min_8bit_size", config.min_8bit_size)):
        if value is not None:
            raise ValueError(f"train.optimizer.{name} is only used by CAME8BitWrapper, not by {config.type}")


def _build_came(params: list[Any], config: OptimizerConfig, lr: float) -> torch.optim.Optimizer:
    _reject_8bit_args(config)
    return CAME(params, lr=lr, eps=_came_eps(config), weight_decay=config.weight_decay, **_betas(config, 3))


def _build_came8bit(params: list[Any], config: OptimizerConfig, lr: float) -> torch.optim.Optimizer:
    block_size = DEFAULT_BLOCK_SIZE if config.block_size is None else config.block_size
    min_8bit_size = DEFAULT_MIN_8BIT_SIZE if config.min_8bit_size is None else config.min_8bit_size
    return CAME8bit(
        params,
        lr=lr,
        eps=_came_eps(config),
        weight_decay=config.weight_decay,
        block_size=block_size,
        min_8bit_size=min_8bit_size,
        **_betas(config, 3),
    )


def _adamw_eps(config: OptimizerConfig) -> float:
    if not isinstance(config.eps, float):
        raise ValueError(f"train.optimizer.eps must be one float for {config.type} (e.g. 1e-8), got {config.eps!r}")
    return config.eps


def _build_adamw(params: list[Any], config: OptimizerConfig, lr: float) -> torch.optim.Optimizer:
    _reject_8bit_args(config)
    kwargs = _betas(config, 2)
    return torch.optim.AdamW(params, lr=lr, eps=_adamw_eps(config), weight_decay=config.weight_decay, **kwargs)


def _build_adamw8bit(params: list[Any], config: OptimizerConfig, lr: float) -> torch.optim.Optimizer:
    _reject_8bit_args(config)
    try:
        import bitsandbytes  # optional, CUDA-only dependency
    except ImportError as error:
        raise ImportError(
            f"train.optimizer.type={config.type!r} needs the 'bitsandbytes' package and a CUDA GPU "
            "(pip install bitsandbytes); use 'CAME8BitWrapper' or 'AdamW' otherwise"
        ) from error
    kwargs = _betas(config, 2)
    return bitsandbytes.optim.AdamW8bit(
        params, lr=lr, eps=_adamw_eps(config), weight_decay=config.weight_decay, **kwargs
    )


_OPTIMIZERS: dict[str, Callable[[list[Any], OptimizerConfig, float], torch.optim.Optimizer]] = {
    "CAMEWrapper": _build_came,
    "CAME8BitWrapper": _build_came8bit,
    "AdamW": _build_adamw,
    "AdamW8bit": _build_adamw8bit,
    "AdamW8bitWrapper": _build_adamw8bit,  # the official class name of the same optimizer
}
OPTIMIZER_TYPES = tuple(_OPTIMIZERS)  # the valid `train.optimizer.type` values


def build_optimizer(
    model_or_params: nn.Module | Iterable[Tensor] | Iterable[dict[str, Any]],
    optimizer_config: OptimizerConfig,
    *,
    global_batch: int | None = None,
    auto_lr: str | None = None,
) -> torch.optim.Optimizer:
    """The optimizer named by `optimizer_config.type` (`OPTIMIZER_TYPES`), over the trainable parameters.

    Args:
        model_or_params: a module (its parameters with requires_grad) or parameters / param-group dicts.
        optimizer_config: `train.optimizer` (type, lr, betas, eps, weight_decay, block_size, min_8bit_size).
        global_batch: per-GPU batch × world size × accumulation steps; needed when `auto_lr` is set.
        auto_lr: None (lr as configured) or a rule of `auto_lr_scale` ("sqrt": lr · sqrt(global_batch / 256)).

    Returns:
        The optimizer; its `param_groups[i]["lr"]` is the effective lr (also logged).
    """
    if optimizer_config.type not in _OPTIMIZERS:
        raise ValueError(f"train.optimizer.type must be one of {OPTIMIZER_TYPES}, got {optimizer_config.type!r}")
    lr = optimizer_config.lr
    if auto_lr is not None:
        if global_batch is None:
            raise ValueError("global_batch is required when auto_lr is set (train.auto_lr)")
        lr = lr * auto_lr_scale(global_batch, auto_lr)
        _LOG.info("auto_lr %s: lr %.6g -> %.6g (global batch %d)", auto_lr, optimizer_config.lr, lr, global_batch)
    if isinstance(model_or_params, nn.Module):
        params: list[Any] = [p for p in model_or_params.parameters() if p.requires_grad]
    else:
        params = list(model_or_params)
    if not params:
        raise ValueError("build_optimizer got no trainable parameters (all have requires_grad=False?)")
    optimizer = _OPTIMIZERS[optimizer_config.type](params, optimizer_config, lr)
    _LOG.info("optimizer %s, lr %.6g, %d param groups", optimizer_config.type, lr, len(optimizer.param_groups))
    return optimizer


# --- learning-rate schedules --------------------------------------------------------------------------------------


_LrLambda = Callable[[int], float]  # scheduler step -> lr factor


def _warmup(step: int, warmup_steps: int) -> float:
    return float(step) / float(max(1, warmup_steps))


def _constant(warmup_steps: int, total_steps: int, final_lr: float, num_decay: float, num_cycles: float) -> _LrLambda:
    """diffusers `get_constant_schedule_with_warmup`: linear 0 -> 1 over warmup_steps, then 1."""

    def lr_lambda(step: int) -> float:
        return _warmup(step, warmup_steps) if step < warmup_steps else 1.0

    return lr_lambda


def _cosine(warmup_steps: int, total_steps: int, final_lr: float, num_decay: float, num_cycles: float) -> _LrLambda:
    """diffusers `get_cosine_schedule_with_warmup`: warmup, then 0.5 (1 + cos(2π · num_cycles · progress))."""

    def lr_lambda(step: int) -> float:
        if step < warmup_steps:
            return _warmup(step, warmup_steps)
        progress = float(step - warmup_steps) / float(max(1, total_steps - warmup_steps))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * num_cycles * 2.0 * progress)))

    return lr_lambda


def _cosine_to_constant(
    warmup_steps: int, total_steps: int, final_lr: float, num_decay: float, num_cycles: float
) -> _LrLambda:
    """Sana's `get_cosine_decay_to_constant_with_warmup`: warmup, cosine from 1 to final_lr until
    int(total_steps · num_decay), then final_lr."""
    decay_steps = int(total_steps * num_decay)

    def lr_lambda(step: int) -> float:
        if step < warmup_steps:
            return _warmup(step, warmup_steps)
        if step > decay_steps:
            return final_lr
        progress = float(step - warmup_steps) / float(max(1, decay_steps - warmup_steps))
        cosine = max(0.0, 0.5 * (1.0 + math.cos(math.pi * num_cycles * 2.0 * progress)))
        return cosine * (1.0 - final_lr) + final_lr

    return lr_lambda


_SCHEDULES = {
    "constant": _constant,
    "cosine": _cosine,
    "cosine_decay_to_constant": _cosine_to_constant,
}
LR_SCHEDULES = tuple(_SCHEDULES)  # the valid `train.lr_schedule` values
_NEEDS_TOTAL = ("cosine", "cosine_decay_to_constant")


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str,
    *,
    warmup_steps: int,
    total_steps: int | None,
    final_lr: float = 0.0,
    num_decay: float = COSINE_DECAY_FRACTION,
    num_cycles: float = COSINE_CYCLES,
) -> LambdaLR:
    """A `LambdaLR` multiplying each group's lr by the schedule `name` (`LR_SCHEDULES`), linear warmup first.

    Steps count scheduler.step() calls: when the scheduler goes through `accelerator.prepare` (which steps it once
    per process), pass warmup_steps and total_steps multiplied by the number of processes, as Sana does.

    Args:
        warmup_steps: linear warmup 0 -> 1 (`train.lr_schedule_args.num_warmup_steps`).
        total_steps: total scheduler steps; required by the cosine schedules.
        final_lr: cosine_decay_to_constant: the final lr factor (Sana: 1 / auto_lr_scale, back to the base lr).
        num_decay: cosine_decay_to_constant: fraction of total_steps over which the cosine runs.
        num_cycles: cosine schedules: number of cosine periods (0.5 = one half-wave down to the minimum).
    """
    if name not in _SCHEDULES:
        raise ValueError(f"train.lr_schedule must be one of {LR_SCHEDULES}, got {name!r}")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(
            f"warmup_steps (train.lr_schedule_args.num_warmup_steps) must be an int >= 0, got {warmup_steps!r}"
        )
    if name in _NEEDS_TOTAL and (isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1):
        raise ValueError(f"total_steps must be an int >= 1 for the {name!r} schedule, got {total_steps!r}")
    _check_range("final_lr", final_lr, 0.0, 1.0, open_high=False)
    _check_range("num_decay", num_decay, 0.0, 1.0, open_high=False)
    if not (math.isfinite(num_cycles) and num_cycles > 0):
        raise ValueError(f"num_cycles must be a finite number > 0, got {num_cycles!r}")
    lr_lambda = _SCHEDULES[name](warmup_steps, total_steps or 0, final_lr, num_decay, num_cycles)
    return LambdaLR(optimizer, lr_lambda)


__all__ = (
    # optimizers
    "CAME",
    "CAME8bit",
    "is_factored",
    "quantize_blockwise",
    "dequantize_blockwise",
    # building from the config
    "build_optimizer",
    "auto_lr_scale",
    "OPTIMIZER_TYPES",
    # learning-rate schedules
    "build_lr_scheduler",
    "LR_SCHEDULES",
    # defaults
    "CAME_BETAS",
    "CAME_EPS",
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_MIN_8BIT_SIZE",
    "AUTO_LR_BASE_BATCH",
)
