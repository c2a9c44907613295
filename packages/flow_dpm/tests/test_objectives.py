import pytest
import torch

from flow_dpm import add_noise, flow_matching_loss, sample_t, shift_time, velocity_target


def test_add_noise_and_target_follow_the_convention() -> None:
    x0, eps = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    t = torch.tensor([0.0, 0.5, 1.0])
    xt = add_noise(x0, eps, t)
    assert torch.equal(xt[0], x0[0]) and torch.equal(xt[2], eps[2])
    assert torch.allclose(xt[1], 0.5 * x0[1] + 0.5 * eps[1])
    v = velocity_target(x0, eps)
    assert torch.allclose(xt - t.view(-1, 1, 1, 1) * v, x0, atol=1e-6)  # x0 = x_t - t v


def test_loss_is_plain_mse() -> None:
    x0, eps = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    v = torch.randn(2, 3, 4, 4)
    assert flow_matching_loss(v, x0, eps).item() == pytest.approx(((v - (eps - x0)) ** 2).mean().item(), rel=1e-6)
    assert flow_matching_loss(eps - x0, x0, eps).item() == 0.0


def test_logit_normal_shifted_matches_sana_statistics() -> None:
    g = torch.Generator().manual_seed(0)
    t = sample_t(200_000, shift=3.0, generator=g)
    assert t.dtype == torch.float32 and t.min() >= 0 and t.max() < 1
    assert t.mean().item() == pytest.approx(0.71, abs=0.01)  # spec §7.2: mean σ ≈ 0.71 with s = 3
    u = torch.round(t.double() * 1000)  # discrete: t = S(i / 1000)
    i = torch.arange(1000, dtype=torch.float64) / 1000
    table = shift_time(i, 3.0).float()
    assert torch.isin(t, table).all() and u.numel() == 200_000


def test_uniform_continuous_and_reproducible() -> None:
    a = sample_t(1000, distribution="uniform", discrete=False, shift=1.0, generator=torch.Generator().manual_seed(1))
    b = sample_t(1000, distribution="uniform", discrete=False, shift=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.mean().item() == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"batch_size": 0}, "batch_size"), ({"std": 0.0}, "std"), ({"distribution": "mode"}, "distribution"),
     ({"shift": -1.0}, "flow_shift")],
)  # fmt: skip
def test_sample_t_bad_input(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        sample_t(**{"batch_size": 4, **kwargs})


def test_add_noise_bad_input() -> None:
    with pytest.raises(ValueError, match="same shape"):
        add_noise(torch.randn(2, 3), torch.randn(2, 4), torch.rand(2))
    with pytest.raises(ValueError, match=r"t must have shape \(B,\)"):
        add_noise(torch.randn(2, 3), torch.randn(2, 3), torch.rand(3))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        add_noise(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0.5, 1.5]))
