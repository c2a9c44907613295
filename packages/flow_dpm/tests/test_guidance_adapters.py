import pytest
import torch

import flow_dpm
from flow_dpm import (
    FlowDPMSolver,
    cfg,
    cfg_pag,
    from_edm_denoiser,
    from_eps_model,
    from_fields,
    from_x0_model,
    guided,
    scale_time,
)
from flow_dpm.testing import gaussian_velocity_field

V_U, V_C, V_P = gaussian_velocity_field(0.0, 1.0), gaussian_velocity_field(1.0, 0.5), gaussian_velocity_field(-0.5, 0.8)


def _recording_branch_model(calls: list):
    fields = from_fields([V_U, V_C, V_P])

    def model(x, t, branches):
        calls.append((x.shape[0], branches))
        return fields(x, t, branches)

    return model


def test_cfg_formula_and_one_batched_call() -> None:
    calls: list = []
    x, t = torch.randn(3, 4), torch.full((3,), 0.6)
    v = cfg(_recording_branch_model(calls), 4.5)(x, t)
    assert torch.allclose(v, V_U(x, t) + 4.5 * (V_C(x, t) - V_U(x, t)), atol=1e-6)
    assert calls == [(6, (0, 1))]


def test_cfg_pag_formula() -> None:
    x, t = torch.randn(2, 4), torch.full((2,), 0.3)
    v = cfg_pag(_recording_branch_model([]), 5.0, 2.0)(x, t)
    vu, vc, vp = V_U(x, t), V_C(x, t), V_P(x, t)
    assert torch.allclose(v, vu + 5.0 * (vc - vu) + 2.0 * (vc - vp), atol=1e-5)


def test_scale_one_runs_only_the_needed_branches() -> None:
    calls: list = []
    cfg(_recording_branch_model(calls), 1.0)(torch.randn(2, 3), torch.full((2,), 0.5))
    cfg_pag(_recording_branch_model(calls), 1.0, 2.0)(torch.randn(2, 3), torch.full((2,), 0.5))
    assert calls == [(2, (1,)), (4, (1, 2))]


def test_guidance_interval_runs_cond_only_outside() -> None:
    calls: list = []
    field = cfg(_recording_branch_model(calls), 3.0, interval=(0.2, 0.8))
    x = torch.randn(2, 3)
    assert torch.allclose(field(x, torch.full((2,), 0.9)), V_C(x, torch.full((2,), 0.9)))
    field(x, torch.full((2,), 0.5))
    mixed = field(x, torch.tensor([0.9, 0.5]))
    assert calls[0] == (2, (1,)) and calls[1] == (4, (0, 1))
    t = torch.tensor([0.9, 0.5])
    expected = torch.stack([V_C(x, t)[0], (V_U(x, t) + 3.0 * (V_C(x, t) - V_U(x, t)))[1]])
    assert torch.allclose(mixed, expected, atol=1e-6)


def test_guided_field_plugs_into_the_solver() -> None:
    noise = torch.randn(4, 3)
    assert torch.equal(FlowDPMSolver().sample(cfg(from_fields([V_U, V_C]), 1.0), noise, 10),
                       FlowDPMSolver().sample(V_C, noise, 10))  # fmt: skip
    guided_out = FlowDPMSolver().sample(cfg(from_fields([V_U, V_C]), 3.0), noise, 10)
    assert not torch.allclose(guided_out, FlowDPMSolver().sample(V_C, noise, 10))


def test_guided_bad_input() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        guided(from_fields([V_U, V_C]), [0.5, 0.6])
    with pytest.raises(ValueError, match="interval"):
        guided(from_fields([V_U, V_C]), [0.0, 1.0], interval=(0.8, 0.2), outside_branch=1)
    with pytest.raises(ValueError, match="outside_branch"):
        guided(from_fields([V_U, V_C]), [0.0, 1.0], interval=(0.1, 0.9))


def test_branch_model_with_wrong_batch_is_reported() -> None:
    with pytest.raises(ValueError, match="branch model returned batch"):
        cfg(lambda x, t, b: x[:1], 2.0)(torch.randn(2, 3), torch.full((2,), 0.5))


# ---- adapters ------------------------------------------------------------------------------------------------


def _x0_and_eps(x: torch.Tensor, t: torch.Tensor, field) -> tuple[torch.Tensor, torch.Tensor]:
    v, tb = field(x, t), t.view(-1, 1)
    return x - tb * v, x + (1 - tb) * v


def test_x0_eps_and_edm_adapters_recover_the_velocity() -> None:
    x, t = torch.randn(5, 3, dtype=torch.float64), torch.rand(5, dtype=torch.float64) * 0.9 + 0.05
    v = V_C(x, t)
    x0_model = lambda x, t: _x0_and_eps(x, t, V_C)[0]  # noqa: E731
    eps_model = lambda x, t: _x0_and_eps(x, t, V_C)[1]  # noqa: E731

    def edm_denoiser(x_ve, sigma):  # VE state -> flow state, then the same x0
        t_flow = sigma / (1 + sigma)
        return x0_model(x_ve * (1 - t_flow.view(-1, 1)), t_flow)

    for adapted in (from_x0_model(x0_model), from_eps_model(eps_model), from_edm_denoiser(edm_denoiser)):
        assert torch.allclose(adapted(x, t), v, atol=1e-10)


def test_adapter_singularities_are_reported() -> None:
    with pytest.raises(ValueError, match="t = 0"):
        from_x0_model(lambda x, t: x)(torch.randn(1, 2), torch.zeros(1))
    with pytest.raises(ValueError, match="t = 1"):
        from_eps_model(lambda x, t: x)(torch.randn(1, 2), torch.ones(1))
    with pytest.raises(ValueError, match="t = 1"):
        from_edm_denoiser(lambda x, s: x)(torch.randn(1, 2), torch.ones(1))


def test_scale_time_for_sana_style_models() -> None:
    seen = []
    scale_time(lambda x, t: seen.append(t) or x, 1000.0)(torch.randn(2, 3), torch.tensor([0.5, 0.25]))
    assert torch.equal(seen[0], torch.tensor([500.0, 250.0]))
    with pytest.raises(ValueError, match="factor"):
        scale_time(lambda x, t: x, 0.0)


def test_public_api_is_pinned() -> None:
    assert sorted(flow_dpm.__all__) == sorted(
        ["FlowDPMSolver", "FlowEuler", "FlowHeun", "RECOMMENDED", "sample_flow_dpm", "sample_euler", "sample_heun",
         "flow_timesteps", "shift_time", "half_log_snr", "VelocityField", "guided", "cfg", "cfg_pag", "from_fields",
         "BranchModel", "scale_time", "from_x0_model", "from_eps_model", "from_edm_denoiser", "add_noise",
         "velocity_target", "flow_matching_loss", "sample_t", "FlowDPMScheduler"]
    )  # fmt: skip
