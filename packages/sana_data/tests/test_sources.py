"""Every format round trip on files the test writes, and corrupt-file handling."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sana_data import (
    BucketDataset,
    FolderSource,
    HFSource,
    NoUsableSampleError,
    ShapesSource,
    ShardSource,
    open_source,
    write_folder,
    write_meta_data,
    write_shards,
)


def _copy(toy_dir: Path, tmp_path: Path, name: str = "data") -> Path:
    return Path(shutil.copytree(toy_dir, tmp_path / name))


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def test_folder_reads_first_caption_line_and_sizes_without_decoding(toy_dir: Path, tmp_path: Path) -> None:
    data = _copy(toy_dir, tmp_path)
    (data / "meta_data.json").unlink()
    for p in data.glob("*.json"):
        if not p.name.endswith("_captions.json"):
            p.unlink()  # sizes must now come from image headers
    (data / "00000000.txt").write_text("first line\nsecond line\n")
    source = FolderSource(data)
    assert len(source) == 12 and source.report.total == 0
    assert source.load(0).captions["prompt"] == "first line"
    for i in range(len(source)):
        with Image.open(source.image_path(i)) as im:
            assert (source.info(i).height, source.info(i).width) == (im.height, im.width)


def test_folder_with_meta_data_json_and_extension_default(toy_dir: Path, tmp_path: Path) -> None:
    data = _copy(toy_dir, tmp_path)
    (data / "meta_data.json").write_text(json.dumps({"name": "x", "__kind__": "Sana-ImgDataset",
                                                    "img_names": ["00000003", "00000001.png"]}))  # fmt: skip
    source = FolderSource(data)
    assert [source.info(i).key for i in range(len(source))] == ["00000003", "00000001"]


def test_sidecars_give_several_captions_and_scores(toy_dir: Path, tmp_path: Path) -> None:
    data = _copy(toy_dir, tmp_path)
    (data / "00000002_vlm.json").write_text(json.dumps({"00000002": {"prompt": "a vlm caption"}}))
    (data / "00000002_vlm_clip_score.json").write_text(json.dumps({"00000002": {"vlm": 30.5, "prompt": "27"}}))
    source = FolderSource(data, caption_suffixes=["_captions", "_vlm"], clipscore_suffixes=["_vlm_clip_score"])
    sample = source.load(2)
    assert set(sample.captions) == {"prompt", "tags", "long", "vlm"}  # a prompt-only entry takes the suffix's name
    assert sample.captions["vlm"] == "a vlm caption"
    assert sample.clip_scores == {"vlm": 30.5, "prompt": 27.0}


def test_several_folders_concatenate_with_unique_keys(toy_dir: Path, tmp_path: Path) -> None:
    a, b = _copy(toy_dir, tmp_path, "a"), _copy(toy_dir, tmp_path, "b")
    source = FolderSource([a, b])
    keys = [source.info(i).key for i in range(len(source))]
    assert len(source) == 24 and len(set(keys)) == 24 and keys[0] == "a/00000000" and keys[-1] == "b/00000011"


def test_corrupt_files_are_skipped_counted_and_reported(toy_dir: Path, tmp_path: Path, caplog) -> None:
    data = _copy(toy_dir, tmp_path)
    (data / "meta_data.json").unlink()
    (data / "00000001.txt").write_text("")  # empty caption
    (data / "00000002.txt").unlink()  # missing caption
    (data / "00000003.json").write_text("{not json")  # bad json
    (data / "00000004.png").write_bytes(b"garbage, not an image")  # unreadable header
    (data / "00000004.json").unlink()
    png = (data / "00000005.png").read_bytes()
    (data / "00000005.png").write_bytes(png[: len(png) // 2])  # truncated: header fine, pixels not
    source = FolderSource(data, caption_suffixes=["_captions"])
    assert dict(source.report.counts) == {"empty caption": 1, "missing caption": 1, "bad json": 1,
                                          "unreadable image": 1}  # fmt: skip
    assert len(source) == 8 and "skipped 4 samples" in source.report.summary()
    assert "00000003.json" in caplog.text  # a log line per skip

    # The truncated image is found at load time: skipped, counted, replaced by a same-bucket sample.
    dataset = BucketDataset(source, table=256)
    index = next(i for i in range(len(source)) if source.info(i).key == "00000005")
    item = dataset[index]
    assert item["key"] != "00000005" and item["skipped"] == [("corrupt image", "00000005")]
    assert item["aspect_ratio"] == dataset.bucket_keys()[index]
    assert source.report.counts["corrupt image"] == 1


def test_a_folder_without_usable_sample_says_why(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("\n")
    with pytest.raises(NoUsableSampleError, match="1 empty caption"):
        FolderSource(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NoUsableSampleError, match="no image files"):
        FolderSource(empty)


def test_write_meta_data_lists_captioned_images(toy_dir: Path, tmp_path: Path) -> None:
    data = _copy(toy_dir, tmp_path)
    (data / "00000000.txt").unlink()
    meta = json.loads(write_meta_data(data).read_text())
    assert meta["__kind__"] == "Sana-ImgDataset" and len(meta["img_names"]) == 11


def test_folder_to_shards_round_trip(toy_dir: Path, tmp_path: Path) -> None:
    folder = FolderSource(toy_dir, caption_suffixes=["_captions"])
    write_shards(folder, tmp_path / "shards", samples_per_shard=5)
    shards = ShardSource(tmp_path / "shards", caption_suffixes=["_captions"])
    assert len(shards.shards) == 3 and len(shards) == len(folder)
    for i in range(len(folder)):
        a, b = folder.load(i), shards.load(i)
        assert a.key == b.key and a.info == b.info and a.captions == b.captions
        assert np.array_equal(_pixels(a.image), _pixels(b.image))
        assert b.extra["shapes"] == a.extra["shapes"]  # ground truth travels in the per-sample json
    index = json.loads((tmp_path / "shards" / "wids-meta.json").read_text())
    assert index["__kind__"] == "wids-shard-index-v1"
    assert [s["nsamples"] for s in index["shardlist"]] == [5, 5, 2]


@pytest.mark.filterwarnings("ignore:String specifications for transformations:UserWarning")
def test_shards_are_readable_by_wids_and_webdataset(toy_dir: Path, tmp_path: Path) -> None:
    import webdataset as wds
    import wids

    write_shards(FolderSource(toy_dir), tmp_path / "s", samples_per_shard=5)
    by_wids = wids.ShardListDataset(str(tmp_path / "s" / "wids-meta.json"), cache_dir=str(tmp_path / "cache"))
    assert len(by_wids) == 12 and by_wids[7][".json"]["prompt"]
    urls = [str(p) for p in sorted((tmp_path / "s").glob("*.tar"))]
    streamed = list(wds.WebDataset(urls, shardshuffle=False))
    assert [s["__key__"] for s in streamed] == [f"{i:08d}" for i in range(12)]


def test_bad_shard_members_and_truncated_shard_are_skipped(toy_dir: Path, tmp_path: Path) -> None:
    import webdataset as wds

    good = tmp_path / "s"
    write_shards(FolderSource(toy_dir), good, samples_per_shard=6, index=False)
    png = (toy_dir / "00000000.png").read_bytes()
    with wds.TarWriter(str(good / "shard-000002.tar")) as w:
        w.write({"__key__": "badjson", "png": png, "json": b"{oops"})
        w.write({"__key__": "nojson", "png": png})
        w.write({"__key__": "noimage", "json": b'{"prompt": "x", "height": 8, "width": 8}'})
        w.write({"__key__": "noprompt", "png": png, "json": b'{"height": 8, "width": 8}'})
        w.write({"__key__": "ok", "png": png, "json": b'{"prompt": "fine"}'})  # size from the image header
    data = (good / "shard-000001.tar").read_bytes()
    (good / "shard-000000.tar").write_bytes((good / "shard-000000.tar").read_bytes()[:700])  # inside a header
    (good / "shard-000001.tar").write_bytes(data[: len(data) // 2])  # inside a member's data
    source = ShardSource(good)
    counts = dict(source.report.counts)
    assert counts.pop("bad json") == 1 and counts.pop("missing json") == 1 and counts.pop("missing image") == 1
    assert counts.pop("empty caption") == 1
    assert counts.pop("unreadable shard") == 1 and counts.pop("truncated shard") == 1 and not counts
    keys = [source.info(i).key for i in range(len(source))]
    assert keys[0] == "00000006" and keys[-1] == "ok" and 3 <= len(keys) <= 6  # whole members of shard 1 survive
    assert source.info(len(source) - 1).height == Image.open(toy_dir / "00000000.png").height


def test_hf_datasets_source_round_trip(toy_dir: Path) -> None:
    import datasets

    folder = FolderSource(toy_dir, caption_suffixes=["_captions"])
    rows = [folder.load(i) for i in range(len(folder))]
    table = datasets.Dataset.from_dict(
        {"img": [str(folder.image_path(i)) for i in range(len(folder))],
         "caption": [r.captions["prompt"] for r in rows], "long_caption": [r.captions["long"] for r in rows]}
    ).cast_column("img", datasets.Image())  # fmt: skip
    source = HFSource(table, image_column="img", text_column="caption", extra_text_columns=("long_caption",))
    assert len(source) == 12
    for i in (0, 5):
        sample = source.load(i)
        assert sample.captions == {"prompt": rows[i].captions["prompt"], "long_caption": rows[i].captions["long"]}
        assert (sample.info.height, sample.info.width) == (rows[i].info.height, rows[i].info.width)
        assert np.array_equal(_pixels(sample.image), _pixels(rows[i].image))
    with pytest.raises(KeyError, match="columns"):
        HFSource(table, image_column="image")


def test_any_source_to_folder_and_open_source(tmp_path: Path) -> None:
    shapes = ShapesSource(4, seed=9)
    write_folder(shapes, tmp_path / "f")
    write_shards(shapes, tmp_path / "s", samples_per_shard=3)
    folder, shards = open_source(tmp_path / "f"), open_source(tmp_path / "s")
    assert isinstance(folder, FolderSource) and isinstance(shards, ShardSource)
    for i in range(4):
        assert np.array_equal(_pixels(folder.load(i).image), _pixels(shapes.load(i).image))
        assert np.array_equal(_pixels(shards.load(i).image), _pixels(shapes.load(i).image))
    with pytest.raises(ValueError, match="mix"):
        open_source([tmp_path / "f", tmp_path / "s"])


def test_metadata_filter_removes_samples_from_buckets(toy_dir: Path, tmp_path: Path) -> None:
    from sana_data import AspectRatioBatchSampler, metadata_filter

    data = _copy(toy_dir, tmp_path)
    for i, (version, score) in enumerate([("high_quality", 30.0), ("high_quality", 20.0), ("web", 31.0)]):
        meta = json.loads((data / f"0000000{i}.json").read_text())
        (data / f"0000000{i}.json").write_text(json.dumps({**meta, "version": version, "clipscore": score}))
    source = FolderSource(data)
    dataset = BucketDataset(source, table=256, keep=metadata_filter(hq_only=True, min_clip_score=25.0))
    kept = [i for i, b in enumerate(dataset.bucket_keys()) if b is not None]
    assert kept == [0]  # only sample 0 is high quality with a score >= 25; the rest have no version
    dataset = BucketDataset(source, table=256, keep=metadata_filter(min_clip_score=25.0))
    assert [b is None for b in dataset.bucket_keys()][:3] == [False, True, False]  # unscored samples are kept
    sampler = AspectRatioBatchSampler(dataset.bucket_keys(), 1, drop_last=False)
    assert 1 not in {i for batch in sampler for i in batch}
