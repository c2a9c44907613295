from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sana_data import (
    ASPECT_RATIO_256,
    ASPECT_RATIO_512,
    ASPECT_RATIO_1024,
    ASPECT_RATIO_2048,
    ASPECT_RATIO_2048_TEST,
    ASPECT_RATIO_4096,
    TABLES,
    closest_ratio,
    get_table,
    resize_cover_crop,
    to_tensor,
)
from sana_data.buckets import assign_buckets, cover_size

SPEC_KEYS = [
    "0.25",
    "0.26",
    "0.27",
    "0.28",
    "0.32",
    "0.33",
    "0.35",
    "0.4",
    "0.42",
    "0.48",
    "0.5",
    "0.52",
    "0.57",
    "0.6",
    "0.68",
    "0.72",
    "0.78",
    "0.82",
    "0.88",
    "0.94",
    "1.0",
    "1.07",
    "1.13",
    "1.21",
    "1.29",
    "1.38",
    "1.46",
    "1.67",
    "1.75",
    "2.0",
    "2.09",
    "2.4",
    "2.5",
    "2.89",
    "3.0",
    "3.11",
    "3.62",
    "3.75",
    "3.88",
    "4.0",
]
TEST_KEYS = [k for k in SPEC_KEYS if k not in {"0.26", "0.27", "2.89", "3.11", "3.62", "3.75", "3.88"}]

# Spec §6.3 table (H x W) for ASPECT_RATIO_1024, transcribed independently of the module.
SPEC_1024 = {
    "0.25": (512, 2048), "0.26": (512, 1984), "0.27": (512, 1920), "0.28": (512, 1856), "0.32": (576, 1792),
    "0.33": (576, 1728), "0.35": (576, 1664), "0.4": (640, 1600), "0.42": (640, 1536), "0.48": (704, 1472),
    "0.5": (704, 1408), "0.52": (704, 1344), "0.57": (768, 1344), "0.6": (768, 1280), "0.68": (832, 1216),
    "0.72": (832, 1152), "0.78": (896, 1152), "0.82": (896, 1088), "0.88": (960, 1088), "0.94": (960, 1024),
    "1.0": (1024, 1024), "1.07": (1024, 960), "1.13": (1088, 960), "1.21": (1088, 896), "1.29": (1152, 896),
    "1.38": (1152, 832), "1.46": (1216, 832), "1.67": (1280, 768), "1.75": (1344, 768), "2.0": (1408, 704),
    "2.09": (1472, 704), "2.4": (1536, 640), "2.5": (1600, 640), "2.89": (1664, 576), "3.0": (1728, 576),
    "3.11": (1792, 576), "3.62": (1856, 512), "3.75": (1920, 512), "3.88": (1984, 512), "4.0": (2048, 512),
}  # fmt: skip


def test_1024_table_equals_spec() -> None:
    assert ASPECT_RATIO_1024 == SPEC_1024
    assert list(ASPECT_RATIO_1024) == SPEC_KEYS


@pytest.mark.parametrize("name", ["256", "512", "1024", "2048", "4096"])
def test_full_tables_have_40_spec_keys(name: str) -> None:
    assert list(get_table(name)) == SPEC_KEYS


@pytest.mark.parametrize("name", ["256_TEST", "512_TEST", "1024_TEST"])
def test_test_tables_have_33_keys(name: str) -> None:
    assert list(get_table(name)) == TEST_KEYS


def test_2048_test_keeps_026_drops_028() -> None:
    keys = list(ASPECT_RATIO_2048_TEST)
    assert len(keys) == 33 and "0.26" in keys and "0.28" not in keys
    assert ASPECT_RATIO_2048_TEST["0.26"] == (1024, 3968)


def test_appendix_a_examples() -> None:
    assert ASPECT_RATIO_512["0.25"] == (256, 1024) and ASPECT_RATIO_512["0.5"] == (352, 704)
    assert ASPECT_RATIO_512["0.57"] == (384, 672) and ASPECT_RATIO_512["0.68"] == (416, 608)
    assert ASPECT_RATIO_512["0.78"] == (448, 576) and ASPECT_RATIO_512["1.29"] == (576, 448)
    assert ASPECT_RATIO_512["1.75"] == (672, 384) and ASPECT_RATIO_512["2.5"] == (800, 320)
    assert ASPECT_RATIO_512["4.0"] == (1024, 256)
    assert ASPECT_RATIO_2048["1.0"] == (2048, 2048) and ASPECT_RATIO_2048["0.25"] == (1024, 4096)
    assert ASPECT_RATIO_4096["1.0"] == (4096, 4096) and ASPECT_RATIO_4096["0.25"] == (2048, 8192)
    assert ASPECT_RATIO_256["1.0"] == (256, 256) and ASPECT_RATIO_256["0.5"] == (176, 352)


@pytest.mark.parametrize(("name", "multiple"), [("1024", 64), ("512", 32), ("2048", 32), ("4096", 32), ("256", 16)])
def test_divisibility(name: str, multiple: int) -> None:
    # The spec says "every entry is divisible by 32"; the official 256 table (1024 / 4) is only by 16.
    assert all(h % multiple == 0 and w % multiple == 0 for h, w in get_table(name).values())


def test_keys_are_height_over_width_and_areas_near_base() -> None:
    for name, base in (("256", 256), ("512", 512), ("1024", 1024), ("2048", 2048)):
        for key, (h, w) in get_table(name).items():
            assert abs(h / w - float(key)) < 0.03, (name, key)
            assert 0.89 <= h * w / base**2 <= 1.0, (name, key)


def test_unknown_table_lists_valid_names() -> None:
    with pytest.raises(KeyError, match="1024_TEST"):
        get_table("999")
    assert len(TABLES) == 9


def test_closest_ratio_and_vectorised_agree() -> None:
    assert closest_ratio(1024, 1024, ASPECT_RATIO_512) == "1.0"
    assert closest_ratio(600, 1200, ASPECT_RATIO_512) == "0.5"  # r = 0.5 exactly
    assert closest_ratio(100, 1000, ASPECT_RATIO_512) == "0.25"  # beyond the table: the extreme key
    assert closest_ratio(5000, 1000, ASPECT_RATIO_512) == "4.0"
    rng = np.random.default_rng(0)
    h, w = rng.integers(32, 4096, 2000), rng.integers(32, 4096, 2000)
    h[:4], w[:4] = [51, 1, 3, 1], [200, 1, 1, 8]  # 0.255 is halfway between 0.25 and 0.26: the first key wins
    keys = list(ASPECT_RATIO_512)
    fast = [keys[i] for i in assign_buckets(h, w, ASPECT_RATIO_512)]
    assert fast == [closest_ratio(int(a), int(b), ASPECT_RATIO_512) for a, b in zip(h, w)]
    shuffled = dict(reversed(ASPECT_RATIO_512.items()))  # tie rule must follow table order, not key order
    keys = list(shuffled)
    assert [keys[i] for i in assign_buckets(h, w, shuffled)] == [
        closest_ratio(int(a), int(b), shuffled) for a, b in zip(h, w)
    ]
    with pytest.raises(ValueError, match="positive"):
        closest_ratio(0, 10, ASPECT_RATIO_512)


def test_cover_size_follows_the_official_rule() -> None:
    assert cover_size(1000, 500, (704, 352)) == (704, 352)
    assert cover_size(500, 1000, (512, 512)) == (512, 1024)  # Ht/h > Wt/w: height fixed at target
    assert cover_size(1000, 500, (512, 512)) == (1024, 512)  # otherwise width fixed at target


def test_resize_cover_crop_centers_and_keeps_content() -> None:
    # A 100 x 300 image whose middle third is white: cropped to 64 x 64 the center must be white.
    array = np.zeros((100, 300, 3), np.uint8)
    array[:, 100:200] = 255
    out = resize_cover_crop(Image.fromarray(array), (64, 64))
    assert out.size == (64, 64)
    assert np.asarray(out)[:, 8:56].min() > 200  # the white band covers the crop's middle
    x = to_tensor(out)
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert float(x.max()) == pytest.approx(1.0, abs=0.01) and float(x.min()) >= -1.0
