"""A deterministic detector for the shapes world: colour segmentation, connected components, shape geometry.

No learned model. Steps, each with a named tolerance (distances are RGB Euclidean on the 0-255 scale):

1. Background: the per-channel median of the image border (the world's backgrounds are plain).
2. Colour segmentation: each pixel takes the nearest of the six palette colours if that colour is within
   `COLOR_TOLERANCE` and nearer than the background, otherwise it is background. Palette colours are 71 (orange
   to yellow) to 299 apart, and 111+ from every background, so 80 absorbs blur, JPEG chroma bleeding, noise and
   the colour drift of generated images, while edge pixels that are half background stay background.
3. Connected components (8-connectivity) of equal-colour pixels, by run-length union-find in numpy.
4. Filtering: a component is dropped when it is smaller than `MIN_AREA_FRACTION` of the image, larger than
   `MAX_AREA_FRACTION` (a palette-coloured background), or when its "core" (pixels whose four neighbours share
   their colour) is under `MIN_CORE_FRACTION` of its area: this removes speckle and the one-pixel rings of a
   wrong colour that anti-aliasing can leave around a shape.
5. Shape from the component's geometry: solidity (area / convex-hull area), fill (area / bbox area) and the
   vertical centroid position in the bbox. Ideal values (solidity, fill, centroid y): circle (1, 0.785, 0.5),
   square (1, 1, 0.5), triangle (1, 0.5, 0.667), diamond (1, 0.5, 0.5), star (0.556, 0.384, 0.553). Each
   threshold is the midpoint between the two classes it separates, except square/circle, set between the
   measured ranges under blur + JPEG + noise (square fill >= 0.88, circle <= 0.83). Components unlike every
   shape (elongated, or hardly filling their box) are reported as `"other"`.

Coordinates: pixels, x to the right, y down; boxes are (x0, y0, x1, y1) with x1/y1 exclusive, as the world's.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from sana_data.shapes import COLORS, SHAPES, Scene, render, sample_scene

__all__ = ("PERTURBATIONS", "Detection", "detect", "segment", "validate_detector")

COLOR_TOLERANCE = 80.0  # max RGB distance from a palette colour for a pixel to take it
MIN_AREA_FRACTION = 0.0015  # components under this share of the image are noise (smallest world shape: ~0.005)
MAX_AREA_FRACTION = 0.5  # larger components are background (largest world shape: ~0.12 of the image)
MIN_CORE_FRACTION = 0.2  # a real shape is mostly interior; anti-aliasing rings and speckle have no interior
STAR_SOLIDITY = 0.78  # star 0.556, every other shape ~1
SQUARE_FILL = 0.85  # square 1.0 (>= 0.88 blurred + JPEG), circle pi/4 (<= 0.83 blurred)
CIRCLE_FILL = 0.64  # circle 0.785, triangle and diamond 0.5
TRIANGLE_CENTROID = 0.583  # centroid y / bbox height: triangle 2/3 (apex up), diamond 1/2
MAX_ASPECT = 1.6  # world shapes have bbox aspect 1 (star 1.05); a longer blob is "other"
MIN_FILL = 0.2  # below this (star 0.384) a component is a scribble, "other"
OTHER = "other"
BLUR_RADIUS = 1.0  # robustness checks: Gaussian blur radius in pixels
JPEG_QUALITY = 75
NOISE_SIGMA = 8.0  # additive Gaussian noise, 0-255 scale (8/255)
MATCH_IOU = 0.5  # a detection matches a ground-truth object at this box IoU

_PALETTE = np.array(list(COLORS.values()), dtype=np.float32)  # (K, 3)
_COLOR_NAMES = tuple(COLORS)


@dataclass(frozen=True)
class Detection:
    """One detected object: `shape` in the world's SHAPES or "other", `color` a palette name."""

    shape: str
    color: str
    bbox: tuple[int, int, int, int]  # (x0, y0, x1, y1), x1/y1 exclusive
    centroid: tuple[float, float]  # (x, y) mean of the pixel centres
    area: int  # pixels

    @property
    def center(self) -> tuple[float, float]:
        """(x, y) center of the box, the same convention as the world's `ShapeObject.center`."""
        x0, y0, x1, y1 = self.bbox
        return (x0 + x1) / 2, (y0 + y1) / 2


def _as_rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    """(3, H, W) float32 channel planes (contiguous planes make the per-colour distances fast)."""
    if isinstance(image, Image.Image):
        array = np.asarray(image.convert("RGB"))
    elif isinstance(image, np.ndarray):
        array = image
    else:
        raise TypeError(f"image must be a PIL.Image or a numpy array, got {type(image).__name__}")
    if array.ndim != 3 or array.shape[2] != 3 or min(array.shape[:2]) < 3:
        raise ValueError(f"image must be (H, W, 3) RGB with H, W >= 3, got shape {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"a numpy image must be uint8 (0-255), got {array.dtype}")
    # float32: squared distances of 0-255 values are exact and the arithmetic is fast
    return np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32)  # (3, H, W)


def segment(image: Image.Image | np.ndarray) -> np.ndarray:
    """Palette index per pixel, (H, W) int64, -1 for background (steps 1-2 of the module docstring)."""
    planes = _as_rgb(image)  # (3, H, W)
    border = np.concatenate([planes[:, 0], planes[:, -1], planes[:, :, 0], planes[:, :, -1]], axis=1)  # (3, 2W+2H)
    background = np.median(border, axis=1)  # (3,)
    centers = np.concatenate([_PALETTE, background[None]])  # (K + 1, 3)
    best = np.full(planes.shape[1:], COLOR_TOLERANCE**2, dtype=np.float32)  # (H, W) squared distance to beat
    nearest = np.full(planes.shape[1:], -1, dtype=np.int64)  # (H, W)
    for k, center in enumerate(centers):  # the background is last: ties stay with the palette colour
        d2 = (planes[0] - center[0]) ** 2 + (planes[1] - center[1]) ** 2 + (planes[2] - center[2]) ** 2  # (H, W)
        closer = d2 < best
        nearest[closer], best[closer] = k, d2[closer]
    nearest[nearest == len(_PALETTE)] = -1
    return nearest


# --- Connected components -------------------------------------------------------------------------------------


def _runs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Horizontal runs of equal non-negative labels, row-major: rows, first columns, last columns."""
    fg = labels >= 0
    starts, ends = fg.copy(), fg.copy()
    starts[:, 1:] &= labels[:, 1:] != labels[:, :-1]
    ends[:, :-1] &= labels[:, :-1] != labels[:, 1:]
    rows, first = np.nonzero(starts)
    _, last = np.nonzero(ends)  # the k-th end belongs to the k-th start: runs never interleave
    return rows, first, last


def _touching_runs(rows: np.ndarray, first: np.ndarray, last: np.ndarray, stride: int) -> np.ndarray:
    """(P, 2) pairs (a, b) of runs in consecutive rows whose columns touch with 8-connectivity."""
    start_keys, end_keys = rows * stride + first, rows * stride + last  # both sorted (row-major)
    lo = np.searchsorted(end_keys, (rows + 1) * stride + first - 1, "left")  # first b below with last >= first-1
    hi = np.searchsorted(start_keys, (rows + 1) * stride + last + 1, "right")  # past the b below with first <= last+1
    counts = np.maximum(hi - lo, 0)
    a = np.repeat(np.arange(len(rows)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.stack([a, np.repeat(lo, counts) + offsets], axis=1)


def _union_find(n: int, pairs: np.ndarray) -> np.ndarray:
    """Component index (0..C-1, in order of first run) of each of `n` runs joined by `pairs`."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs.tolist():
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([root(i) for i in range(n)], dtype=np.int64)
    return np.unique(roots, return_inverse=True)[1]


def label_components(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of equal labels: (H, W) component map (-1 where `labels` < 0) and each one's label."""
    H, W = labels.shape
    rows, first, last = _runs(labels)
    run_label = labels[rows, first]
    pairs = _touching_runs(rows, first, last, W + 2)
    pairs = pairs[run_label[pairs[:, 0]] == run_label[pairs[:, 1]]]
    component = _union_find(len(rows), pairs)  # (R,)
    lengths = last - first + 1
    pixel = np.repeat(rows * W + first - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
    comp_map = np.full(H * W, -1, dtype=np.int64)
    comp_map[pixel] = np.repeat(component, lengths)
    comp_label = np.zeros(component.max() + 1 if len(component) else 0, dtype=np.int64)
    comp_label[component] = run_label
    return comp_map.reshape(H, W), comp_label


def _core(labels: np.ndarray) -> np.ndarray:
    """Pixels whose four neighbours (inside the image) have their label."""
    core = labels >= 0
    core[1:] &= labels[1:] == labels[:-1]
    core[:-1] &= labels[:-1] == labels[1:]
    core[:, 1:] &= labels[:, 1:] == labels[:, :-1]
    core[:, :-1] &= labels[:, :-1] == labels[:, 1:]
    return core


# --- Shape geometry -------------------------------------------------------------------------------------------


def _hull_area(points: np.ndarray) -> float:
    """Area of the convex hull of (N, 2) points (Andrew's monotone chain, shoelace formula)."""
    pts = sorted(set(map(tuple, points.tolist())))
    if len(pts) < 3:
        return 0.0

    def half(seq: list[tuple[float, float]]) -> list[tuple[float, float]]:
        chain: list[tuple[float, float]] = []
        for p in seq:
            while len(chain) >= 2:
                (ox, oy), (ax, ay) = chain[-2], chain[-1]
                if (ax - ox) * (p[1] - oy) - (ay - oy) * (p[0] - ox) > 0:
                    break
                chain.pop()
            chain.append(p)
        return chain

    hull = half(pts)[:-1] + half(pts[::-1])[:-1]
    xs, ys = np.array(hull).T
    return float(abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))) / 2)


def classify_shape(mask: np.ndarray) -> str:
    """The world shape of a binary (h, w) mask cropped to its box, or "other" (step 5 of the module docstring)."""
    h, w = mask.shape
    area = int(mask.sum())
    if max(h, w) > MAX_ASPECT * min(h, w) or area < MIN_FILL * h * w:
        return OTHER
    rows = np.nonzero(mask.any(1))[0]
    left = mask[rows].argmax(1)
    right = w - mask[rows, ::-1].argmax(1)  # exclusive
    # pixel corners of each row's extremes: the hull of a filled square is the square itself
    corners = np.concatenate([np.stack([xs, rows + dy], 1) for xs in (left, right) for dy in (0, 1)])  # (4h', 2)
    solidity = area / max(_hull_area(corners), 1.0)
    centroid_y = (np.nonzero(mask)[0].mean() + 0.5) / h
    if solidity < STAR_SOLIDITY:
        return "star"
    fill = area / (h * w)
    if fill > SQUARE_FILL:
        return "square"
    if fill > CIRCLE_FILL:
        return "circle"
    return "triangle" if centroid_y > TRIANGLE_CENTROID else "diamond"


def detect(image: Image.Image | np.ndarray) -> list[Detection]:
    """Objects of the shapes world in an image, sorted by area (largest first).

    Args:
        image: a PIL image (any mode, converted to RGB) or an (H, W, 3) uint8 array.

    Returns:
        One `Detection` per kept component (see the module docstring for the steps and tolerances).
    """
    labels = segment(image)  # (H, W)
    H, W = labels.shape
    comp_map, comp_label = label_components(labels)
    n = len(comp_label)
    flat = comp_map.ravel()
    fg = flat >= 0
    area = np.bincount(flat[fg], minlength=n)
    core = np.bincount(comp_map[_core(labels)], minlength=n)
    ys, xs = np.divmod(np.nonzero(fg)[0], W)
    sum_x = np.bincount(flat[fg], weights=xs + 0.5, minlength=n)
    sum_y = np.bincount(flat[fg], weights=ys + 0.5, minlength=n)
    sized = (area >= MIN_AREA_FRACTION * H * W) & (area <= MAX_AREA_FRACTION * H * W)
    keep = np.nonzero(sized & (core >= MIN_CORE_FRACTION * area))[0]
    detections = []
    for k in keep.tolist():
        comp_rows = np.nonzero((comp_map == k).any(1))[0]
        comp_cols = np.nonzero((comp_map[comp_rows[0] : comp_rows[-1] + 1] == k).any(0))[0]
        x0, y0, x1, y1 = int(comp_cols[0]), int(comp_rows[0]), int(comp_cols[-1]) + 1, int(comp_rows[-1]) + 1
        mask = comp_map[y0:y1, x0:x1] == k  # (h, w)
        centroid = (float(sum_x[k] / area[k]), float(sum_y[k] / area[k]))
        shape = classify_shape(mask)
        detections.append(Detection(shape, _COLOR_NAMES[comp_label[k]], (x0, y0, x1, y1), centroid, int(area[k])))
    return sorted(detections, key=lambda d: (-d.area, d.bbox))


# --- Validation on rendered ground truth ----------------------------------------------------------------------


def _blur(image: Image.Image, index: int) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(BLUR_RADIUS))


def _jpeg(image: Image.Image, index: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY)  # PIL default 4:2:0 chroma subsampling bleeds colour edges
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _noise(image: Image.Image, index: int) -> Image.Image:
    rng = np.random.default_rng(index)  # the noise of image `index` is fixed
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0.0, NOISE_SIGMA, (image.height, image.width, 3))
    return Image.fromarray(np.clip(np.round(noisy), 0, 255).astype(np.uint8))  # uint8: as a saved image would be


def _combined(image: Image.Image, index: int) -> Image.Image:
    return _noise(_jpeg(_blur(image, index), index), index)


PERTURBATIONS: dict[str, Callable[[Image.Image, int], Image.Image]] = {
    "none": lambda image, index: image,
    "blur": _blur,
    "jpeg": _jpeg,
    "noise": _noise,
    "combined": _combined,  # blur, then JPEG, then noise
}


def _iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


def _match_objects(scene: Scene, detections: list[Detection]) -> list[Detection | None]:
    """For each ground-truth object, the unused detection of highest box IoU (at least `MATCH_IOU`), or None."""
    used: set[int] = set()
    matched: list[Detection | None] = []
    for obj in scene.objects:
        ious = [(_iou(obj.box, d.bbox), j) for j, d in enumerate(detections) if j not in used]
        best = max(ious, default=(0.0, -1))
        matched.append(detections[best[1]] if best[0] >= MATCH_IOU else None)
        if best[0] >= MATCH_IOU:
            used.add(best[1])
    return matched


def _ratio(hits: dict[str, list[bool]]) -> dict[str, float]:
    return {key: sum(v) / len(v) for key, v in hits.items() if v}


def validate_detector(n: int = 200, *, seed: int = 0, perturbation: str = "none") -> dict[str, Any]:
    """Accuracy of `detect` on `n` rendered scenes of the world (`split="any"`: every kind, size and background).

    A ground-truth object is found when a detection overlaps its box (IoU >= 0.5) with the right shape and colour;
    a scene is correct when the multiset of detected (shape, colour) equals the truth (nothing missed, nothing
    extra). Returns `scene_accuracy`, `object_accuracy`, `false_positives` (detections matching no object) and
    per-category accuracies: `per_kind` (scenes), `per_shape` and `per_color` (objects).
    """
    if perturbation not in PERTURBATIONS:
        raise KeyError(f"unknown perturbation {perturbation!r}; valid: {', '.join(PERTURBATIONS)}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    per_kind: dict[str, list[bool]] = {}
    per_shape: dict[str, list[bool]] = {shape: [] for shape in SHAPES}
    per_color: dict[str, list[bool]] = {color: [] for color in COLORS}
    false_positives = 0
    for index in range(n):
        scene = sample_scene(seed, index, split="any")
        detections = detect(PERTURBATIONS[perturbation](render(scene), index))
        matched = _match_objects(scene, detections)
        for obj, det in zip(scene.objects, matched):
            found = det is not None and (det.shape, det.color) == (obj.shape, obj.color)
            per_shape[obj.shape].append(found)
            per_color[obj.color].append(found)
        false_positives += len(detections) - sum(m is not None for m in matched)
        truth = sorted((o.shape, o.color) for o in scene.objects)
        per_kind.setdefault(scene.kind, []).append(truth == sorted((d.shape, d.color) for d in detections))
    objects = [hit for hits in per_shape.values() for hit in hits]
    return {
        "scenes": n,
        "objects": len(objects),
        "perturbation": perturbation,
        "scene_accuracy": sum(sum(v) for v in per_kind.values()) / n,
        "object_accuracy": sum(objects) / len(objects),
        "false_positives": false_positives,
        "per_kind": _ratio(per_kind),
        "per_shape": _ratio(per_shape),
        "per_color": _ratio(per_color),
    }
