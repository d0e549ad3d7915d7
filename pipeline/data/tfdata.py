"""tf.data input pipeline: parallel decode, in-memory cache, deterministic augmentation.

Every random choice (order and augmentation) is a pure function of (seed, epoch,
position), so a run resumed at epoch k sees exactly the batches an uninterrupted run
would have seen; that is what makes kill-and-resume end with the same weights.

RGB is resized with plain bilinear interpolation, the same op as the Resizing layer in
the exported device model, so training sees what the device graph will feed the core.
Depth is resized with nearest neighbour so invalid zeros never blend into valid depth.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from pipeline.core.config import AugmentConfig
from pipeline.core.files import MM_PER_M

AUTOTUNE = tf.data.AUTOTUNE


def decode_pair(rgb_path, depth_path):
    """File paths -> (uint8 HxWx3, uint16 HxWx1) at the source resolution."""
    rgb = tf.io.decode_png(tf.io.read_file(rgb_path), channels=3)
    depth = tf.io.decode_png(tf.io.read_file(depth_path), channels=1, dtype=tf.uint16)
    return rgb, depth


def decode_with_teacher(rgb_path, depth_path, teacher_path):
    """Like decode_pair, with the teacher's map as a second depth channel (HxWx2 uint16), so
    every crop, resize and flip below moves both exactly alike. An empty path reads as all
    zeros (invalid): no ground truth (unlabeled image) or no teacher map (dropped)."""
    rgb = tf.io.decode_png(tf.io.read_file(rgb_path), channels=3)

    def depth_or_zeros(path):
        return tf.cond(
            tf.equal(path, ""),
            lambda: tf.zeros(tf.concat([tf.shape(rgb)[:2], [1]], 0), tf.uint16),
            lambda: tf.io.decode_png(tf.io.read_file(path), channels=1, dtype=tf.uint16),
        )

    return rgb, tf.concat([depth_or_zeros(depth_path), depth_or_zeros(teacher_path)], axis=-1)


def to_geometry(rgb, depth, size: tuple[int, int], aspect: str):
    """One decoded pair at the device input's geometry (480x640 for the challenge), still
    uint8/uint16: centre-cropped to its aspect ratio (aspect='crop', as
    pipeline.data.dataset.aspect_crop_box) or not ('stretch'), then resized (bilinear RGB, nearest
    depth so 0 = invalid never blends). A pair already at that size passes unchanged, so
    sources of any size, even mixed, batch and cache alike."""
    height, width = size

    def convert():
        r, d = rgb, depth
        if aspect == "crop":
            h, w = tf.shape(rgb)[0], tf.shape(rgb)[1]
            too_tall = h * width > w * height
            crop_h = tf.where(
                too_tall, tf.maximum(1, _round_int(tf.cast(w, tf.float64) * height / width)), h
            )
            crop_w = tf.where(
                too_tall, w, tf.maximum(1, _round_int(tf.cast(h, tf.float64) * width / height))
            )
            top, left = (h - crop_h) // 2, (w - crop_w) // 2
            r = tf.image.crop_to_bounding_box(r, top, left, crop_h, crop_w)
            d = tf.image.crop_to_bounding_box(d, top, left, crop_h, crop_w)
        r = tf.saturate_cast(tf.round(tf.image.resize(r, size, method="bilinear")), tf.uint8)
        return r, tf.image.resize(d, size, method="nearest")

    same = tf.logical_and(tf.shape(rgb)[0] == height, tf.shape(rgb)[1] == width)
    return tf.cond(same, lambda: (rgb, depth), convert)


def _round_int(x):
    return tf.cast(tf.round(x), tf.int32)  # half to even, like Python's round()


def to_working(rgb, depth, height: int, width: int):
    """uint8/uint16 source tensors -> float32 RGB 0..255 and depth metres at working size.

    The device graph's bilinear resize, read straight from the integer source: no
    full-resolution float copy is made (that copy dominated the input cost per step).
    """
    rgb = tf.image.resize(rgb, (height, width), method="bilinear")
    depth = (
        tf.cast(tf.image.resize(depth, (height, width), method="nearest"), tf.float32) / MM_PER_M
    )
    return rgb, depth


def augment(rgb_u8, depth_u16, seed, cfg: AugmentConfig, height: int, width: int):
    """Random crop-and-resize, horizontal flip and colour jitter from a stateless seed."""
    seeds = tf.random.experimental.stateless_split(seed, num=7)
    do_crop = tf.constant(False)
    box = tf.constant([0.0, 0.0, 1.0, 1.0])
    if cfg.crop_min_scale < 1.0 and cfg.crop_prob > 0:
        do_crop = tf.random.stateless_uniform([], seeds[0]) < cfg.crop_prob
        scale = tf.random.stateless_uniform([], seeds[1], cfg.crop_min_scale, 1.0)
        offset = tf.random.stateless_uniform([2], seeds[2]) * (1.0 - scale)
        # Same aspect ratio as the full frame, so objects are zoomed, not stretched.
        box = tf.stack([offset[0], offset[1], offset[0] + scale, offset[1] + scale])

    def crop():
        boxes, idx, size = box[None], tf.constant([0]), tf.constant([height, width])
        return (
            tf.image.crop_and_resize(rgb_u8[None], boxes, idx, size, method="bilinear")[0],
            tf.image.crop_and_resize(depth_u16[None], boxes, idx, size, method="nearest")[0]
            / MM_PER_M,
        )

    # Both read the integer source directly and return float32 at working size.
    rgb, depth = tf.cond(do_crop, crop, lambda: to_working(rgb_u8, depth_u16, height, width))
    if cfg.flip:
        flip = tf.random.stateless_uniform([], seeds[3]) < 0.5
        rgb = tf.where(flip, tf.reverse(rgb, axis=[1]), rgb)
        depth = tf.where(flip, tf.reverse(depth, axis=[1]), depth)
    x = rgb / 255.0
    if cfg.brightness > 0:
        x = tf.image.stateless_random_brightness(x, cfg.brightness, seeds[4])
    if cfg.contrast > 0:
        x = tf.image.stateless_random_contrast(x, 1 - cfg.contrast, 1 + cfg.contrast, seeds[5])
    if cfg.saturation > 0 or cfg.hue > 0:
        x = tf.image.stateless_random_saturation(
            x, 1 - cfg.saturation, 1 + cfg.saturation + 1e-6, seeds[6]
        )
        if cfg.hue > 0:
            x = tf.image.stateless_random_hue(x, cfg.hue, seeds[6][::-1])
    return tf.clip_by_value(x, 0.0, 1.0) * 255.0, depth


def cache_bytes(
    rgb_paths: list[str], height: int = 480, width: int = 640, depth_channels: int = 1
) -> int:
    """Memory the decoded source-resolution cache would take (uint8 RGB + uint16 depth)."""
    return len(rgb_paths) * height * width * (3 + 2 * depth_channels)


class PairSource:
    """Random access to decoded pairs at the device geometry (`to_geometry`): held in RAM
    when they fit the cache budget, else decoded from disk on every access (parallel
    map), so RAM stays bounded. With `teacher_paths` (one per image, "" = none) depth has a
    second channel, the teacher's (decode_with_teacher); without, it is exactly as before."""

    def __init__(
        self,
        rgb_paths,
        depth_paths,
        *,
        cache_max_mb: float,
        size=(480, 640),
        aspect: str = "crop",
        weights=None,
        teacher_paths=None,
    ):
        self.rgb_paths = tf.constant(list(rgb_paths))
        self.depth_paths = tf.constant(list(depth_paths))
        self.paths = (self.rgb_paths, self.depth_paths)
        if teacher_paths is not None:
            self.paths += (tf.constant(list(teacher_paths)),)
        self.n = len(rgb_paths)
        self.size, self.aspect = tuple(size), aspect
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        self.cached = (
            cache_bytes(list(rgb_paths), *self.size, depth_channels=len(self.paths) - 1)
            <= cache_max_mb * 2**20
        )
        if self.cached:
            ds = tf.data.Dataset.from_tensor_slices(self.paths)
            ds = ds.map(self._decode, num_parallel_calls=AUTOTUNE, deterministic=True).batch(self.n)
            rgb_all, depth_all = next(iter(ds))
            # Variables, not tensors: a tensor captured by the input pipeline becomes a constant
            # when tf.data rewrites the pipeline's graph (its default optimizations, and always
            # under op determinism, base.deterministic), a second copy of the whole cache
            # (measured: +1.2 GB for 1.2 GB); a variable is captured by handle. Made from the
            # batch, whose buffer it takes over: no copy here either.
            with tf.device("/CPU:0"):
                self.rgb_all = tf.Variable(rgb_all, trainable=False, name="rgb_cache")
                self.depth_all = tf.Variable(depth_all, trainable=False, name="depth_cache")

    def _decode(self, *paths):
        decode = decode_pair if len(paths) == 2 else decode_with_teacher
        return to_geometry(*decode(*paths), self.size, self.aspect)

    def get(self, index):
        if self.cached:
            return tf.gather(self.rgb_all, index), tf.gather(self.depth_all, index)
        return self._decode(*(tf.gather(p, index) for p in self.paths))


def split_sources(
    train_rows: list[dict],
    val_rows: list[dict],
    *,
    cache_max_mb: float,
    size=(480, 640),
    aspect: str = "crop",
    source_weights: dict[str, float] | None = None,
    teacher: bool = False,
) -> tuple[PairSource, PairSource]:
    """Train and val sources sharing one RAM budget: train first (read every step), val
    only in what is left, so the two together never hold more than cache_max_mb.
    source_weights (data.sources NAME -> weight) sets how often each train image is drawn.
    teacher: train rows carry a "teacher" map path ("" = none), read as a second depth channel."""
    weights = None
    if source_weights and len({source_weights[r["source"]] for r in train_rows}) > 1:
        weights = [source_weights[r["source"]] for r in train_rows]
    train = PairSource(
        [r["rgb"] for r in train_rows],
        [r["depth"] for r in train_rows],
        cache_max_mb=cache_max_mb,
        size=size,
        aspect=aspect,
        weights=weights,
        teacher_paths=[r["teacher"] for r in train_rows] if teacher else None,
    )
    used_mb = (
        cache_bytes([r["rgb"] for r in train_rows], *size, depth_channels=2 if teacher else 1)
        / 2**20
        if train.cached
        else 0.0
    )
    val = PairSource(
        [r["rgb"] for r in val_rows],
        [r["depth"] for r in val_rows],
        cache_max_mb=cache_max_mb - used_mb,
        size=size,
        aspect=aspect,
    )
    return train, val


def epoch_order(n: int, *, seed: int, epoch: int, count: int, weights=None) -> np.ndarray:
    """`count` indices for one epoch, seeded by (seed, epoch): concatenated permutations,
    or with per-image `weights` a draw in which an image of weight 2 comes twice as often."""
    rng = np.random.default_rng([seed, epoch])
    if weights is not None:
        return rng.choice(n, size=count, p=np.asarray(weights) / np.sum(weights))
    reps = math.ceil(count / n)
    return np.concatenate([rng.permutation(n) for _ in range(reps)])[:count]


def train_dataset(
    source: PairSource,
    *,
    seed: int,
    first_epoch: int,
    epochs: int,
    steps_per_epoch: int,
    batch_size: int,
    height: int,
    width: int,
    augment_cfg: AugmentConfig,
):
    """Batches for epochs [first_epoch, epochs): exactly steps_per_epoch per epoch."""
    per_epoch = steps_per_epoch * batch_size
    indices, epoch_ids, positions = [], [], []
    for epoch in range(first_epoch, epochs):
        indices.append(
            epoch_order(source.n, seed=seed, epoch=epoch, count=per_epoch, weights=source.weights)
        )
        epoch_ids.append(np.full(per_epoch, epoch))
        positions.append(np.arange(per_epoch))
    ds = tf.data.Dataset.from_tensor_slices(
        (
            np.concatenate(indices).astype(np.int32),
            np.concatenate(epoch_ids).astype(np.int64),
            np.concatenate(positions).astype(np.int64),
        )
    )

    def load(index, epoch, position):
        rgb, depth = source.get(index)
        sample_seed = tf.stack([tf.constant(seed, tf.int64), epoch * 1_000_003 + position])
        return augment(rgb, depth, sample_seed, augment_cfg, height, width)

    ds = ds.map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def eval_dataset(source: PairSource, *, batch_size: int, height: int, width: int, indices=None):
    """Unaugmented batches at working size, in split order (or of these `indices` only).

    Read from the RAM cache when the source is in it, else decoded from disk on every
    validation pass; nothing more is kept, so RAM stays within train.cache_max_mb.
    """
    if indices is None:
        ds = tf.data.Dataset.range(source.n)
    else:
        ds = tf.data.Dataset.from_tensor_slices(tf.constant(indices, tf.int64))
    ds = ds.map(
        lambda i: to_working(*source.get(i), height, width),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    return ds.batch(batch_size).prefetch(AUTOTUNE)
