"""The embedded default model: the shipped weights generate what they are asked, and the recipe that made them runs.

CI does not retrain: the recipe runs here with `QUICK` settings (a few steps per stage) on a tiny data set.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sana import embedded
from sana.embedded import DEFAULT_MODEL_DIR, QUICK, RecipeSettings, default_model_path, train_embedded

MAX_BYTES = 25 * 2**20  # the budget for the shipped weights and configs


@pytest.fixture(scope="module")
def default_pipe():
    from sana.pipeline import SanaPipeline

    return SanaPipeline.from_pretrained(default_model_path())


def test_the_default_model_ships_inside_the_package_within_budget():
    folder = default_model_path()
    assert folder == DEFAULT_MODEL_DIR and folder.is_relative_to(Path(embedded.__file__).parent)
    total = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert total <= MAX_BYTES, f"embedded model is {total / 2**20:.1f} MiB"
    card = (folder / "README.md").read_text()
    for section in ("## Parts", "## Data and training", "## Evaluation", "## Reproduce"):
        assert section in card
    record = json.loads((folder / "recipe.json").read_text())
    assert embedded.recorded_settings(record) == vars(RecipeSettings()), "shipped with non-default settings"
    assert set(embedded.STAGES) <= set(record["done"])


def test_the_shipped_model_card_is_what_its_recipe_record_gives():
    """README.md of the shipped folder is `model_card` of its own recipe.json: the card can't drift from the code
    that writes it or from the record of the run (the scores, the times, the settings)."""
    record = json.loads((DEFAULT_MODEL_DIR / "recipe.json").read_text())
    assert embedded.model_card(DEFAULT_MODEL_DIR, record) == (DEFAULT_MODEL_DIR / "README.md").read_text()
    assert embedded.recorded_settings(record) == vars(RecipeSettings())  # the defaults are the shipped model's


def test_the_default_model_folder_carries_its_settings(default_pipe):
    assert default_pipe.config.model.image_size == 256
    assert default_pipe.config.model.aspect_ratio_type == "ASPECT_RATIO_256"
    assert default_pipe.text_encoder.instruction == ""  # trained without CHI: prompts are encoded as written
    assert default_pipe.text_encoder.skip_layers == RecipeSettings().te_skip_layers  # the features it was trained on


def test_a_skip_layers_override_reaches_the_text_encoder_and_the_config():
    from sana.pipeline import SanaPipeline

    pipe = SanaPipeline.from_pretrained(default_model_path(), overrides={"text_encoder.skip_layers": 0})
    assert pipe.text_encoder.skip_layers == 0 and pipe.config.text_encoder.skip_layers == 0


@pytest.mark.parametrize("prompt", ["a red circle", "two blue squares", "a yellow star to the left of a green diamond"])
def test_the_default_model_draws_the_shapes_world(default_pipe, prompt):
    """Its images look like the world's: most pixels are one of the world's plain background colours (a broken
    model, a wrong latent scale or noise fails this). Whether the named objects are right is what
    `sana eval shapes` measures (see the model card): the shipped model is not yet good at it."""
    import numpy as np

    from sana_data.shapes import BACKGROUNDS

    images = default_pipe([prompt] * 2, height=256, width=256, num_inference_steps=10, guidance_scale=4.5, seed=0,
                          output_type="pil", progress=False)  # fmt: skip
    palette = np.array(list(BACKGROUNDS.values()), dtype=np.float32)  # (4, 3)
    for image in images:
        pixels = np.asarray(image, dtype=np.float32).reshape(-1, 1, 3)
        near = (np.abs(pixels - palette).max(axis=2) <= 24).any(axis=1)  # within 24 levels of a background
        assert near.mean() > 0.5, f"{prompt!r}: only {near.mean():.0%} of the pixels look like a background"


@pytest.mark.parametrize("colour,shape", [("red", "circle"), ("blue", "square"), ("purple", "star")])
def test_the_default_model_draws_the_named_colour(default_pipe, colour, shape):
    """The evaluator's detector finds an object of the named colour, and no other colour, in at least 3 of 4
    images of "a {colour} {shape}" (10 steps, the default CFG). The shipped model got 4 of 4 for these prompts
    and 104 of 120 over all 30 colour-shape pairs; its shapes are mostly wrong, so they are not checked here."""
    from sana.eval import detect

    images = default_pipe([f"a {colour} {shape}"] * 4, height=256, width=256, num_inference_steps=10, seed=0,
                          output_type="pil", progress=False)  # fmt: skip
    found = [sorted({d.color for d in detect(image)}) for image in images]
    assert sum(f == [colour] for f in found) >= 3, f"a {colour} {shape}: colours found per image {found}"


def test_sana_generate_uses_the_default_model_without_a_model_path(tmp_path, capsys):
    from sana.cli import main
    from sana.images import read_metadata

    assert main(["generate", "a red circle to the left of a blue square", "--steps", "4", "-o", str(tmp_path)]) == 0
    pngs = sorted(tmp_path.glob("*.png"))
    assert len(pngs) == 1
    from PIL import Image

    with Image.open(pngs[0]) as image:
        assert image.size == (256, 256)
    assert read_metadata(pngs[0])["prompt"] == "a red circle to the left of a blue square"


def test_a_missing_default_model_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(embedded, "DEFAULT_MODEL_DIR", tmp_path / "default_model")
    with pytest.raises(FileNotFoundError, match="embedded default model is missing"):
        default_model_path()


def test_recipe_settings_are_validated():
    with pytest.raises(ValueError, match="ae_crop must be a multiple of 32"):
        RecipeSettings(ae_crop=48)
    with pytest.raises(ValueError, match="dit_steps must be an int >= 1"):
        RecipeSettings(dit_steps=0)
    with pytest.raises(ValueError, match="dit_lr must be > 0"):
        RecipeSettings(dit_lr=0.0)
    with pytest.raises(ValueError, match="te_skip_layers must be an int >= 0"):
        RecipeSettings(te_skip_layers=-1)
    assert RecipeSettings(te_skip_layers=0).te_skip_layers == 0  # 0: the LM's last hidden state, Sana's choice
    with pytest.raises(ValueError, match="lm_caption_chain must be 0 or 1, got 2"):
        RecipeSettings(lm_caption_chain=2)
    with pytest.raises(ValueError, match="dit_bf16 must be 0 or 1, got 2"):
        RecipeSettings(dit_bf16=2)
    with pytest.raises(ValueError, match="dit_width must be a multiple of 32"):
        RecipeSettings(dit_width=100)
    with pytest.raises(ValueError, match="dit_depth must be an int >= 1"):
        RecipeSettings(dit_depth=0)
    with pytest.raises(ValueError, match=r"data_object_scale: object_scale must be a number in \(0, 2\.5\]"):
        RecipeSettings(data_object_scale=3.0)
    with pytest.raises(ValueError, match="data_object_scale must be > 0"):
        RecipeSettings(data_object_scale=0.0)


def test_the_data_stage_draws_the_training_images_at_the_object_scale(tmp_path):
    from sana_data import FolderSource, ground_truth, sample_scene

    s = embedded.recipe_settings(RecipeSettings(images=4), ["data_object_scale=2"])
    assert s.data_object_scale == 2.0 and embedded.first_stage_of("data_object_scale") == "data"
    assert embedded._stage_data(tmp_path, s, print)["object_scale"] == 2.0
    sample = FolderSource(tmp_path / "data", caption_suffixes=["_captions"]).load(3)
    truth = ground_truth(sample_scene(0, 3, split="train", object_scale=2.0))
    assert sample.extra["object_scale"] == 2.0 and sample.extra["shapes"] == json.loads(json.dumps(truth))


def test_the_caption_chain_gives_the_lm_each_prompt_with_its_tags_and_long_caption(tmp_path):
    """`lm_caption_chain=1`: the text encoder pretrains on "prompt. tags. long", so a word must be carried forward
    to be predicted again; 0: the prompts alone. A missing sidecar is an error naming the image."""
    from sana_data import ShapesSource, write_folder

    write_folder(ShapesSource(3, seed=0, split="train"), tmp_path / "data")
    prompts = embedded._captions(tmp_path)
    chained = embedded._captions(tmp_path, chain=True)
    assert len(prompts) == len(chained) == 3
    for stem, prompt, text in zip(("00000000", "00000001", "00000002"), prompts, chained, strict=True):
        assert prompt == (tmp_path / "data" / f"{stem}.txt").read_text().strip()
        sidecar = json.loads((tmp_path / "data" / f"{stem}_captions.json").read_text())[stem]
        assert text == f"{prompt}. {sidecar['tags']}. {sidecar['long']}"
    (tmp_path / "data" / "00000001_captions.json").unlink()
    with pytest.raises(ValueError, match=r"lm_caption_chain=1 needs the tags and long captions of 00000001\.txt"):
        embedded._captions(tmp_path, chain=True)
    assert embedded._captions(tmp_path) == prompts  # the prompts alone need no sidecar


def test_set_assignments_override_recipe_settings_by_their_field_types():
    s = embedded.recipe_settings(RecipeSettings(), ["ae_latent_channels=16", "dit_lr=1e-4", " seed = 3"])
    assert (s.ae_latent_channels, s.dit_lr, s.seed) == (16, 1e-4, 3)
    assert s.dit_steps == RecipeSettings().dit_steps
    for bad, message in [("dit_step=3", "NAME one of images, seed"), ("dit_steps", "expected NAME=VALUE"),
                         ("dit_steps=1.5", "dit_steps takes int values, got '1.5'"),
                         ("dit_lr=fast", "dit_lr takes float values"),
                         ("ae_latent_channels=0", "ae_latent_channels must be an int >= 1")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            embedded.recipe_settings(RecipeSettings(), [bad])


def test_latent_channels_set_the_autoencoder_and_the_transformer_config(tmp_path):
    from dcae.train import EMBEDDED_F32

    assert embedded.autoencoder_config(RecipeSettings(ae_latent_channels=32)) is EMBEDDED_F32
    c16 = embedded.autoencoder_config(RecipeSettings())  # the shipped model's
    assert (c16.latent_channels, c16.name) == (16, "dc-ae-f32c16-shapes-lite")
    assert c16.widths == EMBEDDED_F32.widths
    text = tmp_path / "text_encoder"
    text.mkdir()
    (text / "config.json").write_text(json.dumps({"hidden_size": 128}))
    cfg = embedded.recipe_config(tmp_path, RecipeSettings(ae_latent_channels=16, dit_bf16=0))
    assert cfg.vae.vae_latent_dim == 16 and cfg.model.mixed_precision == "fp32"
    # dit_bf16=1: the transformer stage trains under bf16 autocast, a setting of that stage alone
    assert embedded.recipe_config(tmp_path, RecipeSettings(dit_bf16=1)).model.mixed_precision == "bf16"
    assert embedded.first_stage_of("dit_bf16") == "transformer"
    # dit_width / dit_depth size the transformer (cross-attention heads 32 wide, as the linear-attention ones)
    from sana.config import dit_config

    graph = dit_config(embedded.recipe_config(tmp_path, RecipeSettings(dit_width=128, dit_depth=6)))
    assert (graph.hidden_size, graph.depth, graph.cross_attention_heads, graph.linear_heads) == (128, 6, 4, 4)
    default = dit_config(embedded.recipe_config(tmp_path, RecipeSettings(dit_width=192, dit_depth=8)))
    assert (default.hidden_size, default.depth, default.cross_attention_heads) == (192, 8, 6)  # the preset's
    assert embedded.first_stage_of("dit_width") == embedded.first_stage_of("dit_depth") == "transformer"


def test_a_run_recorded_before_a_setting_existed_reads_it_as_its_default(tmp_path):
    """recipe.json files written before `ae_latent_channels` existed (runs/embedded4's, say) still resume: the
    missing field is what those runs used, 32 channels, not today's default; a real change is still caught."""
    old = {k: v for k, v in vars(QUICK).items() if k != "ae_latent_channels"}
    record = {"settings": old, "done": ["data"], "seconds": {"data": 1.0}, "results": {}, "machine": {}, "calls": []}
    (tmp_path / "recipe.json").write_text(json.dumps(record))
    assert RecipeSettings().ae_latent_channels != 32
    with pytest.raises(ValueError, match=r"ae_latent_channels: 32 -> 16.*--redo-from autoencoder"):
        embedded._open_record(tmp_path, QUICK)
    opened = embedded._open_record(tmp_path, RecipeSettings(**{**vars(QUICK), "ae_latent_channels": 32}))
    assert opened["done"] == ["data"] and opened["settings"]["ae_latent_channels"] == 32
    # what the sweeps train more transformers with: the folder's own settings, not today's defaults
    assert embedded.work_settings(tmp_path) == RecipeSettings(**{**vars(QUICK), "ae_latent_channels": 32})
    assert embedded.work_settings(tmp_path / "new") == RecipeSettings()
    # runs from before the caption chain pretrained the LM on the prompts alone: today's default (the chain) is a
    # change; runs from before data_object_scale drew scale-1 objects: today's 1.5 is a change of the data stage
    before_chain = {k: v for k, v in vars(QUICK).items() if k != "lm_caption_chain"}
    (tmp_path / "recipe.json").write_text(json.dumps({**record, "settings": before_chain}))
    assert QUICK.lm_caption_chain == 1
    with pytest.raises(ValueError, match=r"lm_caption_chain: 0 -> 1.*--redo-from text_encoder"):
        embedded._open_record(tmp_path, QUICK)
    assert embedded._open_record(tmp_path, RecipeSettings(**{**vars(QUICK), "lm_caption_chain": 0}))["done"] == ["data"]
    before_scale = {k: v for k, v in vars(QUICK).items() if k != "data_object_scale"}
    (tmp_path / "recipe.json").write_text(json.dumps({**record, "settings": before_scale}))
    with pytest.raises(ValueError, match=r"data_object_scale: 1\.0 -> 1\.5.*--redo-from data"):
        embedded._open_record(tmp_path, QUICK)
    assert embedded._open_record(tmp_path, RecipeSettings(**{**vars(QUICK), "data_object_scale": 1.0}))["done"] == [
        "data"
    ]
    # runs from before dit_bf16 trained the transformer in fp32
    before_bf16 = {k: v for k, v in vars(QUICK).items() if k != "dit_bf16"}
    (tmp_path / "recipe.json").write_text(json.dumps({**record, "settings": before_bf16}))
    assert embedded._open_record(tmp_path, RecipeSettings(**{**vars(QUICK), "dit_bf16": 0}))["done"] == ["data"]
    # runs from before dit_width / dit_depth trained the sana-shapes preset's 192 x 8
    before_size = {k: v for k, v in vars(QUICK).items() if k not in ("dit_width", "dit_depth")}
    (tmp_path / "recipe.json").write_text(json.dumps({**record, "settings": before_size}))
    assert embedded._open_record(tmp_path, RecipeSettings(**{**vars(QUICK), "dit_width": 192, "dit_depth": 8}))[
        "done"
    ] == ["data"]
    # a run from before the decoder stage had none: its missing settings are a change, so the stage is not skipped
    before = {k: v for k, v in vars(QUICK).items() if k not in ("dec_steps", "dec_lr")}
    (tmp_path / "recipe.json").write_text(json.dumps({**record, "settings": before}))
    with pytest.raises(ValueError, match=r"dec_steps: None -> 2.*--redo-from decoder"):
        embedded._open_record(tmp_path, QUICK)


@pytest.mark.slow
def test_sana_train_embedded_set_trains_another_latent_width(tmp_path, capsys):
    """`sana train-embedded --quick --set ae_latent_channels=8 --set lm_caption_chain=0 --set dit_bf16=1`: the
    autoencoder, the transformer and the card all use 8 latent channels, the text encoder pretrains on the prompts
    alone (the default, the caption chain, runs in the recipe test below), the transformer trains under bf16
    autocast, and the pipeline generates with them."""
    from sana.cli import main
    from sana.pipeline import SanaPipeline

    work = tmp_path / "work"
    argv = ["train-embedded", "--quick", "--work-dir", str(work), "--set", "ae_latent_channels=8"]
    assert main([*argv, "--set", "dit_steps=2", "--set", "lm_caption_chain=0", "--set", "dit_bf16=1"]) == 0
    record = json.loads((work / "recipe.json").read_text())
    assert record["settings"]["ae_latent_channels"] == 8 and record["results"]["transformer"]["steps"] == 2
    pipe = SanaPipeline.from_pretrained(work / "model")
    assert pipe.autoencoder.latent_channels == 8 and pipe.autoencoder.config.name == "dc-ae-f32c8-shapes-lite"
    assert pipe.denoiser.config.in_channels == 8
    card = (work / "model" / "README.md").read_text()
    assert "DC-AE f32, 8 latent channels" in card and "of 64 texts (the images' prompts)" in card
    assert "AdamW lr 0.0003, bf16 autocast (fp32 weights)" in card
    assert f"-core CPU ({torch.backends.cpu.get_cpu_capability()})" in card  # the record names the CPU's kind
    image = pipe("a red circle", height=256, width=256, num_inference_steps=2, seed=0, progress=False)
    assert image.shape == (1, 3, 256, 256)
    capsys.readouterr()
    assert main(["train-embedded", "--quick", "--work-dir", str(work), "--set", "dit_steps=2"]) == 2
    assert f"ae_latent_channels: 8 -> {RecipeSettings().ae_latent_channels}" in capsys.readouterr().err
    assert main(["train-embedded", "--quick", "--work-dir", str(work), "--set", "ae_latent_channel=8"]) == 2
    assert "expected NAME=VALUE with NAME one of" in capsys.readouterr().err


def test_the_recipe_command_says_its_time_on_a_cpu_without_avx512(tmp_path, monkeypatch, capsys):
    """On a CPU without AVX-512 the default recipe takes longer than 90 minutes (measured on a 2-core AVX2 EPYC):
    `sana train-embedded` says so and how many steps keep to 90, then runs what it was asked to."""
    from sana import _compose
    from sana.cli import main

    calls = []
    monkeypatch.setattr(embedded, "train_embedded", lambda *a, **k: calls.append(a[1]) or {"seconds": {}})
    monkeypatch.setattr(_compose, "slow_bf16", lambda device: True)
    work = tmp_path / "work"
    assert main(["train-embedded", "--work-dir", str(work), "--threads", "2"]) == 0
    out = capsys.readouterr().out
    steps, batch = RecipeSettings().dit_steps, RecipeSettings().dit_batch_size
    minutes = 31.9 + steps * 0.40 * (batch / 16) ** 0.8 / 60
    assert minutes > 90  # the defaults take 81 minutes on the AVX512-BF16 CPU, not on this one
    assert "has no AVX-512" in out and f"({steps} steps of batch {batch}) take about {minutes:.0f} min there" in out
    assert "--set dit_steps=14000 keeps to about 86 min" in out  # batch 8's suggestion
    assert calls == [RecipeSettings()]  # a note, not a refusal
    # the suggested steps, a finished transformer stage, bf16 (the training loop warns) or AVX-512: no note
    assert main(["train-embedded", "--work-dir", str(work), "--set", "dit_steps=14000"]) == 0
    assert "AVX-512" not in capsys.readouterr().out
    assert embedded.slow_cpu_note(work, RecipeSettings(dit_bf16=1)) is None
    assert embedded.slow_cpu_note(work, RecipeSettings(dit_batch_size=8, dit_steps=10500)) is None  # 72 min
    # batch 16: its own estimate (the batch-8 step is taken as (8 / 16) ** 0.8 of it) and its own suggestion
    long16 = embedded.slow_cpu_note(work, RecipeSettings(dit_batch_size=16, dit_steps=10500))
    assert (
        "(10500 steps of batch 16) take about 102 min" in long16 and "--set dit_steps=8000 keeps to about 85" in long16
    )
    assert "9,000 such steps scored 0.313" in long16  # the measured batch-16 run there
    for batch in (4, 8, 12, 16, 32):  # every suggestion lands near 85 minutes, inside the 90
        assert 83 < embedded.avx2_minutes(embedded.avx2_steps(batch), batch) < 87
    assert "0.313" not in embedded.slow_cpu_note(work, RecipeSettings())  # that measured score is batch 16's
    work.mkdir()
    (work / "recipe.json").write_text(json.dumps({"done": ["data", "autoencoder", "text_encoder", "features"]}))
    assert "about" in embedded.slow_cpu_note(work, RecipeSettings())
    (work / "recipe.json").write_text(json.dumps({"done": ["data", "autoencoder", "text_encoder", "features",
                                                           "transformer"]}))  # fmt: skip
    assert embedded.slow_cpu_note(work, RecipeSettings()) is None
    monkeypatch.setattr(_compose, "slow_bf16", lambda device: False)
    assert embedded.slow_cpu_note(tmp_path / "other", RecipeSettings()) is None


@pytest.mark.slow
def test_the_recipe_runs_every_stage_resumes_and_refuses_other_settings(tmp_path, monkeypatch):
    """The whole recipe on 48 images and a few steps per stage; an interruption in the transformer stage resumes
    without redoing the stages before it."""
    from sana.pipeline import SanaPipeline

    work, lines = tmp_path / "work", []
    real = embedded._stage_transformer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(embedded, "_stage_transformer", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_embedded(work, QUICK, log=lines.append)
    record = json.loads((work / "recipe.json").read_text())
    assert record["done"] == ["data", "autoencoder", "text_encoder", "features"]
    monkeypatch.setattr(embedded, "_stage_transformer", real)
    lines.clear()
    record = train_embedded(work, QUICK, log=lines.append)
    assert any("autoencoder: done earlier" in line for line in lines)
    assert record["done"][-3:] == ["export", "eval", "card"]
    model = work / "model"
    assert (model / "README.md").is_file() and (model / "recipe.json").is_file()
    assert set(record["results"]["eval"]["scores"]) >= {"overall", "position", "counting"}
    assert record["results"]["autoencoder"]["psnr"] is not None
    gain = record["results"]["eval"]["transformer"]["text_gain"]
    assert gain > 0 and f"Text gain {gain:.3f}" in (model / "README.md").read_text()
    assert "± " in (model / "README.md").read_text().split("the 95% interval from the prompt sample")[0][-20:]
    top = record["results"]["eval"]["ceiling"]
    assert f"reach overall {top['overall']:.3f}" in (model / "README.md").read_text().replace("\n", " ")
    stored = {p.name: p for p in (model / "transformer").glob("*.safetensors")}
    from safetensors import safe_open

    with safe_open(str(next(iter(stored.values()))), framework="pt") as f:
        assert all(f.get_tensor(k).dtype == torch.bfloat16 for k in list(f.keys())[:3])
    pipe = SanaPipeline.from_pretrained(model)
    assert pipe.text_encoder.skip_layers == QUICK.te_skip_layers
    # the decoder stage refined the decoder only: the shipped encoder is the one the cached latents came from
    from dcae import load_dcae

    trained, shipped = load_dcae(work / "autoencoder" / "model"), pipe.autoencoder
    assert all(torch.equal(a, b) for a, b in zip(trained.encoder.state_dict().values(),
                                                 shipped.encoder.state_dict().values(), strict=True))  # fmt: skip
    assert not all(torch.equal(a, b) for a, b in zip(trained.decoder.state_dict().values(),
                                                     shipped.decoder.state_dict().values(), strict=True))  # fmt: skip
    assert shipped.scaling_factor == trained.scaling_factor
    # the shipped encoders reproduce the features the transformer was trained on; the last hidden state would not
    from sana_data import CacheMismatchError, FeatureCache
    from sana_text import TextEncoder

    cache = FeatureCache(work / "features")
    cache.verify(shipped, pipe.text_encoder)
    te = pipe.text_encoder
    with pytest.raises(CacheMismatchError, match="text encoder"):
        cache.verify(shipped, TextEncoder(te.model, te.tokenizer, chi=None, max_length=te.max_length))
    image = pipe("a red circle", height=192, width=320, num_inference_steps=2, seed=0, output_type="pil",
                 progress=False)[0]  # fmt: skip
    assert image.size == (320, 192)
    with pytest.raises(ValueError, match=r"other settings.*dit_steps.*--redo-from transformer"):
        train_embedded(work, RecipeSettings(**{**vars(QUICK), "dit_steps": 4}))

    # --redo-from: new transformer settings reuse the autoencoder, text encoder and features; a setting of an
    # earlier stage is refused before anything is deleted
    with pytest.raises(
        ValueError, match=r"keeps stages that these changed settings affect: ae_lr \(stage 'autoencoder'\)"
    ):
        train_embedded(work, RecipeSettings(**{**vars(QUICK), "ae_lr": 5e-4}), redo_from="transformer")
    with pytest.raises(ValueError, match="unknown stage 'dit'"):
        train_embedded(work, QUICK, redo_from="dit")
    assert json.loads((work / "recipe.json").read_text())["done"][-1] == "card"
    lines.clear()
    redone = train_embedded(work, RecipeSettings(**{**vars(QUICK), "dit_steps": 4}), log=lines.append,
                            redo_from="transformer")  # fmt: skip
    assert any("features: done earlier" in line for line in lines)
    assert not any("transformer: done earlier" in line for line in lines)
    assert redone["results"]["transformer"]["steps"] == 4 and redone["settings"]["dit_steps"] == 4
    assert redone["done"][-3:] == ["export", "eval", "card"]
    assert redone["calls"][-1]["redo_from"] == "transformer"
    assert json.loads((model / "recipe.json").read_text())["settings"]["dit_steps"] == 4
    assert train_embedded(work, RecipeSettings(**{**vars(QUICK), "dit_steps": 4}))["done"] == redone["done"]
    # a new decoder refinement keeps the transformer
    lines.clear()
    again = train_embedded(work, RecipeSettings(**{**vars(QUICK), "dit_steps": 4, "dec_steps": 3}), log=lines.append,
                           redo_from="decoder")  # fmt: skip
    assert any("transformer: done earlier" in line for line in lines)
    assert again["results"]["decoder"]["steps"] == 3 and again["done"][-3:] == ["export", "eval", "card"]
    card = (model / "README.md").read_text()
    assert "from `transformer` (dit_steps: 3 -> 4); then from `decoder` (dec_steps: 2 -> 3)" in card
