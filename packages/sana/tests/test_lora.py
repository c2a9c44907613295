"""`sana.train.lora`: LoRA on the Linear DiT through peft; the diffusers file format checked by diffusers itself.

Oracles: diffusers' `SanaPipeline.load_lora_weights` / `SanaTransformer2DModel.load_lora_adapter` on the same
file and base weights (our converter to diffusers is checked in linear_dit), and the base model for merging.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from linear_dit import PAG, LinearDiT, ops
from linear_dit.testing import diffusers_twin, random_inputs, randomize_, run_diffusers, tiny_config
from sana.config import TrainingConfig
from sana.train.lora import (
    DEFAULT_RANK,
    DEFAULT_TARGETS,
    LORA_WEIGHT_NAME,
    add_lora,
    has_lora,
    load_lora,
    lora_state_dict,
    merge_lora,
    save_lora,
)

torch.set_num_threads(1)

TARGET_LINEARS = {"attn.qkv", "attn.proj", "cross_attn.q_linear", "cross_attn.kv_linear", "cross_attn.proj"}


def base_model(seed: int = 0, **overrides: object) -> LinearDiT:
    return randomize_(LinearDiT(tiny_config(**overrides)), seed=seed).eval()


@torch.no_grad()
def randomize_lora_(model: nn.Module, seed: int = 1) -> nn.Module:
    """Non-zero LoRA B (peft zero-initialises it), so the adapters change the output."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if ".lora_B." in name:
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def run(model: LinearDiT, inputs: tuple[Tensor, ...], **kwargs: object) -> Tensor:
    with torch.no_grad():
        return model(*inputs, **kwargs)


def adapted(seed: int = 0, **lora: object) -> tuple[LinearDiT, LinearDiT]:
    """(base, adapted copy with random non-zero LoRA weights)."""
    base = base_model(seed)
    model = randomize_lora_(add_lora(base_model(seed), **lora))
    return base, model


def test_only_lora_parameters_train_and_the_model_stays_a_linear_dit() -> None:
    assert TrainingConfig.model_fields["lora_rank"].default == DEFAULT_RANK
    base = base_model()
    model = add_lora(base_model())
    assert isinstance(model, LinearDiT) and model.config == base.config and model.pag_layers == (1,)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    wrapped = {n.split(".", 2)[2] for n, m in model.named_modules() if n.count(".") == 3 and hasattr(m, "lora_A")}
    assert wrapped == TARGET_LINEARS == set(DEFAULT_TARGETS)
    assert model.blocks[0].attn.qkv.lora_A["default"].weight.shape == (DEFAULT_RANK, 64)
    inputs = random_inputs(model.config)
    assert torch.equal(run(model, inputs), run(base, inputs))  # B starts at zero: nothing changes yet
    model.train()
    model(*inputs).square().mean().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads == trainable


def test_targets_and_bad_arguments_are_checked() -> None:
    model = add_lora(base_model(), rank=2, targets=["cross_attn.kv_linear"])
    wrapped = [n for n, m in model.named_modules() if hasattr(m, "lora_A") and n.count(".") == 3]
    assert wrapped == ["blocks.0.cross_attn.kv_linear", "blocks.1.cross_attn.kv_linear"]
    with pytest.raises(ValueError, match="already has LoRA"):
        add_lora(model)
    for kwargs, message in [
        ({"targets": ["mlp.inverted_conv"]}, "unknown LoRA targets.*valid targets"),
        ({"targets": "attn.qkv"}, "targets must be a non-empty sequence"),
        ({"rank": 0}, "rank must be a positive int"),
        ({"alpha": -1.0}, "alpha must be a positive number"),
        ({"dropout": 1.0}, r"dropout must be a number in \[0, 1\)"),
    ]:
        with pytest.raises(ValueError, match=message):
            add_lora(base_model(), **kwargs)
    with pytest.raises(TypeError, match=r"linear_dit\.LinearDiT"):
        add_lora(nn.Linear(2, 2))  # type: ignore[arg-type]


def test_lora_changes_the_output_and_pag_still_works() -> None:
    base, model = adapted(rank=3)
    inputs = random_inputs(model.config, batch=3)
    out = run(model, inputs)
    assert (out - run(base, inputs)).abs().max() > 1e-2
    pag = run(model, inputs, pag=PAG(rows=slice(1, 2)))
    assert torch.equal(pag[[0, 2]], out[[0, 2]])  # rows outside the PAG slice are untouched
    assert (pag[1] - out[1]).abs().max() > 1e-3
    assert (pag[1] - run(base, inputs, pag=PAG(rows=slice(1, 2)))[1]).abs().max() > 1e-3


@pytest.mark.parametrize("alpha", [None, 7.0])
def test_save_load_round_trip(alpha: float | None, tmp_path: Path) -> None:
    _, model = adapted(rank=3, alpha=alpha)
    file = save_lora(model, tmp_path / "lora")
    assert file == tmp_path / "lora" / LORA_WEIGHT_NAME and sorted(p.name for p in file.parent.iterdir()) == [
        LORA_WEIGHT_NAME
    ]
    with safe_open(str(file), framework="pt") as f:
        keys, info = set(f.keys()), json.loads(f.metadata()["sana_lora"])
    pieces = ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v"]
    pieces.append("attn2.to_out.0")
    ends = ("lora_A.weight", "lora_B.weight")
    assert keys == {f"transformer.transformer_blocks.{i}.{p}.{end}" for i in (0, 1) for p in pieces for end in ends}
    assert info["depth"] == 2 and info["rank"] == [3]
    loaded = load_lora(base_model(), tmp_path / "lora")
    inputs = random_inputs(model.config)
    if alpha is None:  # scale 1: the very same weights
        assert torch.equal(run(loaded, inputs), run(model, inputs))
    else:  # the scale alpha/r moved into B: equal up to rounding
        torch.testing.assert_close(run(loaded, inputs), run(model, inputs), rtol=0, atol=1e-5)
    assert all(".lora_" in n for n, p in loaded.named_parameters() if p.requires_grad)
    torch.testing.assert_close(lora_state_dict(loaded), lora_state_dict(model), rtol=1e-6, atol=0)


def test_merge_gives_a_plain_linear_dit_with_the_same_outputs() -> None:
    base, model = adapted(rank=4, alpha=8.0)
    inputs = random_inputs(model.config)
    want = run(model, inputs)
    merged = merge_lora(model)
    assert merged is model and type(merged) is LinearDiT and not has_lora(merged)
    assert not hasattr(merged, "peft_config")
    assert merged.state_dict().keys() == base.state_dict().keys()
    assert all(type(m).__module__.split(".")[0] in ("torch", "linear_dit") for m in merged.modules())
    assert all(p.requires_grad for p in merged.parameters())
    torch.testing.assert_close(run(merged, inputs), want, rtol=0, atol=1e-5)
    assert (merged.blocks[0].attn.qkv.weight - base.blocks[0].attn.qkv.weight).abs().max() > 1e-3
    assert torch.equal(merged.blocks[0].mlp.point_conv.conv.weight, base.blocks[0].mlp.point_conv.conv.weight)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        merge_lora(merged)


def test_diffusers_sana_pipeline_loads_our_lora_and_reproduces_our_output(
    tiny_diffusers_pipeline_dir: Path, tmp_path: Path
) -> None:
    from diffusers import SanaPipeline

    ours = LinearDiT.from_pretrained(tiny_diffusers_pipeline_dir / "transformer").eval()
    inputs = random_inputs(ours.config)
    base_out = run(ours, inputs)
    randomize_lora_(add_lora(ours, rank=2, alpha=3.0))
    want = run(ours, inputs)
    save_lora(ours, tmp_path / "lora")
    pipe = SanaPipeline.from_pretrained(tiny_diffusers_pipeline_dir)
    torch.testing.assert_close(run_diffusers(pipe.transformer, *inputs), base_out, rtol=0, atol=1e-5)
    pipe.load_lora_weights(tmp_path / "lora")
    got = run_diffusers(pipe.transformer, *inputs)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert (got - base_out).abs().max() > 1e-2


def test_load_lora_reads_diffusers_written_loras_with_separate_a_missing_pieces_and_alpha(tmp_path: Path) -> None:
    """A diffusers-trained LoRA: its own A per piece, attn1.to_v absent, alpha in `lora_adapter_metadata`."""
    from diffusers import SanaPipeline

    base = base_model(seed=2)
    g = torch.Generator().manual_seed(3)
    dims = {"attn1.to_q": 64, "attn1.to_k": 64, "attn1.to_out.0": 64, "attn2.to_k": 64, "attn2.to_v": 64}
    state = {}
    for i in range(2):
        for piece, out in dims.items():
            stem = f"transformer_blocks.{i}.{piece}"
            state[f"{stem}.lora_A.weight"] = torch.randn(2, 64, generator=g) * 0.3
            state[f"{stem}.lora_B.weight"] = torch.randn(out, 2, generator=g) * 0.3
    metadata = {"r": 2, "lora_alpha": 5.0, "target_modules": sorted({k.rsplit(".lora_", 1)[0] for k in state})}
    SanaPipeline.save_lora_weights(tmp_path / "lora", state, transformer_lora_adapter_metadata=metadata)

    twin = diffusers_twin(base)
    twin.load_lora_adapter(str(tmp_path / "lora"), prefix="transformer", weight_name=LORA_WEIGHT_NAME)
    ours = load_lora(base, tmp_path / "lora")
    assert ours.blocks[0].attn.qkv.lora_A["default"].weight.shape == (4, 64)  # to_q and to_k stacked
    assert type(ours.blocks[0].cross_attn.q_linear) is ops.Linear  # not in the file: left plain (no LoRA wrapper)
    inputs = random_inputs(ours.config)
    want = run_diffusers(twin, *inputs)
    torch.testing.assert_close(run(ours, inputs), want, rtol=0, atol=1e-5)
    assert (want - run(base_model(seed=2), inputs)).abs().max() > 1e-2


def test_load_lora_refuses_files_that_do_not_fit(tmp_path: Path) -> None:
    _, wide = adapted(rank=2)
    save_lora(wide, tmp_path / "w64")
    wrong_width = r"transformer_blocks\.0\.attn[12]\.to_\S+ has lora_A \(2, 64\).*needs \(2, 32\)"
    with pytest.raises(ValueError, match=wrong_width):
        load_lora(base_model(hidden_size=32), tmp_path / "w64")
    deep = randomize_lora_(add_lora(base_model(depth=3), rank=2))
    save_lora(deep, tmp_path / "d3")
    with pytest.raises(ValueError, match="saved from a 3-block model; the model has 2"):
        load_lora(base_model(), tmp_path / "d3")
    state = lora_state_dict(deep)  # the same file without our metadata: caught by the block indices
    save_file(state, str(tmp_path / "bare.safetensors"))
    with pytest.raises(ValueError, match=r"LoRA for blocks \[2\], but the model has 2 blocks"):
        load_lora(base_model(), tmp_path / "bare.safetensors")
    ff_key = "transformer.transformer_blocks.0.ff.conv_inverted.lora_A.weight"  # a module we do not adapt
    save_file({**state, ff_key: torch.zeros(2, 64)}, str(tmp_path / "ff.safetensors"))
    with pytest.raises(KeyError, match=r"unsupported LoRA keys.*ff\.conv_inverted"):
        load_lora(base_model(depth=3), tmp_path / "ff.safetensors")
    with pytest.raises(FileNotFoundError, match="no LoRA file"):
        load_lora(base_model(), tmp_path / "nowhere")
    model = load_lora(base_model(depth=3), tmp_path / "bare.safetensors")
    with pytest.raises(ValueError, match="already has LoRA"):
        load_lora(model, tmp_path / "d3")
