"""`sana_text.pretrain`: the Gemma-style tokenizer, causal-LM pretraining, exact resume, and the saved folder as a
text encoder. Captions come from a small template grammar, so nothing is downloaded."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import pytest
import torch

from sana_text import COMPLEX_HUMAN_INSTRUCTION, load_text_encoder
from sana_text.pretrain import PretrainConfig, PretrainReport, gemma2_config, pretrain_causal_lm, train_tokenizer

COLORS = ("red", "orange", "yellow", "green", "blue", "purple")
SHAPES = ("circle", "square", "triangle", "star")
RELATIONS = ("to the left of", "to the right of", "above", "below")
# A tiny model: one step takes milliseconds, 80 steps learn the grammar well below the uniform perplexity.
TINY = PretrainConfig(
    vocab_size=400,
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    num_kv_heads=1,
    head_dim=16,
    intermediate_size=64,
    max_length=24,
    steps=80,
    batch_size=16,
    lr=1e-2,
    warmup_steps=5,
    save_every=40,
    heldout_fraction=0.1,
)
LOSS_DROP = 3.0  # the mean loss of the last 10 steps is at least this many times below that of the first 5


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest, and the losses below are thread-count exact


def _captions() -> list[str]:
    """Single objects, counts and pairs in a relation: 24 + 12 + 120 captions of a shapes-world grammar."""
    singles = [f"a {c} {s}" for c, s in itertools.product(COLORS, SHAPES)]
    counts = [f"{n} {c} {s}s" for n, c, s in zip(itertools.cycle(("two", "three", "four")), COLORS * 2, SHAPES * 3)]
    pairs = itertools.product(COLORS, SHAPES, RELATIONS, COLORS[::-1], SHAPES[::-1])
    relations = [f"a {c} {s} {r} a {c2} {s2}" for c, s, r, c2, s2 in itertools.islice(pairs, 0, 1200, 10)]
    return singles + counts + relations


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> PretrainReport:
    torch.set_num_threads(1)
    return pretrain_causal_lm(_captions(), tmp_path_factory.mktemp("lm"), TINY)


# --- the tokenizer ------------------------------------------------------------------------------------------------


def test_train_tokenizer_is_gemma_style_and_deterministic(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = train_tokenizer(_captions(), vocab_size=400)
    assert tok.backend_tokenizer.to_str() == train_tokenizer(_captions(), vocab_size=400).backend_tokenizer.to_str()
    assert len(tok) <= 400 and tok.convert_ids_to_tokens([0, 1, 2, 3]) == ["<pad>", "<eos>", "<bos>", "<unk>"]
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    tokens = tok.convert_ids_to_tokens(tok("a red circle above a blue star")["input_ids"])
    assert tokens == ["<bos>", "a", "▁red", "▁circle", "▁above", "▁a", "▁blue", "▁star"]  # merges stay in words
    batch = tok(["a red circle", "a red circle above a blue star"], padding=True)
    assert batch["input_ids"][0][-1] == 0 and batch["attention_mask"][0][-1] == 0  # right padding with <pad>
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "A Cat 一只猫 🐱, unseen words"
    ids = loaded(text)["input_ids"]
    assert ids == tok(text)["input_ids"] and 3 not in ids  # byte fallback: never <unk>
    assert "<0xF0>" in loaded.convert_ids_to_tokens(ids)
    assert loaded.decode(ids, skip_special_tokens=True) == text


def test_train_tokenizer_bad_input() -> None:
    with pytest.raises(ValueError, match="texts is empty"):
        train_tokenizer([])
    with pytest.raises(ValueError, match="texts is empty"):
        train_tokenizer(["", "  "])
    with pytest.raises(TypeError, match="not a single string"):
        train_tokenizer("a red circle")
    with pytest.raises(TypeError, match="only strings"):
        train_tokenizer(["a red circle", None])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"vocab_size must be an int >= \d+ .*256 byte tokens"):
        train_tokenizer(_captions(), vocab_size=100)
    with pytest.raises(ValueError, match="min_frequency"):
        train_tokenizer(_captions(), min_frequency=0)


# --- pretraining --------------------------------------------------------------------------------------------------


def test_pretraining_learns_the_captions(trained: PretrainReport) -> None:
    losses = trained.losses
    assert trained.steps == len(losses) == TINY.steps and trained.resumed_from == 0
    first, last = sum(losses[:5]) / 5, sum(losses[-10:]) / 10
    assert first > LOSS_DROP * last, (first, last)
    # a model that learned nothing has the vocabulary size as perplexity; this grammar is nearly deterministic
    assert trained.heldout_perplexity < trained.uniform_perplexity / 20, trained.heldout_perplexity
    assert trained.num_heldout_texts == round(0.1 * len(set(_captions())))
    assert trained.weight_bytes == 4 * trained.num_parameters  # fp32, the tied output matrix counted once
    with open(trained.out_dir / "pretrain_log.csv") as f:
        log = list(csv.DictReader(f))
    assert [int(r["step"]) for r in log] == list(range(1, TINY.steps + 1))
    assert [float(r["loss"]) for r in log] == list(losses)
    saved = json.loads((trained.out_dir / "pretrain_report.json").read_text())
    assert saved["heldout_perplexity"] == trained.heldout_perplexity


def test_gemma2_quirks_are_set_for_the_small_size(trained: PretrainReport) -> None:
    config = json.loads((trained.out_dir / "config.json").read_text())
    assert config["model_type"] == "gemma2" and config["architectures"] == ["Gemma2ForCausalLM"]
    assert config["query_pre_attn_scalar"] == config["head_dim"] == TINY.head_dim  # not Gemma-2-2B's 256
    assert config["sliding_window"] == config["max_position_embeddings"] == TINY.context_length
    assert (config["attn_logit_softcapping"], config["final_logit_softcapping"]) == (50.0, 30.0)
    assert config["tie_word_embeddings"] is True
    tok = train_tokenizer(_captions(), vocab_size=400)
    assert gemma2_config(TINY, tok).vocab_size == len(tok)


@pytest.mark.parametrize("chi", ["off", "on"])
def test_saved_folder_is_a_text_encoder(trained: PretrainReport, chi: str) -> None:
    from transformers import AutoModelForCausalLM

    instruction = None if chi == "off" else COMPLEX_HUMAN_INSTRUCTION
    encoder = load_text_encoder(trained.out_dir, chi=instruction, max_length=12, dtype=torch.float32)
    assert type(encoder.model).__name__ == "Gemma2Model" and encoder.embed_dim == TINY.hidden_size
    lm = AutoModelForCausalLM.from_pretrained(trained.out_dir, dtype=torch.float32)
    assert torch.equal(encoder.model.embed_tokens.weight, lm.model.embed_tokens.weight)  # trained, not re-initialised
    emb, mask = encoder.encode(["a red circle above a blue star", "a green circle above a blue star"])
    assert emb.shape == (2, 12, TINY.hidden_size) and mask[:, :8].all() and not mask[:, 8:].any()
    # kept positions: BOS, "a" (with CHI merged with the instruction's trailing space), the colour word, ...
    same = slice(0, 2)
    assert torch.equal(emb[0, same], emb[1, same])
    differ = (emb[0] - emb[1]).norm(dim=-1) / emb[0].norm(dim=-1)  # (L,)
    assert differ[2] > 0.05 and (differ[3:8] > 1e-5).all(), differ  # the colour token, and every later one sees it


class _CrashError(Exception):
    pass


def _stop_at(step: int):
    def progress(done: int, loss: float) -> None:
        if done == step:
            raise _CrashError

    return progress


def test_interrupted_run_resumes_exactly(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    config = PretrainConfig(**{**TINY.__dict__, "steps": 12, "save_every": 5})
    whole = pretrain_causal_lm(_captions(), tmp_path / "whole", config)
    with pytest.raises(_CrashError):  # a crash after step 8: the last checkpoint is step 5's
        pretrain_causal_lm(_captions(), tmp_path / "cut", config, progress=_stop_at(8))
    assert [p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()] == ["step_0000005"]
    resumed = pretrain_causal_lm(_captions(), tmp_path / "cut", config)
    assert resumed.resumed_from == 5 and resumed.losses == whole.losses  # bit-identical
    assert resumed.heldout_perplexity == whole.heldout_perplexity
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a finished run resumes to itself; another config, other texts or another tokenizer cannot resume it
    assert pretrain_causal_lm(_captions(), tmp_path / "cut", config).resumed_from == 12
    with pytest.raises(ValueError, match=r"config fields \['lr'\] differ"):
        pretrain_causal_lm(_captions(), tmp_path / "cut", PretrainConfig(**{**config.__dict__, "lr": 1e-3}))
    with pytest.raises(ValueError, match="texts differ"):
        pretrain_causal_lm(_captions()[:-1], tmp_path / "cut", config)
    with pytest.raises(ValueError, match="tokenizer differs"):
        pretrain_causal_lm(_captions(), tmp_path / "cut", config, tokenizer=train_tokenizer(COLORS, vocab_size=300))
    restarted = pretrain_causal_lm(_captions(), tmp_path / "cut", config, resume=False)
    assert restarted.resumed_from == 0 and restarted.losses == whole.losses


def test_pretrain_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="texts is empty"):
        pretrain_causal_lm([], tmp_path, TINY)
    with pytest.raises(ValueError, match="2 distinct texts"):
        pretrain_causal_lm(["a red circle"] * 3, tmp_path, TINY)
    with pytest.raises(TypeError, match="PretrainConfig"):
        pretrain_causal_lm(_captions(), tmp_path, {"steps": 3})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"PretrainConfig.steps must be an int >= 1"):
        PretrainConfig(steps=0)
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        PretrainConfig(num_heads=3, num_kv_heads=2)
    with pytest.raises(ValueError, match="max_length <= context_length"):
        PretrainConfig(max_length=128, context_length=64)
    with pytest.raises(ValueError, match="heldout_fraction"):
        PretrainConfig(heldout_fraction=1.0)
    tokenizer = train_tokenizer(_captions(), vocab_size=400)
    tokenizer.pad_token = None
    with pytest.raises(ValueError, match="no pad token"):
        pretrain_causal_lm(_captions(), tmp_path, TINY, tokenizer=tokenizer)
    assert not (tmp_path / "checkpoints").exists()  # nothing was trained
