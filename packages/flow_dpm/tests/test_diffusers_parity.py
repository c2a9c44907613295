"""diffusers is the reference oracle (test dependency only)."""

import math

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from flow_dpm import FlowDPMScheduler, FlowDPMSolver, flow_timesteps, half_log_snr, sample_flow_dpm
from flow_dpm.testing import GaussianMixture, gaussian_velocity_field

V = gaussian_velocity_field(0.4, 0.7)


def _diffusers(order: int = 2, **kw) -> DPMSolverMultistepScheduler:
    return DPMSolverMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, solver_order=order, **kw
    )


def _diffusers_trajectory(scheduler, field, noise: torch.Tensor, n: int | None = None, sigmas=None) -> list:
    """A loop written like a diffusers pipeline; the model gets the scheduler's own sigma (its int64
    `timesteps` are floor(1000 σ), a pipeline detail, not solver maths)."""
    scheduler.set_timesteps(n if sigmas is None else len(sigmas) - 1)
    if sigmas is not None:  # diffusers' set_timesteps takes no sigmas here; its step reads only self.sigmas
        scheduler.sigmas = sigmas
    x, out = noise.clone(), []
    for i, timestep in enumerate(scheduler.timesteps):
        t = torch.full((x.shape[0],), float(scheduler.sigmas[i]), dtype=x.dtype)
        x_in = scheduler.scale_model_input(x, timestep)
        x = scheduler.step(field(x_in, t), timestep, x).prev_sample
        x = x.to(noise.dtype)
        out.append(x)
    return out


@pytest.mark.parametrize("n", [5, 14, 20, 28])
def test_sana_grid_equals_diffusers_flow_sigmas(n: int) -> None:
    sched = _diffusers()
    sched.set_timesteps(n)
    assert torch.allclose(flow_timesteps(n, 3.0).float(), sched.sigmas.float(), atol=1e-7)


@pytest.mark.parametrize("n", [3, 10, 20])
def test_every_step_matches_diffusers_2m_in_float64(n: int) -> None:
    """Each diffusers step is fed our state before it, so the comparison is per step (diffusers rounds its
    state to float32 inside `step`; chained, that rounding would accumulate and hide nothing of ours)."""
    g = torch.Generator().manual_seed(n)
    mix = GaussianMixture(torch.randn(3, 6, generator=g), [0.3, 0.5, 0.2], [0.2, 0.5, 0.3])
    noise = torch.randn(8, 6, generator=g, dtype=torch.float64)
    states = []
    final = FlowDPMSolver(order=2, flow_shift=3.0).sample(
        mix.velocity, noise, n, callback=lambda k, t, x, x0: states.append(x)
    )
    states.append(final)
    sched = _diffusers()
    sched.set_timesteps(n)
    for k, timestep in enumerate(sched.timesteps):
        t = torch.full((8,), float(sched.sigmas[k]), dtype=torch.float64)
        out = sched.step(mix.velocity(states[k], t), timestep, states[k]).prev_sample
        assert (out - states[k + 1]).abs().max().item() < 1e-6, f"step {k}"
    chained = _diffusers_trajectory(_diffusers(), mix.velocity, noise, n)[-1]
    assert (chained - final).abs().max().item() < 1e-5  # whole trajectory, float32 rounding included


def test_scheduler_adapter_reproduces_diffusers_inside_a_pipeline_loop() -> None:
    noise = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    ref = _diffusers_trajectory(_diffusers(), V, noise, 20)
    ours = FlowDPMScheduler(FlowDPMSolver())
    ours.set_timesteps(20)
    theirs = _diffusers()
    theirs.set_timesteps(20)
    assert torch.allclose(ours.sigmas, theirs.sigmas.float(), atol=1e-7)
    x = noise.clone()
    for k, timestep in enumerate(ours.timesteps):
        x_in = ours.scale_model_input(x, timestep) * ours.init_noise_sigma
        t = torch.full((2,), float(ours.sigmas[k]), dtype=x.dtype)
        x = ours.step(V(x_in, t), timestep, x).prev_sample
        assert (x - ref[k]).abs().max() < 1e-6, f"step {k}"
    assert ours.order == 1 and len(ours.timesteps) == 20


def test_scheduler_adapter_contract() -> None:
    s = FlowDPMScheduler()
    with pytest.raises(RuntimeError, match="set_timesteps"):
        s.step(torch.zeros(1, 2), 999, torch.zeros(1, 2))
    s.set_timesteps(2)
    assert s.timesteps.dtype == torch.float32 and s.timesteps[0] == pytest.approx(999.7, abs=0.05)
    out = s.step(torch.zeros(1, 2), s.timesteps[0], torch.ones(1, 2), return_dict=False)
    assert isinstance(out, tuple) and out[0].shape == (1, 2)
    with pytest.raises(ValueError, match="timestep"):
        s.step(torch.zeros(1, 2), 10.0, torch.ones(1, 2))
    s.step(torch.zeros(1, 2), s.timesteps[1], torch.ones(1, 2))
    with pytest.raises(RuntimeError, match="set_timesteps again"):
        s.step(torch.zeros(1, 2), 0.0, torch.ones(1, 2))
    x0, eps = torch.zeros(1, 2), torch.ones(1, 2)
    assert torch.allclose(s.scale_noise(x0, torch.tensor([250.0]), eps), torch.full((1, 2), 0.25))


def _uniform_lambda_grid(n: int) -> torch.Tensor:
    lam = torch.linspace(float(half_log_snr(torch.tensor(0.95))), float(half_log_snr(torch.tensor(0.05))), n + 1)
    return torch.sigmoid(-lam.double())


def _exact(noise: torch.Tensor, t0: float, t1: float, mu: float = 0.4, s: float = 0.7) -> torch.Tensor:
    sig = lambda t: math.sqrt((1 - t) ** 2 * s**2 + t**2)  # noqa: E731
    return (1 - t1) * mu + sig(t1) * (noise - (1 - t0) * mu) / sig(t0)


def test_third_order_is_third_order_where_diffusers_3m_is_second() -> None:
    """Our 3M uses the Taylor-exact weight of the second difference; diffusers (and NVlabs' DPM-Solver) use half
    of it, which leaves their 3M second order. Same grid, same field, both measured."""
    noise = torch.randn(8, 4, dtype=torch.float64)
    ours, theirs = [], []
    for n in (40, 80):
        t = _uniform_lambda_grid(n)
        exact = _exact(noise, t[0].item(), t[-1].item())
        ours.append((sample_flow_dpm(V, noise, t, order=3, lower_order_final=False) - exact).abs().max().item())
        traj = _diffusers_trajectory(_diffusers(order=3, lower_order_final=False), V, noise, sigmas=t)
        theirs.append((traj[-1] - exact).abs().max().item())
    assert math.log2(theirs[0] / theirs[1]) == pytest.approx(2.0, abs=0.3), theirs
    assert math.log2(ours[0] / ours[1]) > 2.7, ours
    assert ours[1] < theirs[1] / 5, (ours, theirs)
