"""Procedural indoor-like RGB-D scenes with exact depth: the embedded default data set.

Each scene is a ray-cast room (floor, ceiling, three walls) seen by a pinhole camera
with Kinect-like intrinsics, furnished with boxes and spheres. Colour comes from
textured surfaces lit by a point light, so shading, texture scale and size all
correlate with geometry the way a network can learn. Depth is the exact z of the first
hit; like a real sensor, some pixels are knocked out (0 = invalid): random blobs and
everything beyond the sensor's range. Fully determined by the seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.files import write_depth_png, write_rgb_png

SENSOR_MAX_M = 10.0


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return ry @ rx @ rz


def _value_noise(rng, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth noise in 0..1: a coarse random grid, bilinearly upsampled."""
    grid = rng.random((cells + 1, cells + 1))
    ys, xs = np.linspace(0, cells, h), np.linspace(0, cells, w)
    y0, x0 = np.minimum(ys.astype(int), cells - 1), np.minimum(xs.astype(int), cells - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    g = grid
    top = g[y0][:, x0] * (1 - fx) + g[y0][:, x0 + 1] * fx
    bot = g[y0 + 1][:, x0] * (1 - fx) + g[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bot * fy


class _Surface:
    """A hit record per pixel: distance along the ray, normal, base colour, pattern."""

    def __init__(self, n_rays: int):
        self.t = np.full(n_rays, np.inf)
        self.normal = np.zeros((n_rays, 3))
        self.color = np.zeros((n_rays, 3))
        self.pattern = np.ones(n_rays)

    def offer(self, t, normal, color, pattern):
        closer = (t > 1e-6) & (t < self.t)
        self.t[closer] = t[closer]
        self.normal[closer] = normal[closer] if np.ndim(normal) == 2 else normal
        self.color[closer] = color
        self.pattern[closer] = pattern[closer]


def _checker(u, v, size):
    return ((np.floor(u / size) + np.floor(v / size)) % 2).astype(float)


def render_scene(seed: int, *, height: int = 480, width: int = 640, invalid_fraction: float = 0.05):
    """One scene -> (rgb uint8 HxWx3, depth float32 HxW metres with 0 = invalid)."""
    # Rays that miss a primitive carry t = inf; the NaNs that follow are masked by `offer`.
    with np.errstate(divide="ignore", invalid="ignore"):
        return _render(seed, height, width, invalid_fraction)


def _render(seed: int, height: int, width: int, invalid_fraction: float):
    rng = np.random.default_rng(seed)
    fx = fy = 525.0 * width / 640.0
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    v, u = np.mgrid[0:height, 0:width].astype(float)
    cam_dirs = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], axis=-1).reshape(-1, 3)
    rot = _rotation(rng.uniform(-0.5, 0.5), rng.uniform(-0.35, 0.15), rng.uniform(-0.05, 0.05))
    dirs = cam_dirs @ rot.T  # world-frame rays; y points down, camera at the origin
    hit = _Surface(dirs.shape[0])

    # Room: x in [-half_w, half_w], y from ceiling (-up) to floor (+down), back wall at z = depth.
    half_w, down, up, back = rng.uniform(1.5, 3.5), rng.uniform(1.0, 1.6), rng.uniform(0.9, 1.6), rng.uniform(3.5, 9.0)
    planes = [  # (axis, coordinate, normal facing the camera)
        (1, down, (0, -1, 0)), (1, -up, (0, 1, 0)), (2, back, (0, 0, -1)),
        (0, -half_w, (1, 0, 0)), (0, half_w, (-1, 0, 0)),
    ]
    for axis, coord, normal in planes:
        t = coord / dirs[:, axis]
        t = np.where(np.isfinite(t), t, np.inf)
        p = dirs * t[:, None]
        a, b = [i for i in range(3) if i != axis]
        kind = rng.integers(3)
        if kind == 0:  # tiles
            pattern = 0.7 + 0.3 * _checker(p[:, a], p[:, b], rng.uniform(0.25, 0.8))
        elif kind == 1:  # stripes
            pattern = 0.75 + 0.25 * (np.sin(p[:, a] * rng.uniform(6, 20)) > 0)
        else:  # plain paint
            pattern = np.full(len(t), 0.9)
        hit.offer(t, np.asarray(normal, float), rng.uniform(0.25, 0.95, 3), pattern)

    # Furniture: axis-aligned boxes standing on the floor, and spheres.
    for _ in range(rng.integers(2, 6)):
        size = rng.uniform([0.3, 0.3, 0.3], [1.4, 1.6, 1.2])
        centre_x = rng.uniform(-half_w + size[0] / 2, half_w - size[0] / 2)
        centre_z = rng.uniform(1.2, back - size[2] / 2)
        lo = np.array([centre_x - size[0] / 2, down - size[1], centre_z - size[2] / 2])
        hi = lo + size
        t1, t2 = lo / dirs, hi / dirs
        t_near = np.nanmax(np.minimum(t1, t2), axis=1)
        t_far = np.nanmin(np.maximum(t1, t2), axis=1)
        inside = (t_near <= t_far) & (t_near > 0)
        t = np.where(inside, t_near, np.inf)
        p = dirs * t[:, None]
        # The face hit is the one whose coordinate equals the box bound.
        eps = 1e-4 * np.maximum(t, 1)[:, None]
        normal = -np.sign(dirs) * ((np.abs(p - lo) < eps) | (np.abs(p - hi) < eps))
        pattern = 0.8 + 0.2 * _checker(p[:, 0] + p[:, 1], p[:, 2], rng.uniform(0.1, 0.4))
        hit.offer(t, normal.astype(float), rng.uniform(0.1, 1.0, 3), pattern)
    for _ in range(rng.integers(0, 4)):
        r = rng.uniform(0.15, 0.6)
        c = np.array([rng.uniform(-half_w + r, half_w - r), rng.uniform(-0.5, down - r), rng.uniform(1.0, back - r)])
        b = dirs @ c
        disc = b * b - (np.sum(dirs * dirs, axis=1)) * (c @ c - r * r)
        t = (b - np.sqrt(disc)) / np.sum(dirs * dirs, axis=1)
        t = np.where(disc > 0, t, np.inf)
        normal = (dirs * t[:, None] - c) / r
        hit.offer(t, np.nan_to_num(normal), rng.uniform(0.1, 1.0, 3), np.ones(len(t)))

    points = dirs * hit.t[:, None]
    light = np.array([rng.uniform(-1, 1), -up * 0.8, rng.uniform(0.5, 2.5)])
    to_light = light - points
    dist = np.linalg.norm(to_light, axis=1, keepdims=True)
    lambert = np.clip(np.sum(hit.normal * to_light / dist, axis=1), 0, 1)
    falloff = 1.0 / (1.0 + 0.04 * dist[:, 0] ** 2)
    shade = 0.25 + 0.9 * lambert * falloff
    rgb = hit.color * (hit.pattern * shade)[:, None]
    rgb = rgb.reshape(height, width, 3)
    rgb = rgb * (0.9 + 0.2 * _value_noise(rng, height, width, 8))[..., None]  # uneven exposure
    rgb = rgb + rng.normal(0, 0.012, rgb.shape)  # sensor noise
    rgb8 = np.clip(rgb * 255.0, 0, 255).astype(np.uint8)

    # Depth is the z coordinate in the camera frame (what depth sensors report), not ray length.
    depth = (points @ rot)[:, 2].reshape(height, width).astype(np.float32)
    depth[~np.isfinite(depth) | (depth > SENSOR_MAX_M)] = 0.0
    if invalid_fraction > 0:
        blobs = _value_noise(rng, height, width, 12)
        depth[blobs > np.quantile(blobs, 1.0 - invalid_fraction)] = 0.0
    return rgb8, depth


def write_dataset(out_dir: str | Path, *, count: int, seed: int, height: int = 480, width: int = 640,
                  invalid_fraction: float = 0.05, progress=None) -> list[str]:
    """Render `count` scenes into out_dir/rgb and out_dir/depth (challenge layout)."""
    out_dir = Path(out_dir)
    names = []
    for i in range(count):
        rgb, depth = render_scene(seed * 100_003 + i, height=height, width=width, invalid_fraction=invalid_fraction)
        name = f"{i:06d}.png"
        write_rgb_png(out_dir / "rgb" / name, rgb)
        write_depth_png(out_dir / "depth" / name, depth)
        names.append(name)
        if progress:
            progress(i + 1, count)
    return names
