"""The synthetic generator's geometry: depth is the camera z of a pinhole camera (what depth
sensors report), the requested share of pixels is knocked out as invalid, and any number of
rendering processes writes the same files."""

from __future__ import annotations

import os

import numpy as np
import pytest

from pipeline.data.synthetic import SENSOR_MAX_M, render_scene

H, W = 60, 80  # small: the geometry is the same at any size, and a pixel step spans more angle


def second_differences(inv_depth: np.ndarray) -> np.ndarray:
    """|f(u-1) - 2 f(u) + f(u+1)| / f(u) along rows and along columns, where all three are valid."""
    out = []
    for a in (inv_depth, inv_depth.T):
        rel = np.abs(a[:, 2:] - 2 * a[:, 1:-1] + a[:, :-2]) / a[:, 1:-1]
        out.append(rel[np.isfinite(rel)])
    return np.concatenate(out)


@pytest.mark.parametrize("seed", [1, 2])
def test_flat_surfaces_are_planes_in_camera_z(seed):
    """Over a plane n.X = c seen by a pinhole camera, 1/z = (n . ((u-cx)/fx, (v-cy)/fy, 1)) / c is
    affine in the pixel coordinates, so its second differences vanish. Walls, floor,
    ceiling and box faces are planes and cover most of a scene. Ray length instead of z
    bends every one of them (second differences ~2e-4 here), z in the world frame of a
    turned camera too (~2e-6 to 2e-5)."""
    _, depth = render_scene(seed, height=H, width=W, invalid_fraction=0.0)
    valid = depth > 0
    assert valid.mean() > 0.95 and depth.max() <= SENSOR_MAX_M
    inv = np.where(valid, 1.0 / np.where(valid, depth, 1.0), np.nan).astype(np.float64)
    curvature = second_differences(inv)
    assert np.median(curvature) < 2e-7  # float32 rounding of depth: ~5e-8
    assert np.mean(curvature < 1e-5) > 0.75  # the rest: edges between surfaces, spheres


@pytest.mark.parametrize("fraction", [0.05, 0.3])
def test_invalid_fraction_is_honoured(fraction):
    _, full = render_scene(4, height=H, width=W, invalid_fraction=0.0)
    _, holed = render_scene(4, height=H, width=W, invalid_fraction=fraction)
    assert (full > 0).all()  # this scene is within the sensor range everywhere
    assert (holed == 0).mean() == pytest.approx(fraction, abs=0.005)
    kept = holed > 0
    np.testing.assert_array_equal(holed[kept], full[kept])  # knocked out, nothing else changed


def test_parallel_rendering_writes_the_same_files(tmp_path):
    from pipeline.data.synthetic import write_dataset

    seen, environment = [], dict(os.environ)
    for workers in (1, 2):
        out = tmp_path / str(workers)
        names = write_dataset(
            out,
            count=3,
            seed=5,
            height=H,
            width=W,
            workers=workers,
            progress=lambda done, total: seen.append((done, total)),
        )
        assert names == ["000000.png", "000001.png", "000002.png"]
    assert seen == [(1, 3), (2, 3), (3, 3)] * 2  # in order, whatever finishes first
    assert dict(os.environ) == environment  # the workers' one BLAS thread is theirs alone
    for kind in ("rgb", "depth"):
        for name in names:
            assert (tmp_path / "1" / kind / name).read_bytes() == (
                tmp_path / "2" / kind / name
            ).read_bytes()
