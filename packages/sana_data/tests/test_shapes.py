"""Shapes world: deterministic, and its ground truth is exact on the rendered pixels."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from sana_data import (
    ShapesSource,
    captions,
    ground_truth,
    is_heldout,
    render,
    sample_scene,
    scene_from_ground_truth,
)
from sana_data.shapes import BACKGROUNDS, COLORS, KINDS, NUMBERS, SHAPES

SCENES = [sample_scene(0, i) for i in range(150)]


def test_deterministic_from_seed_and_index() -> None:
    assert [sample_scene(0, i) for i in range(20)] == SCENES[:20]
    assert np.array_equal(np.asarray(render(SCENES[3])), np.asarray(render(sample_scene(0, 3))))
    assert [sample_scene(1, i) for i in range(20)] != SCENES[:20]
    # Pinned values: a change here means every dataset generated so far changes too.
    assert captions(sample_scene(0, 4))["prompt"] == "a green triangle to the right of a red star"
    assert captions(sample_scene(0, 5))["prompt"] == "an orange circle and an orange triangle"


@pytest.mark.parametrize("index", range(0, 150, 7))
def test_ground_truth_matches_pixels_exactly(index: int) -> None:
    scene = SCENES[index]
    pixels = np.asarray(render(scene)).astype(int)  # (H, W, 3)
    assert pixels.shape == (scene.height, scene.width, 3)
    covered = np.zeros(pixels.shape[:2], bool)
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.box
        is_color = (pixels == obj.rgb).all(-1)  # (H, W)
        inside = is_color[y0:y1, x0:x1]
        assert inside.sum() == obj.area  # area counted in the box equals the drawn area
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()  # tight box
        covered[y0:y1, x0:x1] |= inside
    background = (pixels == BACKGROUNDS[scene.background]).all(-1)
    assert (background | covered).all()  # no anti-aliasing: every pixel is background or an object
    assert covered.sum() == sum(o.area for o in scene.objects)  # objects never overlap


def test_captions_and_relations_agree_with_objects() -> None:
    for scene in SCENES:
        caps, truth = captions(scene), ground_truth(scene)
        for obj in scene.objects:
            assert obj.color in caps["prompt"] and obj.shape in caps["prompt"]
            assert obj.color in caps["long"] and obj.size in caps["long"]
        if scene.relation is not None:
            assert truth["relation"] in truth["relations"]
            assert truth["relation"]["relation"] in caps["prompt"]
        if scene.kind == "counting":
            n = len(scene.objects)
            assert caps["prompt"].startswith(NUMBERS[n]) and truth["counts"] == {
                caps["prompt"].split(" ", 1)[1][:-1]: n
            }


def test_world_covers_kinds_colours_shapes_counts_and_sizes() -> None:
    assert set(Counter(s.kind for s in SCENES)) == set(KINDS)
    assert {o.color for s in SCENES for o in s.objects} == set(COLORS)
    assert {o.shape for s in SCENES for o in s.objects} == set(SHAPES)
    assert {len(s.objects) for s in SCENES} == {1, 2, 3, 4}
    assert {(s.height, s.width) for s in SCENES} == {(256, 256), (192, 320), (320, 192)}
    assert {s.background for s in SCENES} == set(BACKGROUNDS)


def test_splits_are_disjoint_by_prompt() -> None:
    train = {captions(s)["prompt"] for s in SCENES}
    heldout = {captions(sample_scene(0, i, split="heldout"))["prompt"] for i in range(40)}
    assert not train & heldout and all(is_heldout(p) for p in heldout) and not any(is_heldout(p) for p in train)


def test_source_serves_images_captions_and_truth() -> None:
    source = ShapesSource(5, seed=2, start=10, sizes=[(96, 160)])
    sample = source.load(1)
    assert sample.key == "00000011" and sample.image.size == (160, 96)
    assert set(sample.captions) == {"prompt", "tags", "long"}
    assert sample.extra["shapes"] == ground_truth(sample_scene(2, 11, sizes=[(96, 160)]))


def test_ground_truth_json_rebuilds_the_scene() -> None:
    import json

    for scene in SCENES[:30]:
        assert scene_from_ground_truth(json.loads(json.dumps(ground_truth(scene)))) == scene


BIG = [sample_scene(0, i, object_scale=1.5) for i in range(150)]


def test_object_scale_draws_the_same_world_with_bigger_objects() -> None:
    assert [sample_scene(0, i, object_scale=1.0) for i in range(20)] == SCENES[:20]  # 1 is the original world
    sides = {scale: [o.square[2] for s in scenes for o in s.objects] for scale, scenes in ((1.0, SCENES), (1.5, BIG))}
    ratio = np.median(sides[1.5]) / np.median(sides[1.0])
    assert 1.4 < ratio < 1.6, ratio
    assert min(sides[1.5]) >= 0.16 * 1.5 * 0.9 * 192 - 1  # the smallest shape of the short side, scaled
    assert set(Counter(s.kind for s in BIG)) == set(KINDS) and {len(s.objects) for s in BIG} == {1, 2, 3, 4}
    for scene in BIG[:40]:  # exact ground truth, captions and splits hold at any scale
        pixels = np.asarray(render(scene)).astype(int)
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.box
            assert (pixels[y0:y1, x0:x1] == obj.rgb).all(-1).sum() == obj.area
        assert all(o.shape in captions(scene)["prompt"] for o in scene.objects)
        assert not is_heldout(captions(scene)["prompt"])


def test_object_scale_is_recorded_and_checked() -> None:
    sample = ShapesSource(3, object_scale=1.5).load(2)
    assert sample.extra["object_scale"] == 1.5 and sample.extra["shapes"] == ground_truth(BIG[2])
    assert "object_scale" not in ShapesSource(3).load(2).extra  # datasets made before the option stay the same
    for bad in (0, -1.0, 2.6, float("nan"), True, "2"):
        with pytest.raises(ValueError, match="object_scale must be a number in"):
            sample_scene(0, 0, object_scale=bad)
        with pytest.raises(ValueError, match="object_scale"):
            ShapesSource(3, object_scale=bad)
