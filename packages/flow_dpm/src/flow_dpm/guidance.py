"""Guidance as wrappers that return a new velocity field; the solver never sees text or guidance.

A *branch model* evaluates several conditionings in one batched call (Sana runs [uncond, cond] for CFG and
[uncond, cond, perturbed] for CFG+PAG in one forward):

    model(x, t, branches) -> v

with `x` (n*B, ...) and `t` (n*B,) the batch repeated once per requested branch, `branches` the tuple of branch
indices in that order, and `v` (n*B, ...) stacked the same way. The guided velocity is the linear combination
v = Σ_i w_i v_i with Σ_i w_i = 1 (CFG: w = [1 - s, s]); branches with weight 0 are not evaluated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from flow_dpm.solvers import VelocityField

BranchModel = Callable[[Tensor, Tensor, tuple[int, ...]], Tensor]


def guided(
    model: BranchModel,
    weights: Sequence[float],
    *,
    interval: tuple[float, float] = (0.0, 1.0),
    outside_branch: int | None = None,
) -> VelocityField:
    """Combine the branches of `model` into one velocity field, v = Σ_i weights[i] * v_i.

    Args:
        model: a branch model (module docstring).
        weights: one weight per branch; they must sum to 1 so that identical branches give the plain velocity.
        interval: guidance is applied for interval[0] <= t <= interval[1]; elsewhere only `outside_branch` runs.
        outside_branch: the branch used outside the interval (required when the interval is not [0, 1]).
    """
    w = [float(x) for x in weights]
    if not w or abs(sum(w) - 1.0) > 1e-6:
        raise ValueError(f"guidance weights must be non-empty and sum to 1, got {w}")
    lo, hi = interval
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"guidance interval must satisfy 0 <= lo <= hi <= 1, got {interval}")
    if (lo, hi) != (0.0, 1.0) and (outside_branch is None or not 0 <= outside_branch < len(w)):
        raise ValueError(f"outside_branch must be a branch index in [0, {len(w)}) when an interval is given")
    active = tuple(i for i, wi in enumerate(w) if wi != 0.0)

    def combined(x: Tensor, t: Tensor) -> Tensor:
        inside = (t >= lo) & (t <= hi)  # (B,)
        if not bool(inside.any()):
            return _evaluate(model, x, t, (outside_branch,))[0]  # type: ignore[arg-type]
        branches = active if bool(inside.all()) else tuple(sorted({*active, outside_branch}))  # type: ignore[arg-type]
        vs = dict(zip(branches, _evaluate(model, x, t, branches)))
        v = sum(w[i] * vs[i] for i in active)
        if not bool(inside.all()):
            v = torch.where(inside.view(-1, *([1] * (x.ndim - 1))), v, vs[outside_branch])
        return v  # type: ignore[return-value]

    return combined


def _evaluate(model: BranchModel, x: Tensor, t: Tensor, branches: tuple[int, ...]) -> tuple[Tensor, ...]:
    n, B = len(branches), x.shape[0]
    v = model(x.repeat(n, *([1] * (x.ndim - 1))), t.repeat(n), branches)  # (n*B, ...)
    if v.shape[0] != n * B:
        raise ValueError(f"branch model returned batch {v.shape[0]} for {n} branches of batch {B}")
    return v.split(B)  # n x (B, ...)


def cfg(model: BranchModel, scale: float, *, interval: tuple[float, float] = (0.0, 1.0)) -> VelocityField:
    """Classifier-free guidance over branches (0 = uncond, 1 = cond): v = v_u + s (v_c - v_u).

    scale == 1 evaluates only the conditional branch (as Sana does).
    """
    return guided(model, [1.0 - scale, scale], interval=interval, outside_branch=1)


def cfg_pag(
    model: BranchModel, scale: float, pag_scale: float, *, interval: tuple[float, float] = (0.0, 1.0)
) -> VelocityField:
    """CFG + perturbed-attention guidance over branches (0 = uncond, 1 = cond, 2 = perturbed), Sana spec §4.4:

    v = v_u + s (v_c - v_u) + s_pag (v_c - v_p). With s == 1 only [cond, perturbed] run.
    """
    return guided(model, [1.0 - scale, scale + pag_scale, -pag_scale], interval=interval, outside_branch=1)


def from_fields(fields: Sequence[VelocityField]) -> BranchModel:
    """A branch model from separate per-branch velocity fields (one call per branch, no batching)."""

    def model(x: Tensor, t: Tensor, branches: tuple[int, ...]) -> Tensor:
        xs, ts = x.chunk(len(branches)), t.chunk(len(branches))
        return torch.cat([fields[i](xi, ti) for i, xi, ti in zip(branches, xs, ts)])

    return model
