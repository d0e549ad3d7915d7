"""tf.data input pipeline: the RAM cache budget, resume-exact augmentation, safe resizing,
RGB and depth kept aligned by every augmentation."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pipeline.core.config import AugmentConfig  # noqa: E402
from pipeline.core.files import write_depth_png, write_rgb_png  # noqa: E402

H, W = 48, 64  # source size
N = 6


@pytest.fixture()
def pairs(tmp_path):
    rng = np.random.default_rng(0)
    rgb_paths, depth_paths = [], []
    for i in range(N):
        rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        depth = rng.choice([0.0, 0.5, 1.25, 3.0, 7.5], size=(H, W))  # 0 = invalid
        rgb_paths.append(str(tmp_path / f"rgb{i}.png"))
        depth_paths.append(str(tmp_path / f"depth{i}.png"))
        write_rgb_png(rgb_paths[-1], rgb)
        write_depth_png(depth_paths[-1], depth)
    return rgb_paths, depth_paths


def source(pairs, cache_max_mb):
    from pipeline.data.tfdata import PairSource

    return PairSource(*pairs, cache_max_mb=cache_max_mb, size=(H, W))


def train_batches(src, first_epoch, epochs=3, augment=AugmentConfig(), height=32, width=32):
    from pipeline.data.tfdata import train_dataset

    ds = train_dataset(
        src,
        seed=5,
        first_epoch=first_epoch,
        epochs=epochs,
        steps_per_epoch=2,
        batch_size=2,
        height=height,
        width=width,
        augment_cfg=augment,
    )
    return [(rgb.numpy(), depth.numpy()) for rgb, depth in ds]


def test_cache_budget_decides_ram_or_disk(pairs):
    """Over the budget nothing is held: a file deleted after the first pass is missed on
    the next one. Within the budget both passes come from RAM."""
    import tensorflow as tf

    from pipeline.data.tfdata import eval_dataset

    decoded_mb = N * H * W * 5 / 2**20
    in_ram, on_disk = source(pairs, cache_max_mb=1), source(pairs, cache_max_mb=0)
    assert in_ram.cached and decoded_mb < 1
    assert not on_disk.cached

    ram_eval = eval_dataset(in_ram, batch_size=4, height=32, width=32)
    disk_eval = eval_dataset(on_disk, batch_size=4, height=32, width=32)
    first_ram, first_disk = list(ram_eval), list(disk_eval)
    for a, b in zip(first_ram, first_disk):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])

    os.remove(pairs[0][0])
    assert len(list(ram_eval)) == len(first_ram)  # second validation pass, from RAM
    assert len(train_batches(in_ram, 0)) == 6
    with pytest.raises(tf.errors.NotFoundError):
        list(disk_eval)  # second validation pass decodes from disk again
    with pytest.raises(tf.errors.NotFoundError):
        train_batches(on_disk, 0)


def test_resumed_epochs_see_the_same_batches(pairs):
    src = source(pairs, cache_max_mb=1)
    full, resumed = train_batches(src, first_epoch=0), train_batches(src, first_epoch=1)
    assert len(full) == 6 and len(resumed) == 4
    for (rgb_a, depth_a), (rgb_b, depth_b) in zip(full[2:], resumed):
        np.testing.assert_array_equal(rgb_a, rgb_b)
        np.testing.assert_array_equal(depth_a, depth_b)
    # Another epoch is another draw (order and augmentation).
    assert not np.array_equal(full[0][0], full[2][0])


def test_augmented_depth_keeps_its_values_and_units(pairs):
    """Nearest-neighbour depth: metres, only values that exist in the source, never a
    blend of an invalid 0 with valid depth; RGB stays within 0..255."""
    strong = AugmentConfig(crop_min_scale=0.5, crop_prob=1.0, brightness=0.5, contrast=0.5)
    batches = train_batches(source(pairs, cache_max_mb=0), 0, augment=strong)
    depth = np.concatenate([d for _, d in batches])
    rgb = np.concatenate([r for r, _ in batches])
    assert depth.shape[1:] == (32, 32, 1) and rgb.shape[1:] == (32, 32, 3)
    assert set(np.unique(depth).round(6)) <= {0.0, 0.5, 1.25, 3.0, 7.5}
    assert (depth == 0).any() and (depth > 0).any()
    assert rgb.min() >= 0.0 and rgb.max() <= 255.0 and rgb.max() > 200.0


@pytest.mark.parametrize(
    "budget_mb, train_cached, val_cached",
    [
        (0.1, True, True),  # both fit
        (0.07, True, False),  # train (0.059 MiB) first; val (0.029 MiB) not in what is left
        (0.05, False, True),  # train does not fit; val does
        (0.0, False, False),
    ],
)
def test_train_and_val_share_one_cache_budget(pairs, budget_mb, train_cached, val_cached):
    from pipeline.data.tfdata import split_sources

    rows = [{"rgb": r, "depth": d} for r, d in zip(*pairs)]
    train, val = split_sources(rows[:4], rows[4:], cache_max_mb=budget_mb, size=(H, W))
    assert (train.cached, val.cached) == (train_cached, val_cached)
    assert (train.n, val.n) == (4, 2)


# Each source pixel's own coordinates, in both halves of the pair: RGB as smooth ramps
# (R = 4x, G = 5y; bilinear resampling of a ramp returns the sampled coordinate itself)
# and depth as 1000 + 100x + y mm (nearest neighbour returns the coordinates of the pixel
# it picked). Wherever RGB and depth were resampled from the same place, the two agree
# to half a source pixel; a flip or crop of one half only, or with its own box, does not.
X_STEP, Y_STEP, DEPTH_MM, MM_PER_X = 4, 5, 1000, 100
NO_JITTER = dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)


@pytest.fixture()
def coordinate_pairs(tmp_path):
    y, x = np.mgrid[0:H, 0:W]
    rgb = np.stack([X_STEP * x, Y_STEP * y, np.full_like(x, 128)], axis=-1).astype(np.uint8)
    depth_m = (DEPTH_MM + MM_PER_X * x + y) / 1000.0
    write_rgb_png(tmp_path / "rgb.png", rgb)
    write_depth_png(tmp_path / "depth.png", depth_m)
    return [str(tmp_path / "rgb.png")] * N, [str(tmp_path / "depth.png")] * N


def source_coordinates(rgb, depth):
    """(x, y) each output pixel came from: continuous from RGB, integer from depth."""
    mm = np.rint(depth[..., 0] * 1000.0).astype(int) - DEPTH_MM
    return (rgb[..., 0] / X_STEP, rgb[..., 1] / Y_STEP), (mm // MM_PER_X, mm % MM_PER_X)


@pytest.mark.parametrize(
    "augment, flips, crops",
    [
        (AugmentConfig(flip=False, crop_min_scale=0.5, crop_prob=1.0, **NO_JITTER), False, True),
        (AugmentConfig(flip=True, crop_min_scale=1.0, **NO_JITTER), True, False),
        (AugmentConfig(flip=True, crop_min_scale=0.5, crop_prob=1.0, **NO_JITTER), True, True),
    ],
    ids=["crop", "flip", "crop+flip"],
)
def test_augmentation_keeps_rgb_and_depth_aligned(coordinate_pairs, augment, flips, crops):
    batches = train_batches(
        source(coordinate_pairs, cache_max_mb=1), 0, epochs=4, augment=augment, height=24, width=40
    )  # non-square, other aspect than the source
    rgb = np.concatenate([r for r, _ in batches])
    depth = np.concatenate([d for _, d in batches])
    (x_rgb, y_rgb), (x_depth, y_depth) = source_coordinates(rgb, depth)
    apart = max(np.abs(x_rgb - x_depth).max(), np.abs(y_rgb - y_depth).max())
    assert apart <= 0.51, f"RGB and depth sampled up to {apart:.2f} source pixels apart"

    # The augmentations really happened, so the agreement above means something.
    flipped = x_depth[:, 0, 0] > x_depth[:, 0, -1]
    cropped = x_depth.max(axis=(1, 2)) - x_depth.min(axis=(1, 2)) < W - 2
    assert flipped.any() == flips and (~flipped).any()
    assert cropped.all() == crops and cropped.any() == crops
