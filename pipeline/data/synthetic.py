"""Procedural indoor RGB-D scenes with exact depth: the embedded default data set.

Each scene is a closed, ray-cast room (floor, ceiling, four walls) seen by a handheld
pinhole camera with Kinect-like intrinsics: eye or chest height, looking level or down
at the floor and the furniture, turned anywhere, slightly rolled. The room holds what
real rooms hold at real sizes: tables on legs with clutter on top, cabinets and sofas
against the walls, posts and pots, balls, doors and pictures on the walls. Surfaces carry
textures at metric scale (tiles, planks, carpet, stripes, paint with stains), lit by an
ambient term, a skylight and one to three point lights; the camera adds exposure, white
balance, vignetting, blur and noise. So perspective, texture density, shading and the
size of familiar objects all tell depth the way they do in real photos.

Depth is the exact camera z of the first hit; like a real sensor, some pixels are
knocked out (0 = invalid): random blobs and everything beyond the sensor's range.
Fully determined by the seed.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path

import numpy as np

from pipeline.core import host
from pipeline.core.files import write_depth_png, write_rgb_png

SENSOR_MAX_M = 10.0
NOISE_CELLS = 256  # lattice of the value noise; coordinates wrap around it
BLAS_THREADS = (
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
)  # what numpy's BLAS may read


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy, sy, cp, sp, cr, sr = (
        np.cos(yaw),
        np.sin(yaw),
        np.cos(pitch),
        np.sin(pitch),
        np.cos(roll),
        np.sin(roll),
    )
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return ry @ rx @ rz


def _value_noise(rng, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth image-space noise in 0..1: a coarse random grid, bilinearly upsampled."""
    grid = rng.random((cells + 1, cells + 1))
    ys, xs = np.linspace(0, cells, h), np.linspace(0, cells, w)
    y0, x0 = np.minimum(ys.astype(int), cells - 1), np.minimum(xs.astype(int), cells - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    g = grid
    top = g[y0][:, x0] * (1 - fx) + g[y0][:, x0 + 1] * fx
    bot = g[y0 + 1][:, x0] * (1 - fx) + g[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bot * fy


class _Texture:
    """Metric surface patterns, evaluated at the hit points' surface coordinates (metres)."""

    def __init__(self, rng):
        self.rng = rng
        self.lattice = rng.random((NOISE_CELLS, NOISE_CELLS))

    def noise(self, u, v, freq: float):
        """Value noise in 0..1 at surface points, `freq` cells per metre."""
        x, y = u * freq, v * freq
        x0, y0 = np.floor(x), np.floor(y)
        fx, fy = x - x0, y - y0
        fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
        i, j = x0.astype(np.int64) % NOISE_CELLS, y0.astype(np.int64) % NOISE_CELLS
        i1, j1 = (i + 1) % NOISE_CELLS, (j + 1) % NOISE_CELLS
        g = self.lattice
        return (g[j, i] * (1 - fx) + g[j, i1] * fx) * (1 - fy) + (
            g[j1, i] * (1 - fx) + g[j1, i1] * fx
        ) * fy

    def fbm(self, u, v, freq: float, octaves: int = 3):
        total, amp = 0.0, 0.5
        for k in range(octaves):
            total = total + amp * self.noise(u + 17.0 * k, v - 31.0 * k, freq * 2**k)
            amp /= 2
        return total / (1 - 0.5**octaves)

    def pick(self, kind: str | None = None):
        """A random surface: fn(u, v) -> (n, 3) colours in 0..1."""
        rng = self.rng
        kind = kind or rng.choice(["paint", "tiles", "planks", "carpet", "stripes", "fabric"])
        # Mostly the muted colours of real rooms; now and then a saturated one.
        spread = 0.35 if rng.random() < 0.2 else 0.08
        base = np.clip(rng.uniform(0.12, 0.9) * (1 + rng.normal(0, spread, 3)), 0.02, 1.0)
        other = np.clip(base * rng.uniform(0.5, 1.2) + rng.normal(0, 0.12, 3), 0.02, 1.0)
        size = rng.uniform(0.2, 0.6)
        freq = rng.uniform(1.0, 4.0)
        angle = rng.uniform(0, np.pi)

        def mix(t):
            return base[None] * (1 - t[:, None]) + other[None] * t[:, None]

        def paint(u, v):  # low-frequency stains on a flat colour
            return mix(0.25 * self.fbm(u, v, freq))

        def tiles(u, v):  # square tiles with dark grout lines
            cu, cv = np.floor(u / size), np.floor(v / size)
            checker = (cu + cv) % 2
            fu, fv = u / size - cu, v / size - cv
            grout = np.minimum(np.minimum(fu, 1 - fu), np.minimum(fv, 1 - fv)) < 0.03
            return (
                mix(0.7 * checker + 0.3 * self.noise(u, v, 20.0))
                * np.where(grout, 0.55, 1.0)[:, None]
            )

        def planks(u, v):  # wood: boards of random tone, grain along them
            width = size * 0.5
            board = np.floor(v / width)
            tone = self.noise(board, board * 0.37, 1.0)
            grain = np.sin(u * 3.0 + 8.0 * self.fbm(u * 0.2, v * 4.0, 2.0)) * 0.5 + 0.5
            seam = (v / width - board) < 0.04
            return mix(0.6 * tone + 0.4 * grain) * np.where(seam, 0.6, 1.0)[:, None]

        def carpet(u, v):  # fine speckle: its density falls off with distance like a real carpet's
            return mix(0.6 * self.noise(u, v, 60.0) + 0.4 * self.fbm(u, v, 3.0))

        def stripes(u, v):
            w = u * np.cos(angle) + v * np.sin(angle)
            return mix(((w / size) % 1.0 < 0.5).astype(float) * 0.8 + 0.2 * self.noise(u, v, 8.0))

        def fabric(u, v):  # woven: two fine crossing waves
            return mix(
                0.5
                + 0.25 * np.sin(u * 120.0) * np.sin(v * 120.0)
                + 0.25 * (self.fbm(u, v, freq) - 0.5)
            )

        return {
            "paint": paint,
            "tiles": tiles,
            "planks": planks,
            "carpet": carpet,
            "stripes": stripes,
            "fabric": fabric,
        }[kind]


class _Surface:
    """A hit record per pixel: distance along the ray, normal and colour of the nearest hit."""

    def __init__(self, dirs: np.ndarray):
        self.dirs = dirs
        n = dirs.shape[0]
        self.t = np.full(n, np.inf)
        self.normal = np.zeros((n, 3))
        self.color = np.zeros((n, 3))

    def offer(self, t, normal, texture, uv):
        """Keep the hits nearer than what is there; colour only those (textures cost)."""
        closer = np.isfinite(t) & (t > 1e-6) & (t < self.t)
        if not closer.any():
            return
        self.t[closer] = t[closer]
        self.normal[closer] = normal[closer] if np.ndim(normal) == 2 else normal
        u, v = uv(closer)
        self.color[closer] = texture(u, v)


def _plane(hit: _Surface, axis: int, coord: float, texture):
    """The room's planes: points with p[axis] = coord, normal facing the camera at the origin."""
    d = hit.dirs
    t = coord / d[:, axis]
    normal = np.zeros(3)
    normal[axis] = -np.sign(coord)
    a, b = [i for i in range(3) if i != axis]
    hit.offer(t, normal, texture, lambda m: (d[m, a] * t[m], d[m, b] * t[m]))


def _box(hit: _Surface, centre, half, yaw: float, texture):
    """A box turned by `yaw` about the vertical; slab test in the box's own frame."""
    c, s = np.cos(yaw), np.sin(yaw)
    rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    origin = -(rot.T @ np.asarray(centre, float))
    d = hit.dirs @ rot
    d = np.where(np.abs(d) < 1e-12, 1e-12, d)
    t1, t2 = (-half - origin) / d, (half - origin) / d
    near = np.minimum(t1, t2)
    axis = np.argmax(near, axis=1)
    t_near = near[np.arange(len(d)), axis]
    t_far = np.min(np.maximum(t1, t2), axis=1)
    t = np.where((t_near <= t_far) & (t_near > 0), t_near, np.inf)
    local_normal = np.zeros_like(d)
    local_normal[np.arange(len(d)), axis] = -np.sign(d[np.arange(len(d)), axis])
    normal = local_normal @ rot.T

    def uv(m):
        p = origin + d[m] * t[m, None]
        ax = axis[m]
        u = np.where(ax == 0, p[:, 2], p[:, 0])  # the two coordinates in the face
        v = np.where(ax == 1, p[:, 2], p[:, 1])
        return u, v

    hit.offer(t, normal, texture, uv)


def _cylinder(hit: _Surface, centre_xz, radius: float, y_top: float, y_bottom: float, texture):
    """An upright cylinder (post, pot, bin) from y_top down to y_bottom; its side only."""
    d = hit.dirs
    cx, cz = centre_xz
    a = d[:, 0] ** 2 + d[:, 2] ** 2
    b = d[:, 0] * cx + d[:, 2] * cz
    disc = b * b - a * (cx * cx + cz * cz - radius * radius)
    t = (b - np.sqrt(np.maximum(disc, 0))) / a
    y = d[:, 1] * t
    t = np.where((disc > 0) & (y >= y_top) & (y <= y_bottom), t, np.inf)
    px, pz = d[:, 0] * t - cx, d[:, 2] * t - cz
    normal = np.nan_to_num(np.stack([px, np.zeros_like(px), pz], axis=1) / radius)
    hit.offer(t, normal, texture, lambda m: (np.arctan2(pz[m], px[m]) * radius, y[m]))


def _sphere(hit: _Surface, centre, radius: float, texture):
    d = hit.dirs
    c = np.asarray(centre, float)
    a = np.sum(d * d, axis=1)
    b = d @ c
    disc = b * b - a * (c @ c - radius * radius)
    t = np.where(disc > 0, (b - np.sqrt(np.maximum(disc, 0))) / a, np.inf)
    normal = np.nan_to_num((d * t[:, None] - c) / radius)
    hit.offer(t, normal, texture, lambda m: (normal[m, 0] + normal[m, 2], normal[m, 1]))


def render_scene(seed: int, *, height: int = 480, width: int = 640, invalid_fraction: float = 0.05):
    """One scene -> (rgb uint8 HxWx3, depth float32 HxW metres with 0 = invalid)."""
    # Rays that miss a primitive carry t = inf or NaN; `offer` keeps only finite, nearer hits.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return _render(seed, height, width, invalid_fraction)


def _furnish(hit: _Surface, rng, tex: _Texture, room: dict):
    """Furniture at real sizes in world coordinates.

    Camera at the origin, y down, floor at y = floor."""
    floor, x0, x1, z0, z1 = room["floor"], room["x0"], room["x1"], room["z0"], room["z1"]

    def spot(margin):  # a floor position inside the room, not on top of the camera
        for _ in range(20):
            x, z = rng.uniform(x0 + margin, x1 - margin), rng.uniform(z0 + margin, z1 - margin)
            if x * x + z * z > (margin + 0.5) ** 2:
                return x, z
        return x, z

    for _ in range(rng.integers(0, 3)):  # tables: a top on four legs, things on top
        hx, hz, top = rng.uniform(0.35, 0.9), rng.uniform(0.3, 0.6), floor - rng.uniform(0.68, 0.78)
        x, z = spot(max(hx, hz))
        yaw = rng.choice([0.0, np.pi / 2]) + rng.normal(0, 0.15)
        wood = tex.pick(rng.choice(["planks", "paint"]))
        _box(hit, (x, top + 0.02, z), np.array([hx, 0.02, hz]), yaw, wood)
        c, s = np.cos(yaw), np.sin(yaw)
        for sx, sz in ((-1, -1), (-1, 1), (1, -1), (1, 1)):
            lx, lz = sx * (hx - 0.05), sz * (hz - 0.05)
            leg = (x + c * lx + s * lz, (top + floor) / 2, z - s * lx + c * lz)
            _box(hit, leg, np.array([0.025, (floor - top) / 2, 0.025]), yaw, wood)
        for _ in range(rng.integers(0, 7)):  # clutter: books, boxes, screens, cups
            half = rng.uniform([0.03, 0.02, 0.03], [0.2, 0.25, 0.15])
            lx, lz = (
                rng.uniform(-hx + half[0], hx - half[0]),
                rng.uniform(-hz + half[2], hz - half[2]),
            )
            item = (x + c * lx + s * lz, top - half[1], z - s * lx + c * lz)
            if rng.random() < 0.3:
                _cylinder(hit, (item[0], item[2]), half[0], top - 2 * half[1], top, tex.pick())
            else:
                _box(hit, item, half, yaw + rng.normal(0, 0.4), tex.pick())
    for _ in range(rng.integers(1, 5)):  # cabinets, shelves, sofas: against a wall
        half = rng.uniform([0.3, 0.2, 0.2], [1.0, 1.0, 0.45])
        along_x = rng.random() < 0.5
        if along_x:
            x = rng.uniform(x0 + half[0], x1 - half[0])
            z = (z1 - half[2] - 0.01) if rng.random() < 0.7 else (z0 + half[2] + 0.01)
            yaw = 0.0
        else:
            z = rng.uniform(z0 + half[0], z1 - half[0])
            x = (x0 + half[2] + 0.01) if rng.random() < 0.5 else (x1 - half[2] - 0.01)
            yaw = np.pi / 2
        if x * x + z * z < 0.6:
            continue
        _box(hit, (x, floor - half[1], z), half, yaw, tex.pick())
    for _ in range(rng.integers(0, 4)):  # free-standing boxes: chairs, bins, crates
        half = rng.uniform([0.15, 0.15, 0.15], [0.45, 0.5, 0.45])
        x, z = spot(0.5)
        _box(hit, (x, floor - half[1], z), half, rng.uniform(0, np.pi), tex.pick())
    for _ in range(rng.integers(0, 3)):  # posts, pots, lamps
        r = rng.uniform(0.04, 0.3)
        x, z = spot(r)
        tall = rng.uniform(0.3, min(2.0, floor + room["ceiling"] - 0.1))
        _cylinder(hit, (x, z), r, floor - tall, floor, tex.pick())
    for _ in range(rng.integers(0, 3)):  # balls
        r = rng.uniform(0.1, 0.35)
        x, z = spot(r)
        _sphere(hit, (x, floor - r, z), r, tex.pick("paint"))
    for _ in range(rng.integers(0, 4)):  # doors and pictures: thin boxes on the walls
        door = rng.random() < 0.4
        half_w, half_h = (0.45, 1.0) if door else rng.uniform([0.15, 0.1], [0.6, 0.45])
        centre_y = floor - half_h if door else floor - rng.uniform(1.2, 1.8)
        texture = tex.pick("planks" if door else None)
        wall = rng.integers(4)
        if wall < 2:
            z = z1 if wall == 0 else z0
            x = rng.uniform(x0 + half_w, x1 - half_w)
            _box(hit, (x, centre_y, z), np.array([half_w, half_h, 0.03]), 0.0, texture)
        else:
            x = x1 if wall == 2 else x0
            z = rng.uniform(z0 + half_w, z1 - half_w)
            _box(hit, (x, centre_y, z), np.array([0.03, half_h, half_w]), 0.0, texture)


def _render(seed: int, height: int, width: int, invalid_fraction: float):
    rng = np.random.default_rng(seed)
    tex = _Texture(rng)
    fx = fy = 525.0 * width / 640.0
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    v, u = np.mgrid[0:height, 0:width].astype(float)
    cam_dirs = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], axis=-1).reshape(-1, 3)
    # The room around the camera; its far corner stays inside the sensor's range.
    size_x, size_z = rng.uniform(2.5, 5.5), rng.uniform(2.5, 7.0)
    eye = rng.uniform(1.1, 1.75)
    ceiling = rng.uniform(2.3, 3.0) - eye
    x0 = -rng.uniform(0.4, size_x - 0.4)
    z0 = -rng.uniform(0.4, size_z - 0.4)
    room = {
        "floor": eye,
        "ceiling": ceiling,
        "x0": x0,
        "x1": x0 + size_x,
        "z0": z0,
        "z1": z0 + size_z,
    }

    # A handheld camera: level to ~50 degrees down, slightly rolled, and turned, as people
    # do, towards the room rather than the nearest wall (the longest view of a few tries).
    def free_distance(yaw):
        dx, dz = np.sin(yaw), np.cos(yaw)
        to_x = (room["x1"] if dx > 0 else room["x0"]) / dx if abs(dx) > 1e-9 else np.inf
        to_z = (room["z1"] if dz > 0 else room["z0"]) / dz if abs(dz) > 1e-9 else np.inf
        return min(to_x, to_z)

    yaw = max(rng.uniform(-np.pi, np.pi, 4), key=free_distance)
    rot = _rotation(yaw, rng.uniform(-0.9, 0.15), rng.normal(0, 0.05))
    dirs = cam_dirs @ rot.T  # world-frame rays; y points down, camera at the origin
    hit = _Surface(dirs)
    floor_texture = tex.pick(rng.choice(["tiles", "planks", "carpet", "carpet", "paint"]))
    wall_texture = tex.pick(rng.choice(["paint", "paint", "stripes", "tiles"]))
    _plane(hit, 1, eye, floor_texture)
    _plane(hit, 1, -ceiling, tex.pick(rng.choice(["paint", "tiles"])))
    for axis, coord in ((0, room["x0"]), (0, room["x1"]), (2, room["z0"]), (2, room["z1"])):
        _plane(hit, axis, coord, wall_texture if rng.random() < 0.75 else tex.pick())
    _furnish(hit, rng, tex, room)

    points = dirs * hit.t[:, None]
    shade = rng.uniform(0.15, 0.4) + rng.uniform(0.0, 0.25) * np.clip(
        -hit.normal[:, 1], 0, 1
    )  # ambient + skylight
    for _ in range(rng.integers(1, 4)):
        light = np.array(
            [
                rng.uniform(room["x0"], room["x1"]),
                -ceiling + 0.1,
                rng.uniform(room["z0"], room["z1"]),
            ]
        )
        to_light = light - points
        dist = np.linalg.norm(to_light, axis=1, keepdims=True)
        lambert = np.clip(np.sum(hit.normal * to_light / dist, axis=1), 0, 1)
        shade = shade + rng.uniform(0.5, 1.2) * lambert / (1.0 + 0.08 * dist[:, 0] ** 2)
    rgb = (hit.color * shade[:, None]).reshape(height, width, 3)

    # The camera: exposure, white balance, vignetting, a little blur, noise, gamma.
    rgb = rgb * rng.uniform(0.7, 1.3) * rng.uniform(0.9, 1.1, 3)
    radius2 = ((v - cy) / height) ** 2 + ((u - cx) / width) ** 2
    rgb = rgb * (1.0 - rng.uniform(0.0, 0.8) * radius2)[..., None]
    rgb = rgb * (0.92 + 0.16 * _value_noise(rng, height, width, 8))[..., None]  # uneven exposure
    if rng.random() < 0.5:
        rgb = (rgb + np.roll(rgb, 1, 0) + np.roll(rgb, 1, 1) + np.roll(rgb, (1, 1), (0, 1))) / 4
    rgb = np.clip(rgb + rng.normal(0, 0.01, rgb.shape), 0, 1) ** (1 / rng.uniform(1.0, 1.6))
    rgb8 = np.clip(rgb * 255.0, 0, 255).astype(np.uint8)

    # Depth is the z coordinate in the camera frame (what depth sensors report), not ray length.
    depth = (points @ rot)[:, 2].reshape(height, width).astype(np.float32)
    depth[~np.isfinite(depth) | (depth > SENSOR_MAX_M)] = 0.0
    if invalid_fraction > 0:
        blobs = _value_noise(rng, height, width, 12)
        depth[blobs > np.quantile(blobs, 1.0 - invalid_fraction)] = 0.0
    return rgb8, depth


def _write_scene(
    out_dir: Path, index: int, seed: int, height: int, width: int, invalid_fraction: float
) -> str:
    rgb, depth = render_scene(
        seed * 100_003 + index, height=height, width=width, invalid_fraction=invalid_fraction
    )
    name = f"{index:06d}.png"
    write_rgb_png(out_dir / "rgb" / name, rgb)
    write_depth_png(out_dir / "depth" / name, depth)
    return name


@contextmanager
def _one_blas_thread():
    """One BLAS thread per process started meanwhile: with a thread per core in every
    worker, 2 workers on 2 cores rendered 1.6x slower than one; with one, 1.8x faster."""
    saved = {name: os.environ.get(name) for name in BLAS_THREADS}
    os.environ.update(dict.fromkeys(BLAS_THREADS, "1"))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name)
            else:
                os.environ[name] = value


def write_dataset(
    out_dir: str | Path,
    *,
    count: int,
    seed: int,
    height: int = 480,
    width: int = 640,
    invalid_fraction: float = 0.05,
    progress=None,
    workers: int | None = None,
) -> list[str]:
    """Render `count` scenes into out_dir/rgb and out_dir/depth (challenge layout), on
    `workers` processes (default: every core this process may use). Each scene depends on
    its seed alone, so the files are the same for any number of workers."""
    out_dir = Path(out_dir)
    workers = min(workers or host.usable_cpus(), count) or 1
    scene = partial(
        _write_scene,
        out_dir,
        seed=seed,
        height=height,
        width=width,
        invalid_fraction=invalid_fraction,
    )
    names = []
    with ExitStack() as stack:
        if workers == 1:
            done = map(scene, range(count))
        else:
            # spawned, not forked: the caller may hold TensorFlow's threads, which fork would
            # copy half-alive
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            stack.callback(
                pool.shutdown, cancel_futures=True
            )  # on an error or Ctrl-C, render no more
            with _one_blas_thread():  # the workers start in map(), with this environment
                done = pool.map(scene, range(count))
        for name in done:  # in order, so the progress lines count up
            names.append(name)
            if progress:
                progress(len(names), count)
    return names
