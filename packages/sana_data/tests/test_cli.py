"""The `sana-data` command, including captioning and clip scores with tiny random HF models built here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sana_data import FolderSource, ShardSource
from sana_data.cli import main

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "blue", "circle", "square", "of", "the", "left"]
TINY = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}


def _tokenizer():
    import transformers

    return transformers.BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)})  # transformers >= 5 signature


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer random BLIP captioner whose LM bias makes it always say "red"."""
    import transformers

    folder = tmp_path_factory.mktemp("blip")
    image_processor = transformers.BlipImageProcessor(size={"height": 32, "width": 32})
    transformers.BlipProcessor(image_processor=image_processor, tokenizer=_tokenizer()).save_pretrained(folder)
    torch.manual_seed(0)
    text = {**TINY, "vocab_size": len(WORDS), "max_position_embeddings": 64, "bos_token_id": 2, "sep_token_id": 3,
            "pad_token_id": 0}  # fmt: skip
    config = transformers.BlipConfig(text_config=text, vision_config={**TINY, "image_size": 32, "patch_size": 16})
    model = transformers.BlipForConditionalGeneration(config)
    with torch.no_grad():
        head = model.text_decoder.cls.predictions
        for bias in {id(b): b for b in (head.bias, head.decoder.bias) if b is not None}.values():
            bias[WORDS.index("red")] = 50.0
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import transformers

    folder = tmp_path_factory.mktemp("clip")
    image_processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    transformers.CLIPProcessor(image_processor=image_processor, tokenizer=_tokenizer()).save_pretrained(folder)
    torch.manual_seed(0)
    text = {**TINY, "vocab_size": len(WORDS), "max_position_embeddings": 64, "eos_token_id": 3, "pad_token_id": 0}
    config = transformers.CLIPConfig(text_config=text, vision_config={**TINY, "image_size": 32, "patch_size": 16},
                                     projection_dim=8)  # fmt: skip
    transformers.CLIPModel(config).save_pretrained(folder)
    return folder


def test_shapes_folder_and_shards(tmp_path: Path, capsys) -> None:
    assert main(["shapes", str(tmp_path / "f"), "-n", "6", "--seed", "4", "--sizes", "64x64,64x96"]) == 0
    assert main(["shapes", str(tmp_path / "s"), "-n", "6", "--seed", "4", "--sizes", "64x64,64x96",
                 "--format", "shards", "--samples-per-shard", "4"]) == 0  # fmt: skip
    folder, shards = FolderSource(tmp_path / "f", caption_suffixes=["_captions"]), ShardSource(tmp_path / "s")
    assert len(folder) == len(shards) == 6
    assert folder.load(5).extra["shapes"] == shards.load(5).extra["shapes"]
    assert json.loads((tmp_path / "f" / "meta_data.json").read_text())["img_names"][0] == "00000000.png"


def test_shapes_object_scale(tmp_path: Path, capsys) -> None:
    from sana_data import ground_truth, sample_scene

    assert main(["shapes", str(tmp_path / "f"), "-n", "3", "--sizes", "96x96", "--object-scale", "1.5"]) == 0
    sample = FolderSource(tmp_path / "f", caption_suffixes=["_captions"]).load(2)
    truth = ground_truth(sample_scene(0, 2, sizes=[(96, 96)], object_scale=1.5))
    assert sample.extra["shapes"] == json.loads(json.dumps(truth)) and sample.extra["object_scale"] == 1.5
    for bad in ("3", "0", "x"):
        with pytest.raises(SystemExit) as exit_info:
            main(["shapes", str(tmp_path / "g"), "-n", "3", "--object-scale", bad])
        assert exit_info.value.code == 2 and "--object-scale must be a number in (0, 2.5]" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()


def test_to_shards_index_meta_and_check(toy_dir: Path, tmp_path: Path, capsys) -> None:
    assert main(["to-shards", str(toy_dir), "--out", str(tmp_path / "s"), "--samples-per-shard", "5",
                 "--caption-suffix", "_captions"]) == 0  # fmt: skip
    (tmp_path / "s" / "wids-meta.json").unlink()
    assert main(["index", str(tmp_path / "s")]) == 0
    assert len(json.loads((tmp_path / "s" / "wids-meta.json").read_text())["shardlist"]) == 3
    assert main(["check", str(tmp_path / "s"), "--table", "256"]) == 0
    out = capsys.readouterr().out
    assert "12 usable samples; no sample skipped" in out and "1.0:" in out
    assert main(["check", str(tmp_path / "missing")]) == 2


def test_caption_command_writes_resumable_sidecars(toy_dir: Path, tiny_blip: Path, tmp_path: Path, capsys) -> None:
    import shutil

    data = Path(shutil.copytree(toy_dir, tmp_path / "data"))
    (data / "00000001_vlm.json").write_text(json.dumps({"00000001": {"vlm": "already here"}}))
    args = ["caption", str(data), "--model", str(tiny_blip), "--max-new-tokens", "3", "--batch-size", "5"]
    assert main(args) == 0
    assert "captioned 11 samples" in capsys.readouterr().out  # the existing one is kept, not redone
    sample = FolderSource(data, caption_suffixes=["_vlm"]).load(0)
    assert sample.captions["vlm"] == "red red red"
    assert json.loads((data / "00000001_vlm.json").read_text())["00000001"]["vlm"] == "already here"
    assert main(args) == 0 and "captioned 0 samples" in capsys.readouterr().out


def test_clipscore_command_scores_every_caption_type(toy_dir: Path, tiny_clip: Path, tmp_path: Path, capsys) -> None:
    from PIL import Image

    from sana_data.vlm import ClipScorer

    assert main(["to-shards", str(toy_dir), "--out", str(tmp_path / "s"), "--samples-per-shard", "7",
                 "--caption-suffix", "_captions"]) == 0  # fmt: skip
    args = ["clipscore", str(tmp_path / "s"), "--model", str(tiny_clip), "--caption-suffix", "_captions"]
    assert main(args) == 0 and "scored 12 samples" in capsys.readouterr().out
    source = ShardSource(tmp_path / "s", caption_suffixes=["_captions"], clipscore_suffixes=["_clip_score"])
    sample = source.load(8)
    assert set(sample.clip_scores) == {"prompt", "tags", "long"}
    scorer = ClipScorer(tiny_clip)
    expected = scorer([sample.image], [sample.captions["long"]])[0]
    assert sample.clip_scores["long"] == pytest.approx(float(expected), abs=1e-3)
    assert min(sample.clip_scores.values()) >= 0.0 and max(sample.clip_scores.values()) <= 100.0
    red = Image.new("RGB", (32, 32), (255, 0, 0))
    assert torch.allclose(scorer([red, red], ["a red circle"] * 2), scorer([red], ["a red circle"]).repeat(2))
    assert main(args) == 0 and "scored 0 samples" in capsys.readouterr().out  # resumable
