"""evaluate and package stream their images: the peak RSS of the stage, measured in a
fresh process, does not grow with the number of images, on a folder whose decoded size is
larger than the training cache budget. The same measurement with every prediction kept
(the mistake it guards against) grows by ~1.2 MB per image and fails the bound. Training's
RAM cache is held once: reading batches from it adds no second copy, where the cache in NumPy
arrays adds one on every machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO, project_env, split_csv, tiny_tflite

SMALL, LARGE = 20, 220  # images; the large set decodes to ~320 MiB
CACHE_MAX_MB = 128  # the project's train.cache_max_mb: the large folder is well above it
BOUND_MB = 40  # allowed peak-RSS growth from SMALL to LARGE images
PREDICTION_MB = 480 * 640 * 4 / 2**20  # one kept float32 depth map

# Runs one stage in this process and prints its peak RSS (VmHWM: getrusage's ru_maxrss would
# report the forking pytest process's peak, kept across exec); HOARD=1 keeps every prediction.
STAGE_RSS = """
import os, sys
if os.environ.get("HOARD") == "1":
    from pipeline.device import predict
    kept, original = [], predict.TFLiteDepthModel.predict
    def hoarding(self, *args, **kwargs):
        kept.append(original(self, *args, **kwargs))
        return kept[-1]
    predict.TFLiteDepthModel.predict = hoarding
from pipeline.core.cli import run_stage
import importlib
stage = importlib.import_module("stages." + sys.argv[1])
code = run_stage(stage.main, [])
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print("PEAK_MB", int(hwm.split()[1]) / 1024)
sys.exit(code)
"""


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """LARGE pairs of 640x480 under their own names, hard links to one noisy pair (no copies)."""
    from pipeline.core.files import write_depth_png, write_rgb_png

    root = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(0)
    write_rgb_png(root / "one_rgb.png", rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
    write_depth_png(root / "one_depth.png", rng.uniform(0.5, 5.0, (480, 640)))
    for sub in ("rgb", "depth"):
        (root / sub).mkdir()
        for i in range(LARGE):
            os.link(root / f"one_{sub}.png", root / sub / f"{i:05d}.png")
    return root


def _project(root: Path, images: Path, n: int, model: Path) -> Path:
    """A project whose val split (evaluate) and package.inputs (package) hold n images."""
    root.mkdir()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"]["cache_max_mb"] = CACHE_MAX_MB
    params["evaluate"]["panels"] = 1
    inputs = root / "inputs"
    inputs.mkdir()
    rows = []
    for i in range(n):
        name = f"{i:05d}.png"
        os.link(images / "rgb" / name, inputs / name)
        rows.append([name, "val", str(images / "rgb" / name), str(images / "depth" / name)])
    params["package"]["inputs"] = str(inputs)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "data/prepared").mkdir(parents=True)
    (root / "data/prepared/split.csv").write_text(split_csv(rows))
    (root / "models").mkdir()
    os.link(model, root / "models/model.tflite")
    (root / "metrics").mkdir()
    (root / "metrics/benchmark.json").write_text(json.dumps({"median_ms": 40.0, "threads": 2}))
    return root


def _peak_mb(stage: str, project: Path, *, hoard: bool = False) -> float:
    env = {**project_env(), "PYTHONPATH": str(REPO), "HOARD": "1" if hoard else "0"}
    proc = subprocess.run(
        [sys.executable, "-c", STAGE_RSS, stage],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return float(proc.stdout.split("PEAK_MB")[1])


@pytest.fixture(scope="module")
def projects(images, tmp_path_factory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("projects")
    model = tiny_tflite(root / "model.tflite", 480, 640)
    return {n: _project(root / f"n{n}", images, n, model) for n in (SMALL, LARGE)}


@pytest.mark.parametrize("stage", ["evaluate", "package"])
def test_peak_memory_does_not_grow_with_the_images(stage, projects):
    decoded_mb = (
        LARGE * 480 * 640 * (3 + 2) / 2**20
    )  # uint8 RGB + uint16 depth, as the training cache
    assert decoded_mb > 2 * CACHE_MAX_MB
    small, large = (_peak_mb(stage, projects[n]) for n in (SMALL, LARGE))
    assert large - small < BOUND_MB, (
        f"{stage}: peak RSS {small:.0f} MB at {SMALL} images, {large:.0f} MB at {LARGE}"
    )


def test_the_bound_fails_when_predictions_are_kept(projects):
    small, large = (_peak_mb("evaluate", projects[n], hoard=True) for n in (SMALL, LARGE))
    kept_mb = (LARGE - SMALL) * PREDICTION_MB  # ~230 MB
    assert large - small > max(BOUND_MB, 0.8 * kept_mb), (small, large)


# Fills the training RAM cache with N pairs, then reads train and val batches from it under op
# determinism (base.deterministic, the default); prints the cache's size and how much RSS the
# reading added. CACHE=numpy holds the cache in NumPy arrays instead of the variables.
CACHE_READ = """
import os, sys
from pathlib import Path
import tensorflow as tf
from pipeline.data import tfdata
from pipeline.core.config import AugmentConfig
tf.config.experimental.enable_op_determinism()
def rss_mb():
    line = next(line for line in open("/proc/self/status") if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024
folder, n = Path(sys.argv[1]), int(sys.argv[2])
names = sorted(p.name for p in (folder / "rgb").iterdir())[:n]
source = tfdata.PairSource(
    [str(folder / "rgb" / m) for m in names],
    [str(folder / "depth" / m) for m in names],
    cache_max_mb=1024,
)
assert source.cached
if os.environ["CACHE"] == "numpy":
    source.rgb_all, source.depth_all = source.rgb_all.numpy(), source.depth_all.numpy()
before = rss_mb()
train = tfdata.train_dataset(
    source, seed=1, first_epoch=0, epochs=1, steps_per_epoch=4, batch_size=4,
    height=64, width=64, augment_cfg=AugmentConfig(),
)
for _ in train:
    pass
for _ in tfdata.eval_dataset(source, batch_size=4, height=64, width=64):
    pass
print("RESULT", tfdata.cache_bytes(names) / 2**20, rss_mb() - before)
"""


@pytest.mark.parametrize("cache", ["variables", "numpy"])
def test_reading_the_training_cache_adds_no_copy_of_it(images, cache):
    """The cache is the RAM that train.cache_max_mb bounds; PairSource holds it in variables,
    which the input pipeline reads by handle. The control holds it in NumPy arrays: tracing
    the pipeline's functions makes each array a constant of the graph (Python's graph
    building, the same on every CPU and architecture), several copies: measured +2150 MB for
    this 176 MB cache with oneDNN on, +1930 MB with it off. Plain tensors are no control:
    tf.data's rewrite copies them only where TensorFlow's oneDNN rewrites are on (x86 Linux:
    by default only on CPUs with AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX), +190 MB on an
    Intel Xeon with them, +15 MB with TF_ENABLE_ONEDNN_OPTS=0 and +13 MB on an AVX2-only AMD
    EPYC (issue #35)."""
    env = {**project_env(), "PYTHONPATH": str(REPO), "CACHE": cache}
    proc = subprocess.run(
        [sys.executable, "-c", CACHE_READ, str(images), "120"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    cache_mb, added_mb = map(float, proc.stdout.split("RESULT")[1].split())
    if cache == "numpy":
        assert added_mb > 0.8 * cache_mb, (cache_mb, added_mb)
    else:
        assert added_mb < 0.25 * cache_mb, (cache_mb, added_mb)
