import pytest
import torch

from flow_dpm import flow_timesteps, half_log_snr, shift_time

# Spec §4.2: Sana's N = 20 grids, rounded to 4 decimals (NVlabs/Sana time_uniform_flow).
SANA_S3 = [0.9997, 0.9824, 0.9639, 0.9441, 0.9227, 0.8996, 0.8746, 0.8475, 0.8178, 0.7853, 0.7496, 0.7102,
           0.6663, 0.6173, 0.5621, 0.4997, 0.4283, 0.3459, 0.2498, 0.1362, 0.0]  # fmt: skip


def test_sana_grid_shift3_matches_spec_table() -> None:
    assert [round(x, 4) for x in flow_timesteps(20, 3.0).tolist()] == SANA_S3


@pytest.mark.parametrize(
    ("shift", "head", "tail"),
    [(4.0, [0.9997, 0.9868], [0.4997, 0.4135, 0.3075, 0.1738, 0.0]),
     (6.0, [0.9998, 0.9911], [0.5997, 0.514, 0.3997, 0.2398, 0.0])],
)  # fmt: skip
def test_sana_grid_shift4_and_6_match_spec(shift: float, head: list[float], tail: list[float]) -> None:
    t = [round(x, 4) for x in flow_timesteps(20, shift).tolist()]
    assert t[:2] == head and t[-5:] == tail


@pytest.mark.parametrize("discretization", ["time_uniform_flow", "logsnr_uniform", "uniform", "flow_match_euler"])
@pytest.mark.parametrize("n", [1, 2, 7, 20])
def test_grids_decrease_to_exact_zero(discretization: str, n: int) -> None:
    t = flow_timesteps(n, 3.0, discretization=discretization)
    assert t.shape == (n + 1,) and t.dtype == torch.float64
    assert t[-1].item() == 0.0 and (t[1:] < t[:-1]).all() and t[0] <= 1


def test_logsnr_grid_is_uniform_in_lambda() -> None:
    lam = half_log_snr(flow_timesteps(12, 3.0, discretization="logsnr_uniform")[:-1])
    steps = lam.diff()
    assert torch.allclose(steps, steps[0].expand_as(steps), rtol=1e-9)


def test_shift_maps_endpoints_and_is_monotone() -> None:
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    s = shift_time(t, 3.0)
    assert s[0] == 0 and s[-1] == 1 and (s.diff() > 0).all() and s[50].item() == pytest.approx(0.75)


@pytest.mark.parametrize("steps", [0, -3, 2.5, True])
def test_bad_num_steps(steps: object) -> None:
    with pytest.raises(ValueError, match="num_steps"):
        flow_timesteps(steps)  # type: ignore[arg-type]


@pytest.mark.parametrize("shift", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_shift(shift: float) -> None:
    with pytest.raises(ValueError, match="flow_shift"):
        flow_timesteps(10, shift)


def test_bad_discretization_and_t_end() -> None:
    with pytest.raises(ValueError, match="discretization"):
        flow_timesteps(10, discretization="karras")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="t_end"):
        flow_timesteps(10, t_end=1.0)


@pytest.mark.parametrize(("n", "shift"), [(1, 3.0), (6, 3.0), (28, 4.0), (20, 6.0)])
def test_flow_match_euler_grid_is_diffusers_scheduler_grid(n: int, shift: float) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(n)
    ours = flow_timesteps(n, shift, discretization="flow_match_euler")
    torch.testing.assert_close(ours.float(), scheduler.sigmas.float(), rtol=0, atol=1e-6)
