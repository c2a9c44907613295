import pytest
import torch

from flow_dpm import FlowDPMSolver, FlowEuler, FlowHeun, flow_timesteps, sample_flow_dpm
from flow_dpm.testing import gaussian_velocity_field

V = gaussian_velocity_field(0.3, 0.6)


def _counting(field):
    calls = []

    def wrapped(x, t):
        calls.append((x.dtype, t.clone()))
        return field(x, t)

    return wrapped, calls


def test_minimal_call_exactly_as_documented() -> None:
    noise = torch.randn(2, 4, 8, 8)
    seen = []

    def velocity(x, t):
        seen.append(t)
        assert x.shape == noise.shape and t.shape == (2,) and t.is_floating_point()
        assert ((t >= 0) & (t <= 1)).all()
        return V(x, t)

    solver = FlowDPMSolver(order=2, flow_shift=3.0)
    x0 = solver.sample(velocity, noise, num_steps=20)
    assert x0.shape == noise.shape and x0.dtype == noise.dtype and torch.isfinite(x0).all()
    assert len(seen) == 20


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("n", [1, 2, 3, 10])
def test_exactly_n_evaluations_and_no_eval_at_zero(order: int, n: int) -> None:
    field, calls = _counting(V)
    FlowDPMSolver(order=order).sample(field, torch.randn(3, 5), n)
    assert len(calls) == n and all(float(t[0]) > 0 for _, t in calls)


def test_euler_and_heun_nfe() -> None:
    field, calls = _counting(V)
    FlowEuler().sample(field, torch.randn(2, 3), 7)
    assert len(calls) == 7
    field, calls = _counting(V)
    FlowHeun().sample(field, torch.randn(2, 3), 7)
    assert len(calls) == 13


def test_defaults_are_sanas_official_settings() -> None:
    s = FlowDPMSolver()
    assert (s.order, s.flow_shift, s.solver_type, s.lower_order_final, s.discretization, s.t_end, s.final_step) == (
        2, 3.0, "midpoint", True, "time_uniform_flow", 1e-3, "data"
    )  # fmt: skip


def test_one_step_is_the_x0_prediction() -> None:
    noise = torch.randn(4, 3, dtype=torch.float64)
    t0 = flow_timesteps(1)[0].item()
    expected = noise - t0 * V(noise, torch.full((4,), t0, dtype=torch.float64))
    assert torch.allclose(FlowDPMSolver().sample(V, noise, 1), expected)


def test_deterministic_and_does_not_mutate_noise() -> None:
    noise = torch.randn(3, 4, 6)
    before = noise.clone()
    a, b = FlowDPMSolver().sample(V, noise, 8), FlowDPMSolver().sample(V, noise, 8)
    assert torch.equal(a, b) and torch.equal(noise, before)


@pytest.mark.parametrize("solver", [FlowDPMSolver(), FlowDPMSolver(order=3), FlowEuler(), FlowHeun()])
def test_batch_invariance(solver) -> None:
    noise = torch.randn(5, 3, 4, 4)
    batched = solver.sample(V, noise, 6)
    for i in range(5):
        assert torch.allclose(solver.sample(V, noise[i : i + 1], 6)[0], batched[i], atol=1e-6)


def test_callback_receives_step_t_x_x0() -> None:
    record = []
    FlowDPMSolver().sample(V, torch.randn(2, 3), 5, callback=lambda *a: record.append(a))
    assert [r[0] for r in record] == list(range(5))
    t = flow_timesteps(5)
    for step, tt, x, x0 in record:
        assert tt.shape == (2,) and tt[0].item() == pytest.approx(t[step].item())
        assert torch.allclose(x0, x - tt[0] * V(x, tt), atol=1e-6)


def test_bf16_noise_keeps_fp32_state_and_model_gets_bf16() -> None:
    noise = torch.randn(2, 4, 8, 8)
    field, calls = _counting(V)
    out16 = FlowDPMSolver().sample(field, noise.bfloat16(), 10)
    out32 = FlowDPMSolver().sample(V, noise.bfloat16().float(), 10)
    assert out16.dtype == torch.bfloat16 and all(dt == torch.bfloat16 for dt, _ in calls)
    assert all(t.dtype == torch.float32 for _, t in calls)
    assert (out16.float() - out32).abs().max() < 0.05


def test_fp64_stays_fp64() -> None:
    field, calls = _counting(V)
    out = FlowDPMSolver().sample(field, torch.randn(2, 3, dtype=torch.float64), 4)
    assert out.dtype == torch.float64 and all(dt == torch.float64 for dt, _ in calls)


def test_final_step_adams2_needs_no_extra_evaluation() -> None:
    field, calls = _counting(V)
    FlowDPMSolver(final_step="adams2").sample(field, torch.randn(2, 3), 9)
    assert len(calls) == 9


def test_grid_not_ending_at_zero_is_allowed() -> None:
    t = torch.tensor([0.9, 0.5, 0.2], dtype=torch.float64)
    x = sample_flow_dpm(V, torch.randn(2, 3), t)
    assert torch.isfinite(x).all()


# ---- bad input -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", [0, 4, 2.0, True])
def test_bad_order(order) -> None:
    with pytest.raises(ValueError, match="order must be 1, 2 or 3"):
        FlowDPMSolver(order=order)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"flow_shift": 0.0}, "flow_shift"),
        ({"flow_shift": -2.0}, "flow_shift"),
        ({"solver_type": "bh2"}, "solver_type"),
        ({"discretization": "karras"}, "discretization"),
        ({"final_step": "rk4"}, "final_step"),
    ],
)
def test_bad_options(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        FlowDPMSolver(**kwargs).sample(V, torch.randn(1, 2), 2)


def test_bad_steps() -> None:
    with pytest.raises(ValueError, match="num_steps must be an integer >= 1"):
        FlowDPMSolver().sample(V, torch.randn(1, 2), 0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_noise(bad: float) -> None:
    noise = torch.randn(2, 3)
    noise[1, 2] = bad
    with pytest.raises(ValueError, match="noise must be finite"):
        FlowDPMSolver().sample(V, noise, 3)


def test_non_float_noise() -> None:
    with pytest.raises(ValueError, match="noise must be a floating-point tensor"):
        FlowDPMSolver().sample(V, torch.ones(2, 3, dtype=torch.long), 3)


@pytest.mark.parametrize(
    "grid",
    [torch.tensor([1.2, 0.5, 0.0]), torch.tensor([0.9, -0.1]), torch.tensor([0.2, 0.5, 0.0]), torch.tensor([0.5])],
)
def test_bad_timesteps(grid) -> None:
    with pytest.raises(ValueError, match="timesteps"):
        sample_flow_dpm(V, torch.randn(1, 2), grid)


def test_velocity_wrong_shape_names_the_step() -> None:
    def bad(x, t):
        return x[:, :1]

    with pytest.raises(ValueError, match=r"step 0 .*expected shape \(2, 3\)"):
        FlowDPMSolver().sample(bad, torch.randn(2, 3), 4)


def test_velocity_non_finite_names_the_step() -> None:
    calls = []

    def bad(x, t):
        calls.append(1)
        return V(x, t) * (float("nan") if len(calls) == 3 else 1.0)

    with pytest.raises(FloatingPointError, match="step 2"):
        FlowDPMSolver().sample(bad, torch.randn(2, 3), 6)


def test_velocity_returning_non_tensor() -> None:
    with pytest.raises(ValueError, match="velocity returned list at step 0"):
        FlowDPMSolver().sample(lambda x, t: [1.0], torch.randn(2, 3), 3)
