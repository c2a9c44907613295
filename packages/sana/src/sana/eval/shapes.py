"""A GenEval-style compositional benchmark on the synthetic shapes world, scored by the deterministic detector.

Prompts come from the world's own scene and caption generator (`sana_data.shapes`), restricted to the held-out
split (`is_heldout`: a fixed hash of the prompt text puts a tenth of all prompts outside training). Each prompt
carries a machine-checkable spec; a generated image is run through `detect` and scored with GenEval's rules:

| category | prompt (example) | correct when |
|---|---|---|
| `single_object` | a purple triangle | a triangle is detected (any colour) |
| `two_objects` | a red circle and a blue square | a circle and a square, distinct detections (any colour) |
| `counting` | three blue stars | exactly three blue stars |
| `colors` | a yellow diamond | a yellow diamond is detected |
| `position` | a red circle to the left of a blue square | the largest red circle is left of the largest blue square |
| `color_attr` | a red circle and a blue square | a red circle and a blue square, distinct detections |

Overall = mean of the category means, as GenEval. Position rule (the world's `_holds` on detected boxes): `a` is
left of `b` when the box centres put `b` to the right of `a` by more than they differ vertically, and `a`'s box
ends before `b`'s begins, both up to a slack of `OVERLAP_TOLERANCE` of the narrower box; the other three
relations likewise. The centre comparison allows the same slack, because a star's tight box is centred
slightly off the square it was drawn in, which is where the world checks the relation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from dcae.images import psnr, ssim
from sana_data.shapes import RELATIONS, Scene, captions, render, sample_scene

from .detector import PERTURBATIONS, Detection, detect

__all__ = (
    "CATEGORIES",
    "EvalPrompt",
    "EvalReport",
    "ObjectSpec",
    "PromptRecord",
    "eval_prompts",
    "evaluate",
    "evaluate_ground_truth",
    "heldout_images",
    "overall_interval",
    "reconstruction_scores",
    "relation_holds",
    "sample_grid",
    "score",
)

Category = Literal["single_object", "two_objects", "counting", "colors", "position", "color_attr"]
CATEGORIES: tuple[Category, ...] = ("single_object", "two_objects", "counting", "colors", "position", "color_attr")
OVERLAP_TOLERANCE = 0.1  # position: boxes may overlap along the axis by this share of the smaller extent
MAX_SCENES_PER_PROMPT = 100  # eval_prompts gives up after scanning this many held-out scenes per prompt asked


@dataclass(frozen=True)
class ObjectSpec:
    """`count` objects of `shape`, of `color` (None: any colour)."""

    shape: str
    color: str | None = None
    count: int = 1


@dataclass(frozen=True)
class EvalPrompt:
    """A prompt, its category and spec; for `position`, `objects[0]` is `relation` `objects[1]`.

    `seed` is the image seed the prompt is generated with; `scene` the world scene it was captioned from (its
    rendering is a correct image, used by `evaluate_ground_truth`).
    """

    text: str
    category: Category
    objects: tuple[ObjectSpec, ...]
    relation: str | None = None
    seed: int = 0
    scene: Scene | None = None


@dataclass(frozen=True)
class PromptRecord:
    """The outcome for one prompt: whether the image is correct, why not, and what the detector saw."""

    text: str
    category: Category
    seed: int
    correct: bool
    reason: str
    detections: tuple[Detection, ...]


@dataclass(frozen=True)
class EvalReport:
    """Per-category scores (fraction correct), prompt counts, overall (mean of the categories), the half-width of
    the overall's 95% interval from the prompt sample (`overall_interval`) and the records."""

    scores: dict[str, float]
    counts: dict[str, int]
    overall: float
    records: tuple[PromptRecord, ...]

    @classmethod
    def from_records(cls, records: Sequence[PromptRecord]) -> EvalReport:
        by_category = {c: [r.correct for r in records if r.category == c] for c in CATEGORIES}
        scores = {c: sum(v) / len(v) for c, v in by_category.items() if v}
        counts = {c: len(v) for c, v in by_category.items() if v}
        overall = sum(scores.values()) / len(scores) if scores else 0.0
        return cls(scores, counts, overall, tuple(records))

    @property
    def overall_ci95(self) -> float:
        return overall_interval(self.scores, self.counts)

    def to_dict(self, *, records: bool = True) -> dict[str, Any]:
        """JSON-ready: overall (and its 95% half-width), scores, counts and (unless `records=False`) every prompt's
        record."""
        out: dict[str, Any] = {"overall": self.overall, "overall_ci95": self.overall_ci95, "scores": self.scores,
                               "counts": self.counts}  # fmt: skip
        if records:
            out["records"] = [asdict(r) for r in self.records]
        return out

    def to_json(self, *, records: bool = True, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(records=records), indent=indent)

    def to_markdown(self) -> str:
        """A two-row table: categories and overall as columns, scores (and prompt counts) in the cells; the overall
        with its 95% half-width."""
        names = [*self.scores, "overall"]
        cells = [f"{self.scores[c]:.3f} ({self.counts[c]})" for c in self.scores]
        cells.append(f"{self.overall:.3f} ± {self.overall_ci95:.3f}")
        return "\n".join(["| " + " | ".join(names) + " |", "|" + "---|" * len(names), "| " + " | ".join(cells) + " |"])


def overall_interval(scores: dict[str, float], counts: dict[str, int], z: float = 1.96) -> float:
    """Half-width of the overall score's 95% interval (normal approximation) from the prompt sample alone.

    The overall is the mean of K category fractions, each over its own n_c prompts, so its standard error is
    sqrt(sum_c p_c (1 - p_c) / n_c) / K. It measures how much another draw of held-out prompts (and seeds) would
    move the score of the same model: two models whose overall scores differ by less are not told apart by the
    eval. It says nothing of the spread between training runs (seeds), which is often larger.
    """
    if not scores:
        return 0.0
    variance = sum(p * (1 - p) / counts[c] for c, p in scores.items()) / len(scores) ** 2
    return z * math.sqrt(variance)


# --- Prompts --------------------------------------------------------------------------------------------------


def _eligible(scene: Scene) -> tuple[Category, ...]:
    """The categories a held-out scene's prompt can test (the world's `scene` kind fits none)."""
    if scene.kind == "single":
        return ("single_object", "colors")
    if scene.kind == "pair":
        a, b = scene.objects
        pair: tuple[Category, ...] = ("two_objects",) if a.shape != b.shape else ()
        return pair + (("color_attr",) if a.color != b.color else ())
    return {"counting": ("counting",), "position": ("position",)}.get(scene.kind, ())


def _spec(scene: Scene, category: Category) -> tuple[tuple[ObjectSpec, ...], str | None]:
    objects = scene.objects
    if category == "counting":
        return (ObjectSpec(objects[0].shape, objects[0].color, len(objects)),), None
    if category == "position":
        assert scene.relation is not None, "position scenes name a relation"
        i, relation, j = scene.relation
        a, b = objects[i], objects[j]
        return (ObjectSpec(a.shape, a.color), ObjectSpec(b.shape, b.color)), relation
    any_color = category in ("single_object", "two_objects")
    return tuple(ObjectSpec(o.shape, None if any_color else o.color) for o in objects), None


def eval_prompts(n: int = 300, *, seed: int = 0) -> list[EvalPrompt]:
    """`n` held-out benchmark prompts, split evenly over `CATEGORIES` (a pure function of `n` and `seed`).

    Held-out scenes `sample_scene(seed, i, split="heldout")` are scanned in order; each goes to the category it
    fits with the fewest prompts so far (single scenes fit single_object and colors, pairs two_objects when the
    shapes differ and color_attr when the colours differ, counting and position scenes their namesakes). The
    world's held-out split has few distinct single-object and counting sentences (2 and 7), so those repeat with
    different image seeds, as GenEval samples each prompt several times. Prompt k has image seed k.
    """
    if n < len(CATEGORIES):
        raise ValueError(f"n must be >= {len(CATEGORIES)} (one prompt per category), got {n}")
    quota = {c: n // len(CATEGORIES) + (k < n % len(CATEGORIES)) for k, c in enumerate(CATEGORIES)}
    taken: dict[Category, list[Scene]] = {c: [] for c in CATEGORIES}
    for index in range(MAX_SCENES_PER_PROMPT * n):
        if all(len(taken[c]) == quota[c] for c in CATEGORIES):
            break
        scene = sample_scene(seed, index, split="heldout")
        open_ = [c for c in _eligible(scene) if len(taken[c]) < quota[c]]
        if open_:
            taken[min(open_, key=lambda c: len(taken[c]))].append(scene)
    else:
        raise RuntimeError(f"found too few held-out scenes for {n} prompts in world seed {seed}")
    prompts = []
    for category in CATEGORIES:
        for scene in taken[category]:
            objects, relation = _spec(scene, category)
            text = captions(scene)["prompt"]
            prompts.append(EvalPrompt(text, category, objects, relation, len(prompts), scene))
    return prompts


# --- Scoring --------------------------------------------------------------------------------------------------


def relation_holds(relation: str, a: Detection, b: Detection) -> bool:
    """Whether `a` is `relation` `b` (one of the world's RELATIONS), from their boxes (module docstring)."""
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a.bbox, b.bbox
    dx, dy = b.center[0] - a.center[0], b.center[1] - a.center[1]
    slack_x = OVERLAP_TOLERANCE * min(ax1 - ax0, bx1 - bx0)
    slack_y = OVERLAP_TOLERANCE * min(ay1 - ay0, by1 - by0)
    holds = {
        "left of": dx + slack_x > abs(dy) and ax1 <= bx0 + slack_x,
        "right of": -dx + slack_x > abs(dy) and bx1 <= ax0 + slack_x,
        "above": dy + slack_y > abs(dx) and ay1 <= by0 + slack_y,
        "below": -dy + slack_y > abs(dx) and by1 <= ay0 + slack_y,
    }
    if relation not in holds:
        raise KeyError(f"unknown relation {relation!r}; valid: {', '.join(RELATIONS)}")
    return holds[relation]


def _fits(spec: ObjectSpec, detection: Detection) -> bool:
    return detection.shape == spec.shape and spec.color in (None, detection.color)


def _name(spec: ObjectSpec) -> str:
    return f"{spec.count} {spec.color or 'any-colour'} {spec.shape}"


def _assignable(specs: Sequence[ObjectSpec], detections: Sequence[Detection]) -> bool:
    """Whether every spec's `count` objects can be given distinct detections (exhaustive search; specs are few)."""
    slots = [spec for spec in specs for _ in range(spec.count)]

    def place(k: int, used: frozenset[int]) -> bool:
        if k == len(slots):
            return True
        return any(place(k + 1, used | {j}) for j, d in enumerate(detections) if j not in used and _fits(slots[k], d))

    return place(0, frozenset())


def score(prompt: EvalPrompt, detections: Sequence[Detection]) -> tuple[bool, str]:
    """Whether `detections` satisfy the prompt's spec (the rules of the module docstring), and a reason if not."""
    if prompt.category == "counting":
        (spec,) = prompt.objects
        found = sum(_fits(spec, d) for d in detections)
        return found == spec.count, "" if found == spec.count else f"expected exactly {_name(spec)}, found {found}"
    if prompt.category == "position":
        if prompt.relation is None:
            raise ValueError(f"position prompt {prompt.text!r} has no relation")
        first, second = prompt.objects
        subjects = [d for d in detections if _fits(first, d)]  # detections are sorted largest first
        objects = [d for d in detections if _fits(second, d) and (not subjects or d is not subjects[0])]
        if not subjects or not objects:
            return False, f"missing {_name(first) if not subjects else _name(second)}"
        ok = relation_holds(prompt.relation, subjects[0], objects[0])
        return ok, "" if ok else f"{_name(first)} is not {prompt.relation} {_name(second)}"
    if prompt.category not in CATEGORIES:
        raise ValueError(f"unknown category {prompt.category!r}; valid: {', '.join(CATEGORIES)}")
    ok = _assignable(prompt.objects, detections)
    return ok, "" if ok else "expected " + " and ".join(_name(s) for s in prompt.objects)


# --- Benchmark ------------------------------------------------------------------------------------------------


def _batches(prompts: Sequence[EvalPrompt], batch_size: int) -> list[list[EvalPrompt]]:
    """Consecutive prompts with consecutive seeds, so `generate(texts, seed)` gives image i the seed `seed + i`."""
    batches: list[list[EvalPrompt]] = []
    for prompt in prompts:
        last = batches[-1] if batches else None
        if last is not None and len(last) < batch_size and prompt.seed == last[-1].seed + 1:
            last.append(prompt)
        else:
            batches.append([prompt])
    return batches


def evaluate(
    generate: Callable[[list[str], int], list[Image.Image]],
    prompts: Sequence[EvalPrompt],
    *,
    batch_size: int = 8,
    on_image: Callable[[EvalPrompt, Image.Image], None] | None = None,
) -> EvalReport:
    """Generate an image per prompt, detect its objects and score it.

    Args:
        generate: `generate(texts, seed)` returns one image per text, image i drawn with seed `seed + i` (the
            convention of `SanaPipeline.generate(seed=...)`); it is called with up to `batch_size` prompts whose
            seeds are consecutive, so each image depends on its own prompt and seed only.
        prompts: from `eval_prompts`.
        on_image: called with each prompt and its image (e.g. to save it or to build a `sample_grid`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    records = []
    for batch in _batches(prompts, batch_size):
        images = generate([p.text for p in batch], batch[0].seed)
        if len(images) != len(batch):
            raise ValueError(f"generate returned {len(images)} images for {len(batch)} prompts")
        for prompt, image in zip(batch, images):
            detections = detect(image)
            correct, reason = score(prompt, detections)
            records.append(PromptRecord(prompt.text, prompt.category, prompt.seed, correct, reason, tuple(detections)))
            if on_image is not None:
                on_image(prompt, image)
    return EvalReport.from_records(records)


def evaluate_ground_truth(
    n: int = 300,
    *,
    seed: int = 0,
    perturbation: str = "none",
    autoencode: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> EvalReport:
    """`evaluate` on the renderings of the prompts' own scenes (optionally perturbed: see `PERTURBATIONS`).

    The images are correct by construction, so the score measures the detector and the scoring rules: anything
    under 1.0 is the evaluator's error.

    With `autoencode` ((1, 3, H, W) float32 in [-1, 1] -> the same shape, as for `reconstruction_scores`), each
    rendering is scored after a round trip through it instead: the *autoencoder ceiling*, what a transformer that
    drew every prompt's own held-out scene exactly would score with this autoencoder, per category. A model that
    draws its objects larger or cleaner than the world's can score above it (the autoencoder loses small details
    first).
    """
    if perturbation not in PERTURBATIONS:
        raise KeyError(f"unknown perturbation {perturbation!r}; valid: {', '.join(PERTURBATIONS)}")
    prompts = eval_prompts(n, seed=seed)
    by_seed = {p.seed: p for p in prompts}

    def generate(texts: list[str], first_seed: int) -> list[Image.Image]:
        images = []
        for image_seed in range(first_seed, first_seed + len(texts)):
            scene = by_seed[image_seed].scene
            assert scene is not None, "eval_prompts keeps each prompt's scene"
            image = PERTURBATIONS[perturbation](render(scene), image_seed)
            images.append(image if autoencode is None else Image.fromarray(_round_trip(autoencode, image)[1]))
        return images

    return evaluate(generate, prompts)


# --- Reconstruction and grids ---------------------------------------------------------------------------------


def heldout_images(n: int, *, seed: int = 0) -> list[Image.Image]:
    """Renderings of the first `n` held-out scenes of world `seed` (never in the training split)."""
    return [render(sample_scene(seed, index, split="heldout")) for index in range(n)]


def _to_tensor(image: Image.Image) -> torch.Tensor:
    rgb = torch.from_numpy(np.array(image.convert("RGB"), dtype=np.float32))  # (H, W, 3) in [0, 255], fp32 pixels
    return rgb.permute(2, 0, 1)[None] / 127.5 - 1.0  # (1, 3, H, W) in [-1, 1]


@torch.inference_mode()
def _round_trip(
    autoencode: Callable[[torch.Tensor], torch.Tensor], image: Image.Image
) -> tuple[torch.Tensor, np.ndarray]:
    """`image` through `autoencode`: the reconstruction as (1, 3, H, W) float32 on the CPU, clamped to [-1, 1] (the
    range a saved image keeps), and as the (H, W, 3) uint8 pixels a saved image has."""
    x = _to_tensor(image)
    y = autoencode(x)
    if y.shape != x.shape:
        raise ValueError(f"autoencode must return the input's shape {tuple(x.shape)}, got {tuple(y.shape)}")
    y = y.float().clamp(-1, 1).cpu()  # fp32 metrics on the CPU, whatever dtype and device the autoencoder ran in
    return y, ((y[0] + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()


def same_objects(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray) -> bool:
    """Whether the detector finds the same objects (multiset of shape and colour) in images `a` and `b` (PIL or
    (H, W, 3) uint8): `reconstruction_scores`' detector agreement for one image pair."""
    return sorted((d.shape, d.color) for d in detect(a)) == sorted((d.shape, d.color) for d in detect(b))


@torch.inference_mode()
def reconstruction_scores(
    autoencode: Callable[[torch.Tensor], torch.Tensor], images: Sequence[Image.Image]
) -> dict[str, float]:
    """Mean (and worst) PSNR in dB and SSIM of `autoencode` over `images`, one image at a time, and how often the
    detector finds the same objects (multiset of shape and colour) in the reconstruction as in the original:
    `detector_agreement` (these scenes hold up to several objects each; `evaluate_ground_truth(autoencode=...)` gives
    the ceiling this autoencoder puts on each `sana eval shapes` category).

    Args:
        autoencode: (1, 3, H, W) float32 in [-1, 1] -> the same shape (e.g. `lambda x: ae.decode(ae.encode(x))`);
            its output is clamped to [-1, 1], the range a saved image keeps.
        images: e.g. `heldout_images(64)`.

    Returns:
        `{"psnr", "ssim", "psnr_min", "ssim_min", "detector_agreement", "images"}`.
    """
    if not images:
        raise ValueError("images must not be empty")
    psnrs, ssims, agree = [], [], []
    for image in images:
        x = _to_tensor(image)  # (1, 3, H, W)
        y, pixels = _round_trip(autoencode, image)
        psnrs.append(float(psnr(x, y)[0]))
        ssims.append(float(ssim(x, y)[0]))
        agree.append(same_objects(pixels, image))
    return {
        "psnr": sum(psnrs) / len(psnrs),
        "ssim": sum(ssims) / len(ssims),
        "psnr_min": min(psnrs),
        "ssim_min": min(ssims),
        "detector_agreement": sum(agree) / len(agree),
        "images": float(len(images)),
    }


@torch.inference_mode()
def prompt_losses(
    denoiser: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    text: torch.Tensor,
    mask: torch.Tensor,
    null: torch.Tensor,
    noise: torch.Tensor,
    times: Sequence[float],
) -> dict[float, tuple[float, float]]:
    """The training loss (`sana.train.objective.loss_fn`) at each time t, with the real captions and with the null
    caption in their place (keeping each prompt's mask, as caption dropout does): `{t: (real, null)}`.

    x0 (B, C_z, h, w) diffusion-scale latents, text (B, L, D_txt), mask (B, L), null (L, D_txt) or (1, L, D_txt),
    noise like x0.
    """
    from sana.train.objective import drop_captions, loss_fn

    every = torch.ones(text.shape[0], dtype=torch.bool)
    empty, _ = drop_captions(text, mask, null.reshape(text.shape[1:]), every)  # the training's caption dropout, on all
    out = {}
    for t in times:
        tt = torch.full((x0.shape[0],), float(t), device=x0.device)
        out[float(t)] = (float(loss_fn(denoiser, x0, text, mask, noise, tt)),
                         float(loss_fn(denoiser, x0, empty, mask, noise, tt)))  # fmt: skip
    return out


@torch.inference_mode()
def text_gain(
    denoiser: Callable[..., torch.Tensor],
    autoencoder: Any,
    text_encoder: Any,
    n: int = 32,
    *,
    seed: int = 0,
    times: Sequence[float] = (0.5, 0.7, 0.9),
) -> dict[str, Any]:
    """How much a text-to-image denoiser relies on its prompt: its flow-matching loss on held-out shapes-world
    images with the null caption, divided by the loss with their own captions (mean over `times`).

    1.0 means the prompt changes nothing (an unconditional model); the first embedded transformer, whose caption
    RMSNorm had shrunk to 0.005, measured 1.00. Images are encoded by `autoencoder` into diffusion-scale latents
    (as in training), captions by `text_encoder.encode`, the null caption is `text_encoder.null_embedding()`
    (`prompt_losses`), and the noise of image i is drawn from `seed + i`.

    Args:
        denoiser: `denoiser(x, t, text, mask)` -> velocity, e.g. `pipe.denoiser`.
        n: held-out scenes of world `seed` (`heldout_images`).

    Returns:
        `{"text_gain", "per_time": {t: ratio}, "images"}`.
    """
    from sana._compose import to_diffusion_latents

    if n < 1 or not times:
        raise ValueError(f"need n >= 1 and at least one time, got n={n}, times={tuple(times)}")
    if not all(0.0 < t <= 1.0 for t in times):
        raise ValueError(f"times must lie in (0, 1], got {tuple(times)}")
    device = next(iter(denoiser.parameters())).device if hasattr(denoiser, "parameters") else torch.device("cpu")
    null = text_encoder.null_embedding().embeddings.float().to(device)  # (1, L, D_txt)
    real_sum, null_sum = dict.fromkeys(map(float, times), 0.0), dict.fromkeys(map(float, times), 0.0)
    for index in range(n):  # one image at a time: the held-out scenes come in several sizes
        scene = sample_scene(seed, index, split="heldout")
        x0 = to_diffusion_latents(autoencoder, autoencoder.encode(_to_tensor(render(scene)).to(device)).float())
        text, mask = text_encoder.encode([captions(scene)["prompt"]])  # (1, L, D_txt), (1, L)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + index)).to(device)
        for t, (real, empty) in prompt_losses(denoiser, x0, text.float().to(device), mask.to(device), null, noise,
                                              times).items():  # fmt: skip
            real_sum[t] += real
            null_sum[t] += empty
    per_time = {t: null_sum[t] / real_sum[t] for t in real_sum}
    return {"text_gain": sum(per_time.values()) / len(per_time), "per_time": per_time, "images": n}


def sample_grid(
    images: Sequence[Image.Image], columns: int, *, padding: int = 2, background: tuple[int, int, int] = (255,) * 3
) -> Image.Image:
    """The images in rows of `columns`, each centred in a cell the size of the largest, `padding` px apart."""
    if not images:
        raise ValueError("images must not be empty")
    if columns < 1 or padding < 0:
        raise ValueError(f"columns must be >= 1 and padding >= 0, got columns={columns}, padding={padding}")
    cell_w, cell_h = max(im.width for im in images), max(im.height for im in images)
    rows = -(-len(images) // columns)
    columns = min(columns, len(images))
    grid = Image.new("RGB", (columns * (cell_w + padding) + padding, rows * (cell_h + padding) + padding), background)
    for k, image in enumerate(images):
        row, col = divmod(k, columns)
        x = padding + col * (cell_w + padding) + (cell_w - image.width) // 2
        y = padding + row * (cell_h + padding) + (cell_h - image.height) // 2
        grid.paste(image.convert("RGB"), (x, y))
    return grid
