"""`sana.train.optim`: CAME against the spec §7.4 formula, CAME8bit quantisation, exact resume, builders, schedules."""

from __future__ import annotations

import copy
import io
import math
import sys

import pytest
import torch
from torch import nn

from sana.config import OptimizerConfig
from sana.train.optim import (
    CAME,
    CAME_EPS,
    DEFAULT_BLOCK_SIZE,
    DEFAULT_MIN_8BIT_SIZE,
    LR_SCHEDULES,
    OPTIMIZER_TYPES,
    CAME8bit,
    auto_lr_scale,
    build_lr_scheduler,
    build_optimizer,
    dequantize_blockwise,
    is_factored,
    quantize_blockwise,
)

torch.set_num_threads(1)

CAME_CONFIG = {"type": "CAMEWrapper", "betas": [0.9, 0.999, 0.9999], "eps": list(CAME_EPS), "weight_decay": 0.0}
CAME8BIT_TRACK_BOUND = 0.02  # max |p_8bit - p_came| after 20 steps (measured 5.6e-3 while params move 0.42)
CAME8BIT_LOSS_BOUND = 0.02  # relative final-loss gap (measured 6e-4)


# --- CAME against a direct transcription of spec §7.4 -------------------------------------------------------------


def _reference_came_step(p, g, state, *, lr, betas, eps, clip, wd):
    """Spec §7.4 written out in float64, one parameter. Returns the new parameter."""
    b1, b2, b3 = betas
    out, inp = p.shape[0], (p.shape[1] if p.ndim > 1 else 1)
    factored = p.ndim == 2 or (p.ndim == 4 and p.shape[2] == 1 and p.shape[3] == 1)
    g = g.double().reshape(out, inp) if factored else g.double()
    u = g**2 + eps[0]
    if factored:
        state["R"] = b2 * state.get("R", torch.zeros(out, dtype=torch.float64)) + (1 - b2) * u.mean(dim=1)
        state["C"] = b2 * state.get("C", torch.zeros(inp, dtype=torch.float64)) + (1 - b2) * u.mean(dim=0)
        approx = torch.outer((state["R"] / state["R"].mean()) ** -0.5, state["C"] ** -0.5)
        update = approx * g
    else:
        state["V"] = b2 * state.get("V", torch.zeros_like(g)) + (1 - b2) * u
        update = g * state["V"] ** -0.5
    rms = update.pow(2).mean().sqrt()
    update = update / max(1.0, float(rms) / clip)
    state["m"] = b1 * state.get("m", torch.zeros_like(g)) + (1 - b1) * update
    if factored:
        res = (update - state["m"]) ** 2 + eps[1]
        state["Rr"] = b3 * state.get("Rr", torch.zeros(out, dtype=torch.float64)) + (1 - b3) * res.mean(dim=1)
        state["Cr"] = b3 * state.get("Cr", torch.zeros(inp, dtype=torch.float64)) + (1 - b3) * res.mean(dim=0)
        update = torch.outer((state["Rr"] / state["Rr"].mean()) ** -0.5, state["Cr"] ** -0.5) * state["m"]
    else:
        update = state["m"]
    p = p.double()
    p = p - lr * wd * p
    return p - lr * update.reshape(p.shape)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize(
    ("kind", "shape"),
    [("linear", (6, 5)), ("conv1x1", (6, 5, 1, 1)), ("depthwise3x3", (4, 1, 3, 3)), ("bias", (6,))],
)
def test_came_matches_spec_formula(kind, shape, weight_decay):
    gen = torch.Generator().manual_seed(0)
    param = nn.Parameter(torch.randn(shape, generator=gen))
    reference, ref_state = param.detach().double().clone(), {}
    hyper = {"lr": 0.1, "betas": (0.9, 0.999, 0.9999), "eps": (1e-30, 1e-16), "clip": 1.0, "wd": weight_decay}
    opt = CAME([param], lr=0.1, weight_decay=weight_decay)
    for _ in range(3):
        grad = torch.randn(shape, generator=gen) * torch.rand(shape[0], *([1] * (len(shape) - 1)), generator=gen)
        param.grad = grad.clone()
        opt.step()
        reference = _reference_came_step(reference, grad, ref_state, **hyper)
        torch.testing.assert_close(param.detach().double(), reference, rtol=1e-6, atol=1e-6)
    state = opt.state[param]
    assert is_factored(shape) == (kind in ("linear", "conv1x1"))
    if is_factored(shape):
        assert state["exp_avg_sq_row"].shape == (shape[0],) and state["exp_avg_sq_col"].shape == (shape[1],)
        assert "exp_avg_sq" not in state
    else:
        assert state["exp_avg_sq"].shape == shape and "exp_avg_sq_row" not in state
    moved = param.detach().double() - _initial(shape)
    assert moved.abs().max() > 1e-3  # the step is large enough that a wrong formula shows up


def _initial(shape):
    return torch.randn(shape, generator=torch.Generator().manual_seed(0)).double()


def test_factoring_rule_is_sanas():
    assert is_factored((1152, 1152)) and is_factored((6, 1152)) and is_factored((64, 32, 1, 1))
    assert not is_factored((64, 32, 3, 3)) and not is_factored((64, 1, 3, 3)) and not is_factored((1152,))
    assert not is_factored((1, 256, 1152))  # position embedding table
    assert not is_factored((8, 4, 1, 1, 1))


def test_bf16_parameter_is_updated_in_fp32_and_rounded_once():
    gen = torch.Generator().manual_seed(1)
    p16 = nn.Parameter(torch.randn(8, 6, generator=gen).to(torch.bfloat16))
    p32 = nn.Parameter(p16.detach().float())
    grad = torch.randn(8, 6, generator=gen).to(torch.bfloat16)
    p16.grad, p32.grad = grad, grad.float()
    for param in (p16, p32):
        CAME([param], lr=0.05, weight_decay=0.1).step()
    assert p16.dtype == torch.bfloat16
    assert torch.equal(p16.detach(), p32.detach().to(torch.bfloat16))


def test_sparse_gradient_is_a_clear_error():
    emb = nn.Embedding(10, 4, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(TypeError, match="sparse"):
        CAME(emb.parameters()).step()


def test_came_overfits_a_tiny_regression():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 1))
    x = torch.randn(64, 8)
    y = x[:, :1].sin() + 0.5 * x[:, 1:2]
    opt = CAME(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(80):
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, losses[::10]


# --- CAME8bit -----------------------------------------------------------------------------------------------------


def test_blockwise_quantisation_roundtrip():
    x = torch.randn(5000, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.01, 10, 5000)
    codes, scale, block_min = quantize_blockwise(x, 2048)
    assert codes.dtype == torch.uint8 and codes.shape == (5000,) and scale.shape == block_min.shape == (3,)
    back = dequantize_blockwise(codes, scale, block_min, (50, 100), 2048)
    assert back.shape == (50, 100) and back.dtype == torch.float32
    err = (back.reshape(-1) - x).abs()
    for i in range(3):  # within half a quantisation step of each block
        assert err[i * 2048 : (i + 1) * 2048].max() <= scale[i] / 2 * (1 + 1e-5)
    constant = torch.full((300,), 0.25)
    assert torch.equal(dequantize_blockwise(*quantize_blockwise(constant, 128), (300,), 128), constant)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 1))


def test_came8bit_tracks_came_and_quantises_only_large_matrices():
    came_model, q_model = _mlp(), _mlp()
    came = CAME(came_model.parameters(), lr=1e-3)
    q = CAME8bit(q_model.parameters(), lr=1e-3, block_size=64, min_8bit_size=512, block_layout="flat")
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(1))
    y = x[:, :1].cos()
    losses = {}
    for _ in range(20):
        for model, opt in ((came_model, came), (q_model, q)):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            losses[type(opt)] = loss.item()
    gap = max((a - b).abs().max().item() for a, b in zip(came_model.parameters(), q_model.parameters()))
    assert 0 < gap < CAME8BIT_TRACK_BOUND, gap
    assert abs(losses[CAME8bit] - losses[CAME]) < CAME8BIT_LOSS_BOUND * losses[CAME], losses
    dtypes = {name: q.state[p]["exp_avg"].dtype for name, p in q_model.named_parameters()}
    assert dtypes == {
        "0.weight": torch.uint8,  # 64 x 16 = 1024 > 512
        "0.bias": torch.float32,
        "2.weight": torch.uint8,  # 4096
        "2.bias": torch.float32,
        "4.weight": torch.float32,  # 64 <= 512
        "4.bias": torch.float32,
    }
    state = q.state[q_model[2].weight]
    assert state["exp_avg_scale"].shape == (4096 // 64,) and state["exp_avg_sq_row"].dtype == torch.float32


def test_came8bit_default_thresholds():
    group = {"min_8bit_size": DEFAULT_MIN_8BIT_SIZE, "block_size": DEFAULT_BLOCK_SIZE}
    assert not CAME8bit.uses_8bit(torch.empty(128, 128), group)  # exactly 16384: not more than the minimum
    assert CAME8bit.uses_8bit(torch.empty(129, 128), group)
    assert CAME8bit.uses_8bit(torch.empty(256, 128, 1, 1), group)
    assert not CAME8bit.uses_8bit(torch.empty(256, 128, 3, 3), group)  # 3x3 conv: never
    assert not CAME8bit.uses_8bit(torch.empty(100_000), group)


def _state_bytes(opt):
    return sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t))


def test_came8bit_uses_less_state_memory():
    sizes = {}
    for cls in (CAME, CAME8bit):
        layer = nn.Linear(256, 512, bias=False)
        opt = cls(layer.parameters())
        layer.weight.grad = torch.randn_like(layer.weight)
        opt.step()
        sizes[cls] = _state_bytes(opt)
    assert sizes[CAME] == 4 * (512 * 256 + 2 * (512 + 256))
    assert sizes[CAME8bit] < sizes[CAME] / 3, sizes


def test_came8bit_dim0_layout_matches_official_blocks():
    layer = nn.Linear(64, 100, bias=False)
    opt = CAME8bit(layer.parameters(), block_size=32, min_8bit_size=0, block_layout="dim0")
    layer.weight.grad = torch.randn_like(layer.weight)
    opt.step()
    assert opt.state[layer.weight]["exp_avg_scale"].shape == (4,)  # ceil(100 rows / 32 rows)


# --- exact resume -------------------------------------------------------------------------------------------------


class _Net(nn.Module):
    """Every CAME path: Linear (factored), 1x1 conv (factored), depthwise 3x3 conv and biases (full)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 24, 1)
        self.dw = nn.Conv2d(24, 24, 3, padding=1, groups=24)
        self.head = nn.Linear(24 * 16, 40)

    def forward(self, x):
        return self.head(self.dw(self.conv1(x).relu()).flatten(1)).pow(2).mean()


_RESUME_OPTIMIZERS = {
    "CAMEWrapper": lambda params: CAME(params, lr=1e-2, weight_decay=0.01),
    "CAME8BitWrapper": lambda params: CAME8bit(params, lr=1e-2, weight_decay=0.01, block_size=64, min_8bit_size=64),
    "AdamW": lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01),
}


def _train(model, opt, sched, steps):
    losses = []
    for step in steps:
        x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(step))
        loss = model(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


def _fresh(name, seed):
    torch.manual_seed(seed)
    model = _Net()
    opt = _RESUME_OPTIMIZERS[name](model.parameters())
    return model, opt, build_lr_scheduler(opt, "constant", warmup_steps=3, total_steps=None)


@pytest.mark.parametrize("name", list(_RESUME_OPTIMIZERS))
def test_interrupted_run_resumes_bit_identically(name):
    reference, opt, sched = _fresh(name, seed=0)
    full_losses = _train(reference, opt, sched, range(6))

    model, opt, sched = _fresh(name, seed=0)
    first = _train(model, opt, sched, range(3))
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buffer)
    if name == "CAME8BitWrapper":
        assert opt.state[model.head.weight]["exp_avg"].dtype == torch.uint8  # the 8-bit path is exercised
    del model, opt, sched
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed, opt, sched = _fresh(name, seed=123)  # different init: the loaded state must win
    resumed.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    sched.load_state_dict(saved["sched"])
    second = _train(resumed, opt, sched, range(3, 6))

    assert first + second == full_losses
    for a, b in zip(resumed.parameters(), reference.parameters()):
        assert torch.equal(a, b)


def test_load_state_dict_keeps_fp32_state_of_bf16_parameters():
    param = nn.Parameter(torch.randn(6, 5).to(torch.bfloat16))
    opt = CAME([param])
    param.grad = torch.randn(6, 5).to(torch.bfloat16)
    opt.step()
    other = CAME([nn.Parameter(param.detach().clone())])
    other.load_state_dict(copy.deepcopy(opt.state_dict()))
    (loaded,) = other.state.values()
    for key, value in opt.state[param].items():
        assert loaded[key].dtype == torch.float32 if torch.is_tensor(value) else loaded[key] == value
        if torch.is_tensor(value):
            assert torch.equal(loaded[key], value) and loaded[key].data_ptr() != value.data_ptr()


# --- build_optimizer and auto_lr ----------------------------------------------------------------------------------


def test_auto_lr_sqrt_rule():
    assert auto_lr_scale(256, "sqrt") == 1.0
    assert auto_lr_scale(64 * 8, "sqrt") == pytest.approx(math.sqrt(2))
    assert auto_lr_scale(64, "linear") == 0.25
    opt = build_optimizer(nn.Linear(4, 4), OptimizerConfig(**CAME_CONFIG), global_batch=64 * 8, auto_lr="sqrt")
    assert opt.param_groups[0]["lr"] == pytest.approx(1.41421356e-4)  # spec §7.4 example
    opt = build_optimizer(nn.Linear(4, 4), OptimizerConfig(**CAME_CONFIG), global_batch=64 * 8)
    assert opt.param_groups[0]["lr"] == 1e-4  # auto_lr=None: lr as configured
    with pytest.raises(ValueError, match="global_batch"):
        build_optimizer(nn.Linear(4, 4), OptimizerConfig(**CAME_CONFIG), auto_lr="sqrt")
    with pytest.raises(ValueError, match=r"train\.auto_lr\.rule.*linear.*sqrt"):
        auto_lr_scale(256, "cubic")
    with pytest.raises(ValueError, match=r"train\.auto_lr\.rule"):
        auto_lr_scale(256, {"rule": "sqrt"})  # the config's dict, not its rule


def test_build_optimizer_types():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    model[1].weight.requires_grad_(False)
    came = build_optimizer(model, OptimizerConfig(**CAME_CONFIG))
    assert type(came) is CAME and came.defaults["betas"] == (0.9, 0.999, 0.9999)
    assert sum(len(g["params"]) for g in came.param_groups) == 3  # the frozen norm weight is left out
    came8 = build_optimizer(model, OptimizerConfig(**{**CAME_CONFIG, "type": "CAME8BitWrapper"}))
    assert type(came8) is CAME8bit and came8.defaults["block_size"] == DEFAULT_BLOCK_SIZE
    assert came8.defaults["min_8bit_size"] == DEFAULT_MIN_8BIT_SIZE
    came8 = build_optimizer(model, OptimizerConfig(**CAME_CONFIG | {"type": "CAME8BitWrapper", "block_size": 64}))
    assert came8.defaults["block_size"] == 64
    adamw = build_optimizer(
        model.parameters(), OptimizerConfig(type="AdamW", eps=1e-8, weight_decay=0.01, betas=[0.9, 0.99])
    )
    assert type(adamw) is torch.optim.AdamW
    assert (adamw.defaults["eps"], adamw.defaults["weight_decay"], adamw.defaults["betas"]) == (1e-8, 0.01, (0.9, 0.99))
    assert set(OPTIMIZER_TYPES) >= {"CAMEWrapper", "CAME8BitWrapper", "AdamW", "AdamW8bit"}


def test_adamw8bit_without_bitsandbytes_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as on this CPU-only machine
    with pytest.raises(ImportError, match="bitsandbytes"):
        build_optimizer(nn.Linear(4, 4), OptimizerConfig(type="AdamW8bit", eps=1e-8))


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"type": "SGD"}, r"train\.optimizer\.type must be one of .*CAMEWrapper"),
        ({**CAME_CONFIG, "eps": 1e-10}, r"train\.optimizer\.eps must be a list of two floats"),
        ({**CAME_CONFIG, "betas": [0.9, 0.999]}, r"train\.optimizer\.betas must have 3 values"),
        ({"type": "AdamW", "betas": [0.9, 0.999, 0.9999]}, r"train\.optimizer\.betas must have 2 values"),
        ({"type": "AdamW", "eps": [1e-30, 1e-16]}, r"train\.optimizer\.eps must be one float"),
        ({"type": "AdamW", "block_size": 64}, r"train\.optimizer\.block_size is only used by CAME8BitWrapper"),
    ],
)
def test_build_optimizer_bad_config(fields, match):
    with pytest.raises(ValueError, match=match):
        build_optimizer(nn.Linear(4, 4), OptimizerConfig(**fields))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": -1e-4}, "lr must be"),
        ({"betas": (0.9, 0.999)}, "betas must be 3 floats"),
        ({"betas": (0.9, 1.0, 0.9999)}, r"betas\[1\] must be"),
        ({"eps": 1e-30}, "eps must be 2 floats"),
        ({"clip_threshold": 0.0}, "clip_threshold must be"),
        ({"weight_decay": -0.1}, "weight_decay must be"),
        ({"block_size": 0}, "block_size must be"),
        ({"block_layout": "rows"}, "block_layout must be one of"),
    ],
)
def test_came_bad_hyperparameters(kwargs, match):
    cls = CAME8bit if {"block_size", "block_layout"} & kwargs.keys() else CAME
    with pytest.raises(ValueError, match=match):
        cls(nn.Linear(2, 2).parameters(), **kwargs)


def test_no_trainable_parameters_is_an_error():
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(model, OptimizerConfig(**CAME_CONFIG))


# --- learning-rate schedules --------------------------------------------------------------------------------------


def _factors(name, steps, **kwargs):
    opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=2.0)
    sched = build_lr_scheduler(opt, name, **kwargs)
    return [sched.lr_lambdas[0](step) for step in steps]


STEPS = [0, 1, 5, 10, 11, 50, 99, 100, 150]


def test_schedules_match_diffusers():
    from diffusers.optimization import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=2.0)
    oracle = get_constant_schedule_with_warmup(opt, num_warmup_steps=10).lr_lambdas[0]
    assert _factors("constant", STEPS, warmup_steps=10, total_steps=None) == [oracle(s) for s in STEPS]
    oracle = get_cosine_schedule_with_warmup(opt, num_warmup_steps=10, num_training_steps=100).lr_lambdas[0]
    assert _factors("cosine", STEPS, warmup_steps=10, total_steps=100) == [oracle(s) for s in STEPS]
    assert _factors("constant", [0, 5, 10, 1000], warmup_steps=10, total_steps=None) == [0.0, 0.5, 1.0, 1.0]
    assert _factors("constant", [0, 7], warmup_steps=0, total_steps=None) == [1.0, 1.0]


def test_cosine_decay_to_constant_values():
    factors = _factors(
        "cosine_decay_to_constant", [5, 10, 38, 66, 67, 500], warmup_steps=10, total_steps=100, final_lr=0.5
    )  # decay until int(100 * 0.667) = 66
    assert factors == pytest.approx([0.5, 1.0, 0.75, 0.5, 0.5, 0.5])


def test_scheduler_drives_the_optimizer_lr():
    opt = CAME(nn.Linear(2, 2).parameters(), lr=1e-3)
    sched = build_lr_scheduler(opt, "constant", warmup_steps=4, total_steps=None)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.0, 2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])


def test_scheduler_bad_inputs():
    opt = CAME(nn.Linear(2, 2).parameters())
    with pytest.raises(ValueError, match=r"train\.lr_schedule must be one of .*cosine_decay_to_constant"):
        build_lr_scheduler(opt, "linear", warmup_steps=0, total_steps=10)
    with pytest.raises(ValueError, match="total_steps must be an int >= 1 for the 'cosine' schedule"):
        build_lr_scheduler(opt, "cosine", warmup_steps=0, total_steps=None)
    with pytest.raises(ValueError, match="warmup_steps"):
        build_lr_scheduler(opt, "constant", warmup_steps=-1, total_steps=None)
    assert set(LR_SCHEDULES) == {"constant", "cosine", "cosine_decay_to_constant"}
