"""A synthetic "shapes world": coloured geometric shapes on plain backgrounds, with exact ground truth.

It is the training data of the embedded tiny Sana, the test data of this toolkit, and the reference of the
GenEval-style evaluator, so everything about it is deterministic and machine-readable:

- a sample is a pure function of `(seed, index)` — randomness comes only from `random.Random.random()`, whose
  sequence Python guarantees across versions, seeded through SHA-256;
- shapes are drawn without anti-aliasing, in exact palette colours, so colour segmentation recovers them;
- the ground truth lists every object's shape, colour name and RGB, size class, tight pixel box (from the drawn
  mask), center and pixel area, and every pairwise spatial relation that holds between boxes;
- each image has three captions: `prompt` (a plain sentence, the `.txt` line), `tags` and `long`;
- scene kinds follow GenEval's categories: `single`, `pair` (two objects, colour attribution), `counting`
  (2–4 identical objects), `position` (a relation), and `scene` (1–4 arbitrary objects);
- `split="heldout"` keeps only prompts whose hash falls in a held-out tenth, `split="train"` the others, so an
  evaluator can use prompts never seen in training.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw

from .dataset import sample_seed
from .records import RawSample, SampleInfo, SkipReport

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 210, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "purple": (140, 60, 190),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "light gray": (200, 200, 200),
    "beige": (235, 225, 200),
    "dark gray": (60, 60, 60),
}
SHAPES = ("circle", "square", "triangle", "diamond", "star")
SIZES: dict[str, float] = {"small": 0.16, "medium": 0.24, "large": 0.32}  # box side / min(H, W)
MAX_OBJECT_SCALE = 2.5  # `object_scale` bound: a large shape (0.32 * 1.1 of the short side) must fit the image
RELATIONS = ("left of", "right of", "above", "below")
RELATION_PHRASES = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
KINDS: dict[str, float] = {"single": 0.25, "pair": 0.2, "counting": 0.2, "position": 0.2, "scene": 0.15}
NUMBERS = {2: "two", 3: "three", 4: "four"}
DEFAULT_SIZES: tuple[tuple[int, int], ...] = ((256, 256), (192, 320), (320, 192))  # 256-table keys 1.0, 0.6, 1.67
HELDOUT_FRACTION = 0.1
Split = Literal["train", "heldout", "any"]


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    color: str
    size: str
    box: tuple[int, int, int, int]  # tight pixel box (x0, y0, x1, y1), x1/y1 exclusive
    center: tuple[float, float]  # (x, y) of the box center in pixels
    area: int  # drawn pixels
    square: tuple[int, int, int]  # the drawing square (x0, y0, side) the shape is inscribed in

    @property
    def rgb(self) -> tuple[int, int, int]:
        return COLORS[self.color]


@dataclass(frozen=True)
class Scene:
    height: int
    width: int
    background: str
    kind: str
    objects: tuple[ShapeObject, ...]
    relation: tuple[int, str, int] | None = None  # (subject index, relation, object index) named in the prompt


class _Rng:
    """Only `random()` is used: its sequence is guaranteed across Python versions, `randrange` & co are not."""

    def __init__(self, *seed_parts: Any) -> None:
        self._r = random.Random(sample_seed(*seed_parts))

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self._r.random()

    def integer(self, a: int, b: int) -> int:  # inclusive
        return a + min(int(self._r.random() * (b - a + 1)), b - a)

    def choice(self, options: Sequence[Any]) -> Any:
        return options[self.integer(0, len(options) - 1)]

    def weighted(self, weights: dict[str, float]) -> str:
        u, acc = self._r.random() * sum(weights.values()), 0.0
        for name, w in weights.items():
            acc += w
            if u < acc:
                return name
        return name


# --- Geometry and drawing -------------------------------------------------------------------------------------


def _polygon(shape: str, x0: int, y0: int, side: int) -> list[tuple[float, float]]:
    cx, cy, r = x0 + (side - 1) / 2, y0 + (side - 1) / 2, (side - 1) / 2
    if shape == "triangle":
        return [(cx, y0), (x0 + side - 1, y0 + side - 1), (x0, y0 + side - 1)]
    if shape == "diamond":
        return [(cx, y0), (x0 + side - 1, cy), (cx, y0 + side - 1), (x0, cy)]
    if shape == "star":  # 5 points, inner radius 0.45 of the outer, first point up
        return [
            (cx + (r if k % 2 == 0 else 0.45 * r) * math.sin(k * math.pi / 5),
             cy - (r if k % 2 == 0 else 0.45 * r) * math.cos(k * math.pi / 5))
            for k in range(10)
        ]  # fmt: skip
    raise KeyError(f"unknown polygon shape {shape!r}; valid: triangle, diamond, star")


def _draw(draw: ImageDraw.ImageDraw, shape: str, x0: int, y0: int, side: int, fill: Any) -> None:
    if shape == "circle":
        draw.ellipse([x0, y0, x0 + side - 1, y0 + side - 1], fill=fill)
    elif shape == "square":
        draw.rectangle([x0, y0, x0 + side - 1, y0 + side - 1], fill=fill)
    else:
        draw.polygon(_polygon(shape, x0, y0, side), fill=fill)


def _measure(shape: str, x0: int, y0: int, side: int, height: int, width: int) -> tuple[tuple[int, ...], int]:
    """Tight box and pixel area of a shape, from its own drawn mask."""
    mask = Image.new("L", (width, height), 0)
    _draw(ImageDraw.Draw(mask), shape, x0, y0, side, 255)
    box = mask.getbbox()
    assert box is not None, "a shape inside the canvas draws at least one pixel"
    return box, int(np.count_nonzero(np.asarray(mask.crop(box))))


# --- Scene sampling -------------------------------------------------------------------------------------------

_Placement = tuple[str, str, str, int, int, int]  # shape, color, size name, x0, y0, side


def _free(x0: int, y0: int, side: int, taken: list[tuple[int, int, int]]) -> bool:
    gap = max(2, side // 10)
    return all(x0 >= x + s + gap or x >= x0 + side + gap or y0 >= y + s + gap or y >= y0 + side + gap
               for x, y, s in taken)  # fmt: skip


def _holds(relation: str, a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    """`a` is clearly `relation` `b`: boxes separated along that axis, and that axis dominates."""
    (ax, ay, asz), (bx, by, bsz) = a, b
    dx, dy = (bx + bsz / 2) - (ax + asz / 2), (by + bsz / 2) - (ay + asz / 2)
    if relation == "left of":
        return ax + asz <= bx and abs(dy) < abs(dx)
    if relation == "right of":
        return bx + bsz <= ax and abs(dy) < abs(dx)
    if relation == "above":
        return ay + asz <= by and abs(dx) < abs(dy)
    return by + bsz <= ay and abs(dx) < abs(dy)


def _place(
    rng: _Rng, specs: list[tuple[str, str, str]], height: int, width: int, relation: str | None, scale: float
) -> list[_Placement] | None:
    taken: list[tuple[int, int, int]] = []
    for k, (_, _, size) in enumerate(specs):
        side = max(8, int(SIZES[size] * scale * min(height, width) * rng.uniform(0.9, 1.1)))
        for _ in range(200):
            x0, y0 = rng.integer(0, width - side), rng.integer(0, height - side)
            if _free(x0, y0, side, taken) and (
                k != 1 or relation is None or _holds(relation, taken[0], (x0, y0, side))
            ):
                taken.append((x0, y0, side))
                break
        else:
            return None
    return [(*spec, *box) for spec, box in zip(specs, taken)]


def _specs(rng: _Rng, kind: str) -> list[tuple[str, str, str]]:
    def one() -> tuple[str, str, str]:
        return rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(list(SIZES))

    if kind == "single":
        return [one()]
    if kind in ("pair", "position"):
        a, b = one(), one()
        while b[:2] == a[:2]:
            b = one()
        return [a, b]
    if kind == "counting":
        shape, color, _ = one()
        return [(shape, color, rng.choice(["small", "medium"])) for _ in range(rng.integer(2, 4))]
    return [one() for _ in range(rng.integer(1, 4))]


def _try_scene(rng: _Rng, size: tuple[int, int], scale: float) -> Scene | None:
    height, width = size
    kind = rng.weighted(KINDS)
    relation = rng.choice(RELATIONS) if kind == "position" else None
    placements = _place(rng, _specs(rng, kind), height, width, relation, scale)
    if placements is None:
        return None
    objects = []
    for shape, color, size_name, x0, y0, side in placements:
        box, area = _measure(shape, x0, y0, side, height, width)
        center = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        objects.append(ShapeObject(shape, color, size_name, tuple(box), center, area, (x0, y0, side)))
    background = rng.choice(list(BACKGROUNDS))
    return Scene(height, width, background, kind, tuple(objects), (0, relation, 1) if relation else None)


def check_object_scale(scale: float) -> None:
    """A `ValueError` unless `scale` is a number in (0, `MAX_OBJECT_SCALE`]: the one check of `object_scale`."""
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 < scale <= MAX_OBJECT_SCALE:
        raise ValueError(f"object_scale must be a number in (0, {MAX_OBJECT_SCALE}] (a factor on the object sizes "
                         f"{SIZES}), got {scale!r}")  # fmt: skip


def is_heldout(prompt: str, fraction: float = HELDOUT_FRACTION) -> bool:
    """Whether a prompt belongs to the held-out split (a fixed hash of the prompt text)."""
    return sample_seed("heldout", prompt) % 10_000 < fraction * 10_000


def sample_scene(
    seed: int,
    index: int,
    *,
    sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES,
    split: Split = "train",
    object_scale: float = 1.0,
) -> Scene:
    """Scene `index` of the world `seed` (a pure function of its arguments).

    `object_scale` multiplies every object's side (the `SIZES` fractions): 1 is the world the evaluator samples
    its held-out prompts from; a larger scale draws the same kinds of scene with bigger objects, for models whose
    latents are too coarse for the small ones (a 41 px "small" shape is 1.3 latent pixels of a 32x autoencoder).
    The size class names and the captions stay as they are. With scale 1 the scenes are exactly the original ones.
    """
    check_object_scale(object_scale)
    rng = _Rng("shapes", seed, index)
    size = tuple(rng.choice(list(sizes)))
    for _ in range(1000):
        scene = _try_scene(rng, size, object_scale)
        if scene is not None and (split == "any" or is_heldout(captions(scene)["prompt"]) == (split == "heldout")):
            return scene
    raise RuntimeError(f"no {split} scene found for seed={seed}, index={index}, size={size}")


# --- Rendering, captions, ground truth ------------------------------------------------------------------------


def render(scene: Scene) -> Image.Image:
    """The scene as an RGB image (no anti-aliasing: every pixel is the background or a palette colour)."""
    image = Image.new("RGB", (scene.width, scene.height), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw(draw, obj.shape, *obj.square, obj.rgb)
    return image


def _plural(shape: str) -> str:
    return shape + "s"


def _a(word: str) -> str:
    """`word` with its indefinite article."""
    return ("an " if word[0] in "aeiou" else "a ") + word


def _phrase(color: str, shape: str, count: int) -> str:
    return _a(f"{color} {shape}") if count == 1 else f"{NUMBERS[count]} {color} {_plural(shape)}"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _groups(scene: Scene) -> list[tuple[str, str, int]]:
    counts: dict[tuple[str, str], int] = {}
    for obj in scene.objects:
        counts[(obj.color, obj.shape)] = counts.get((obj.color, obj.shape), 0) + 1
    return [(color, shape, n) for (color, shape), n in counts.items()]


def _region(obj: ShapeObject, scene: Scene) -> str:
    cx, cy = obj.center
    col = ("left", "center", "right")[min(int(3 * cx / scene.width), 2)]
    row = ("top", "middle", "bottom")[min(int(3 * cy / scene.height), 2)]
    if (row, col) == ("middle", "center"):
        return "in the center"
    return f"in the {row} {col}" if row != "middle" else f"on the {col}"


def captions(scene: Scene) -> dict[str, str]:
    """`prompt` (plain sentence), `tags` (comma-separated) and `long` (descriptive) captions of a scene."""
    groups = _groups(scene)
    tags = [f"{c} {s}" if k == 1 else f"{c} {_plural(s)} x{k}" for c, s, k in groups]
    described = [f"{_a(o.size)} {o.color} {o.shape} {_region(o, scene)}" for o in scene.objects]
    long = f"A picture with a plain {scene.background} background showing {_join(described)}."
    if scene.relation is None:
        prompt = _join([_phrase(c, s, k) for c, s, k in groups])
    else:
        i, relation, j = scene.relation
        a, b = scene.objects[i], scene.objects[j]
        phrase = RELATION_PHRASES[relation]
        prompt = f"{_a(a.color)} {a.shape} {phrase} {_a(b.color)} {b.shape}"
        long += f" The {a.color} {a.shape} is {phrase} the {b.color} {b.shape}."
        tags.append(relation)
    n = len(scene.objects)
    tags += [f"{n} object{'s' if n > 1 else ''}", f"{scene.background} background"]
    return {"prompt": prompt, "tags": ", ".join(tags), "long": long}


def relations(scene: Scene) -> list[dict[str, Any]]:
    """Every (i, relation, j) that holds between tight boxes: separated along the axis (diagonals hold two)."""
    found = []
    for i, a in enumerate(scene.objects):
        for j, b in enumerate(scene.objects):
            if i == j:
                continue
            holds = {
                "left of": a.box[2] <= b.box[0],
                "right of": a.box[0] >= b.box[2],
                "above": a.box[3] <= b.box[1],
                "below": a.box[1] >= b.box[3],
            }
            found += [{"subject": i, "relation": r, "object": j} for r, ok in holds.items() if ok]
    return found


def ground_truth(scene: Scene) -> dict[str, Any]:
    """JSON-ready ground truth: size, background, kind, objects (with RGB), named relation, all relations."""
    return {
        "height": scene.height,
        "width": scene.width,
        "background": {"name": scene.background, "rgb": list(BACKGROUNDS[scene.background])},
        "kind": scene.kind,
        "objects": [
            {**asdict(o), "box": list(o.box), "center": list(o.center), "rgb": list(o.rgb)} for o in scene.objects
        ],
        "relation": None if scene.relation is None else dict(zip(("subject", "relation", "object"), scene.relation)),
        "relations": relations(scene),
        "counts": {f"{c} {s}": n for c, s, n in _groups(scene)},
    }


def scene_from_ground_truth(truth: dict[str, Any]) -> Scene:
    """Rebuild a `Scene` from `ground_truth(scene)` (e.g. the json saved next to an image): exact inverse."""
    objects = tuple(
        ShapeObject(
            o["shape"], o["color"], o["size"], tuple(o["box"]), tuple(o["center"]), o["area"], tuple(o["square"])
        )
        for o in truth["objects"]
    )
    named = truth["relation"]
    relation = None if named is None else (named["subject"], named["relation"], named["object"])
    return Scene(truth["height"], truth["width"], truth["background"]["name"], truth["kind"], objects, relation)


# --- As a dataset ---------------------------------------------------------------------------------------------


class ShapesSource:
    """`n` samples of the shapes world as an `ImageTextSource`, rendered on demand (nothing on disk).

    Sample i is scene `start + i` of world `seed`; its key is that number zero-padded to 8 digits. Captions:
    `prompt`, `tags`, `long`; `extra` holds `{"seed", "index", "shapes": ground_truth(scene)}`, and
    `"object_scale"` when it is not 1 (see `sample_scene`).
    """

    def __init__(
        self,
        n: int,
        *,
        seed: int = 0,
        start: int = 0,
        sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES,
        split: Split = "train",
        object_scale: float = 1.0,
    ) -> None:
        check_object_scale(object_scale)
        self.n, self.seed, self.start, self.sizes, self.split = n, seed, start, tuple(sizes), split
        self.object_scale = float(object_scale)
        self.report = SkipReport()
        self._scenes: dict[int, Scene] = {}

    def __len__(self) -> int:
        return self.n

    def scene(self, index: int) -> Scene:
        if not 0 <= index < self.n:
            raise IndexError(index)
        if index not in self._scenes:
            self._scenes[index] = sample_scene(
                self.seed, self.start + index, sizes=self.sizes, split=self.split, object_scale=self.object_scale
            )
        return self._scenes[index]

    def info(self, index: int) -> SampleInfo:
        scene = self.scene(index)
        return SampleInfo(f"{self.start + index:08d}", scene.height, scene.width)

    def load(self, index: int) -> RawSample:
        scene = self.scene(index)
        extra = {"seed": self.seed, "index": self.start + index, "shapes": ground_truth(scene)}
        if self.object_scale != 1.0:
            extra["object_scale"] = self.object_scale
        return RawSample(self.info(index), render(scene), captions(scene), {}, extra)
