"""The shapes-world evaluator: detector accuracy (clean and perturbed), scoring rules, prompts, benchmark, metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from sana.eval import (
    CATEGORIES,
    PERTURBATIONS,
    Detection,
    EvalPrompt,
    ObjectSpec,
    detect,
    eval_prompts,
    evaluate,
    evaluate_ground_truth,
    heldout_images,
    reconstruction_scores,
    relation_holds,
    sample_grid,
    score,
    text_gain,
    validate_detector,
)
from sana_data.shapes import BACKGROUNDS, COLORS, SHAPES, Scene, ShapeObject, captions, is_heldout, render

torch.set_num_threads(1)

N_PROMPTS = 300


Placed = tuple[str, str, int, int, int]  # shape, colour, x0, y0, side


def make_scene(*objects: Placed, size: tuple[int, int] = (128, 128), bg: str = "white") -> Scene:
    """A hand-made scene: (shape, colour, x0, y0, side) per object; only what `render` reads is filled in."""
    shapes = tuple(ShapeObject(s, c, "medium", (0, 0, 0, 0), (0, 0), 0, (x, y, side)) for s, c, x, y, side in objects)
    return Scene(size[0], size[1], bg, "scene", shapes)


def image_of(*objects: Placed, **kwargs) -> Image.Image:
    return render(make_scene(*objects, **kwargs))


@pytest.fixture(scope="module")
def prompts() -> list[EvalPrompt]:
    return eval_prompts(N_PROMPTS, seed=0)


# --- Detector -----------------------------------------------------------------------------------------------------


def test_detector_accuracy_on_rendered_ground_truth() -> None:
    report = validate_detector(200, seed=3)
    assert report["scene_accuracy"] >= 0.98, report
    assert report["object_accuracy"] >= 0.98, report
    assert report["false_positives"] <= 2, report
    assert set(report["per_kind"]) == {"single", "pair", "counting", "position", "scene"}
    assert min(report["per_shape"].values()) >= 0.95 and min(report["per_color"].values()) >= 0.95, report


@pytest.mark.parametrize(("perturbation", "n"), [("combined", 100), ("blur", 40), ("jpeg", 40), ("noise", 40)])
def test_detector_is_robust_to_blur_jpeg_and_noise(perturbation: str, n: int) -> None:
    report = validate_detector(n, seed=4, perturbation=perturbation)
    assert report["scene_accuracy"] >= 0.95, report
    assert report["object_accuracy"] >= 0.95, report


def test_perturbations_change_the_image() -> None:
    image = image_of(("circle", "red", 20, 20, 60))
    reference = np.asarray(image, dtype=np.int16)
    for name in ("blur", "jpeg", "noise", "combined"):
        assert np.abs(np.asarray(PERTURBATIONS[name](image, 0), dtype=np.int16) - reference).max() > 20, name


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bg", list(BACKGROUNDS))
def test_each_shape_on_each_background(shape: str, bg: str) -> None:
    for side, color in [(30, "orange"), (70, "purple")]:
        (det,) = detect(image_of((shape, color, 20, 30, side), bg=bg))
        assert (det.shape, det.color) == (shape, color)


def test_detection_geometry_is_exact_for_a_square() -> None:
    (det,) = detect(np.asarray(image_of(("square", "green", 10, 20, 30), size=(100, 120))))
    assert det == Detection("square", "green", (10, 20, 40, 50), (25.0, 35.0), 900)
    assert det.center == (25.0, 35.0)


def test_components_use_8_connectivity_and_split_by_colour() -> None:
    apart = detect(image_of(("square", "blue", 10, 10, 30), ("square", "blue", 42, 10, 30)))  # 2 px gap
    assert [d.bbox for d in sorted(apart, key=lambda d: d.bbox)] == [(10, 10, 40, 40), (42, 10, 72, 40)]
    diagonal = detect(image_of(("square", "blue", 10, 10, 30), ("square", "blue", 40, 40, 30)))  # corners touch
    assert len(diagonal) == 1 and diagonal[0].bbox == (10, 10, 70, 70)
    touching = detect(image_of(("square", "blue", 10, 10, 30), ("square", "red", 40, 10, 30)))
    assert sorted(d.color for d in touching) == ["blue", "red"]


def test_speckle_rings_and_blank_images_give_nothing() -> None:
    assert detect(Image.new("RGB", (64, 64), BACKGROUNDS["beige"])) == []
    speckle = Image.new("RGB", (128, 128), BACKGROUNDS["white"])
    draw = ImageDraw.Draw(speckle)
    for k in range(40):
        draw.rectangle([3 * k, (7 * k) % 120, 3 * k + 2, (7 * k) % 120 + 2], fill=COLORS["red"])  # 3x3 dots
    draw.ellipse([20, 20, 100, 100], outline=COLORS["blue"], width=1)  # a 1-px ring: no interior
    assert detect(speckle) == []


def test_detect_rejects_bad_input() -> None:
    with pytest.raises(TypeError, match="image must be"):
        detect([[0, 0, 0]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        detect(np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        detect(np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(KeyError, match="valid: none, blur"):
        validate_detector(1, perturbation="rotate")


# --- Scoring rules --------------------------------------------------------------------------------------------


def check(category: str, objects: tuple[ObjectSpec, ...], image: Image.Image, relation: str | None = None) -> bool:
    return score(EvalPrompt("prompt", category, objects, relation), detect(image))[0]  # type: ignore[arg-type]


RED_CIRCLE, BLUE_SQUARE = ("circle", "red"), ("square", "blue")


def test_single_object_and_colors_rules() -> None:
    triangle = ObjectSpec("triangle")
    assert check("single_object", (triangle,), image_of(("triangle", "green", 30, 30, 50)))
    assert check("single_object", (triangle,), image_of(("triangle", "purple", 30, 30, 50)))  # colour not checked
    assert not check("single_object", (triangle,), image_of(("diamond", "green", 30, 30, 50)))
    yellow_diamond = (ObjectSpec("diamond", "yellow"),)
    assert check("colors", yellow_diamond, image_of(("diamond", "yellow", 30, 30, 50)))
    assert not check("colors", yellow_diamond, image_of(("diamond", "red", 30, 30, 50)))
    assert not check("colors", yellow_diamond, image_of(("star", "yellow", 30, 30, 50)))


def test_two_objects_and_color_attr_rules() -> None:
    good = image_of((*RED_CIRCLE, 10, 40, 40), (*BLUE_SQUARE, 70, 40, 40))
    swapped = image_of(("circle", "blue", 10, 40, 40), ("square", "red", 70, 40, 40))
    one = image_of((*RED_CIRCLE, 10, 40, 40))
    two = (ObjectSpec("circle"), ObjectSpec("square"))
    assert check("two_objects", two, good) and check("two_objects", two, swapped)
    assert not check("two_objects", two, one)
    attr = (ObjectSpec(*RED_CIRCLE), ObjectSpec(*BLUE_SQUARE))
    assert check("color_attr", attr, good)
    assert not check("color_attr", attr, swapped) and not check("color_attr", attr, one)
    same_shape = (ObjectSpec("circle", "red"), ObjectSpec("circle", "blue"))  # distinct detections are needed
    assert not check("color_attr", same_shape, image_of(("circle", "red", 10, 40, 40)))


def test_counting_rule_is_exact() -> None:
    stars = [("star", "blue", x, 40, 28) for x in (4, 36, 68, 100)]
    spec = (ObjectSpec("star", "blue", 3),)
    assert check("counting", spec, image_of(*stars[:3], size=(128, 140)))
    assert not check("counting", spec, image_of(*stars[:2], size=(128, 140)))
    assert not check("counting", spec, image_of(*stars, size=(128, 140)))
    assert not check("counting", spec, image_of(*[("star", "red", *s[2:]) for s in stars[:3]], size=(128, 140)))


def test_position_rule() -> None:
    spec = (ObjectSpec(*RED_CIRCLE), ObjectSpec(*BLUE_SQUARE))
    left = image_of((*RED_CIRCLE, 10, 40, 40), (*BLUE_SQUARE, 70, 45, 40))
    assert check("position", spec, left, "left of")
    assert not check("position", spec, left, "right of")
    assert not check("position", spec, left, "above") and not check("position", spec, left, "below")
    swapped = image_of((*RED_CIRCLE, 70, 40, 40), (*BLUE_SQUARE, 10, 45, 40))
    assert not check("position", spec, swapped, "left of") and check("position", spec, swapped, "right of")
    above = image_of((*RED_CIRCLE, 40, 5, 40), (*BLUE_SQUARE, 45, 70, 40))
    assert check("position", spec, above, "above") and not check("position", spec, above, "below")
    assert not check("position", spec, image_of((*RED_CIRCLE, 10, 40, 40)), "left of")  # object missing
    with pytest.raises(KeyError, match="valid: left of"):
        relation_holds("near", *detect(left))


def test_position_needs_the_axis_to_dominate() -> None:
    box = lambda x, y: Detection("square", "red", (x, y, x + 20, y + 20), (x + 10.0, y + 10.0), 400)  # noqa: E731
    assert relation_holds("left of", box(0, 0), box(30, 10))
    assert not relation_holds("left of", box(0, 0), box(30, 40))  # mostly below: diagonal, vertical dominates
    assert relation_holds("above", box(0, 0), box(30, 40))
    assert relation_holds("left of", box(0, 0), box(19, 0))  # 1 px overlap: within the 10% slack
    assert not relation_holds("left of", box(0, 0), box(15, 0))  # 5 px overlap: not beside


# --- Prompts and benchmark ------------------------------------------------------------------------------------


def test_eval_prompts_are_held_out_balanced_and_consistent(prompts: list[EvalPrompt]) -> None:
    assert len(prompts) == N_PROMPTS
    assert {c: sum(p.category == c for p in prompts) for c in CATEGORIES} == dict.fromkeys(CATEGORIES, 50)
    assert [p.seed for p in prompts] == list(range(N_PROMPTS))
    for p in prompts:
        assert p.scene is not None and is_heldout(p.text) and captions(p.scene)["prompt"] == p.text
        if p.category == "counting":
            assert p.objects[0].count == len(p.scene.objects) >= 2
        assert (p.relation is not None) == (p.category == "position")
        assert all(o.color is None for o in p.objects) == (p.category in ("single_object", "two_objects"))
    assert len({p.text for p in prompts if p.category == "position"}) >= 40


def test_eval_prompts_are_deterministic_per_seed() -> None:
    first, again, other = eval_prompts(12, seed=5), eval_prompts(12, seed=5), eval_prompts(12, seed=6)
    assert first == again
    assert [p.text for p in first] != [p.text for p in other]
    with pytest.raises(ValueError, match="n must be >= 6"):
        eval_prompts(5)


def test_evaluate_scores_correct_images_high_and_wrong_images_low(prompts: list[EvalPrompt]) -> None:
    by_seed = {p.seed: p for p in prompts}
    calls: list[tuple[int, int]] = []

    def correct(texts: list[str], seed: int) -> list[Image.Image]:
        calls.append((seed, len(texts)))
        assert texts == [by_seed[seed + i].text for i in range(len(texts))]
        return [render(by_seed[seed + i].scene) for i in range(len(texts))]  # type: ignore[arg-type]

    seen: list[int] = []
    report = evaluate(correct, prompts, batch_size=16, on_image=lambda p, im: seen.append(p.seed))
    assert report.overall >= 0.98 and min(report.scores.values()) >= 0.96, report.to_markdown()
    assert report.counts == dict.fromkeys(CATEGORIES, 50) and seen == list(range(N_PROMPTS))
    assert calls[0] == (0, 16) and sum(n for _, n in calls) == N_PROMPTS

    def wrong(texts: list[str], seed: int) -> list[Image.Image]:  # each image shows another prompt's scene
        return [render(by_seed[(seed + i + 150) % N_PROMPTS].scene) for i in range(len(texts))]  # type: ignore[arg-type]

    bad = evaluate(wrong, prompts[::5])
    assert bad.overall < 0.5, bad.to_markdown()
    assert all(r.reason for r in bad.records if not r.correct)


def test_report_serialises(prompts: list[EvalPrompt]) -> None:
    subset = [prompts[k] for k in (0, 60, 110, 160, 210, 260)]
    report = evaluate(lambda texts, seed: [Image.new("RGB", (64, 64), (245,) * 3)] * len(texts), subset)
    assert report.overall == 0.0 and set(report.scores) == set(CATEGORIES)
    data = json.loads(report.to_json())
    assert data["counts"] == dict.fromkeys(CATEGORIES, 1) and len(data["records"]) == 6
    assert data["records"][0]["reason"].startswith("expected") and data["records"][0]["detections"] == []
    table = report.to_markdown().splitlines()
    assert table[0].split("|")[1:-1] == [f" {c} " for c in (*CATEGORIES, "overall")] and len(table) == 3
    assert data["overall_ci95"] == 0.0 and table[2].split("|")[-2] == " 0.000 ± 0.000 "  # all wrong: no spread
    with pytest.raises(ValueError, match="returned 0 images"):
        evaluate(lambda texts, seed: [], subset)


def test_the_overall_interval_is_the_standard_error_of_a_mean_of_category_fractions() -> None:
    """Six categories of 50 prompts: 1.96 * sqrt(sum p(1-p)/50) / 6; a sure score (0 or 1) adds no spread, more
    prompts narrow it as 1/sqrt(n)."""
    from sana.eval import overall_interval

    scores = dict(zip(CATEGORIES, (0.5, 0.1, 0.2, 0.52, 0.0, 0.02), strict=True))
    counts = dict.fromkeys(CATEGORIES, 50)
    expected = 1.96 * math.sqrt((0.25 + 0.09 + 0.16 + 0.2496 + 0.0 + 0.0196) / 50) / 6
    assert overall_interval(scores, counts) == pytest.approx(expected) and expected == pytest.approx(0.0405, abs=1e-4)
    assert overall_interval(scores, dict.fromkeys(CATEGORIES, 200)) == pytest.approx(expected / 2)
    assert overall_interval(dict.fromkeys(CATEGORIES, 1.0), counts) == 0.0 and overall_interval({}, {}) == 0.0


# --- Reconstruction metrics and grids -------------------------------------------------------------------------


def test_reconstruction_scores() -> None:
    images = heldout_images(3)
    exact = reconstruction_scores(lambda x: x, images)
    assert exact["ssim"] == pytest.approx(1.0) and exact["psnr"] > 100 and exact["images"] == 3
    assert exact["detector_agreement"] == 1.0
    grey = reconstruction_scores(lambda x: torch.zeros_like(x), images)  # every object lost
    assert grey["detector_agreement"] == 0.0
    gen = torch.Generator().manual_seed(0)
    noisy = reconstruction_scores(lambda x: x + 0.05 * torch.randn(x.shape, generator=gen), images)
    assert 25 < noisy["psnr"] < 35 and noisy["ssim"] < 0.95 and noisy["psnr_min"] <= noisy["psnr"]
    with pytest.raises(ValueError, match="input's shape"):
        reconstruction_scores(lambda x: x[..., :-1], images)


def test_the_autoencoder_ceiling_scores_the_prompts_own_scenes_after_the_round_trip() -> None:
    """`evaluate_ground_truth(autoencode=...)`: a lossless round trip keeps the ground truth's every record, a lossy
    one costs the categories it breaks (BGR order renames the colours), and one that loses the image scores 0."""
    n = 60  # 10 per category
    truth = evaluate_ground_truth(n)
    exact = evaluate_ground_truth(n, autoencode=lambda x: x)
    assert exact.records == truth.records and exact.overall == truth.overall
    bgr = evaluate_ground_truth(n, autoencode=lambda x: x.flip(1))
    assert bgr.scores["colors"] < truth.scores["colors"] and bgr.scores["color_attr"] == 0.0, bgr.to_markdown()
    assert evaluate_ground_truth(n, autoencode=torch.zeros_like).overall == 0.0
    with pytest.raises(ValueError, match="input's shape"):
        evaluate_ground_truth(n, autoencode=lambda x: x[..., ::2])


def test_sample_grid() -> None:
    images = [Image.new("RGB", (20, 10), (k * 40, 0, 0)) for k in range(5)]
    grid = sample_grid(images, columns=2, padding=1)
    assert grid.size == (2 * 21 + 1, 3 * 11 + 1)
    assert grid.getpixel((1 + 21, 1 + 11)) == (120, 0, 0)  # image 3: row 1, column 1
    assert grid.getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(ValueError, match="columns"):
        sample_grid(images, columns=0)


def test_text_gain_is_one_exactly_when_the_prompt_cannot_matter() -> None:
    from sana.testing import tiny_parts

    parts = tiny_parts(seed=0)
    denoiser, ae, te = parts["denoiser"], parts["autoencoder"], parts["text_encoder"]
    used = text_gain(denoiser, ae, te, n=2, times=(0.5, 0.9))
    assert used["images"] == 2 and set(used["per_time"]) == {0.5, 0.9}
    assert abs(used["text_gain"] - 1.0) > 1e-3  # a random model's output depends on its prompt
    with torch.no_grad():
        denoiser.attention_y_norm.weight.zero_()  # every caption token becomes the same: the prompt is silenced
    silenced = text_gain(denoiser, ae, te, n=2, times=(0.5, 0.9))
    assert silenced["text_gain"] == pytest.approx(1.0, abs=1e-6)
    assert silenced["per_time"][0.9] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="times must lie in"):
        text_gain(denoiser, ae, te, n=1, times=(0.0,))
    with pytest.raises(ValueError, match="need n >= 1"):
        text_gain(denoiser, ae, te, n=0)
