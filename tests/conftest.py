"""Shared fixtures: a tiny copy of the project that runs the real stages in seconds, a
server started for a test, and the rule for tests that need a system program."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # pytest puts tests/ on sys.path, not the root with pipeline/
    sys.path.insert(0, str(REPO))

import pipeline.model.archs  # noqa: E402, F401  (registers train.arch's choices)
from pipeline.core.config import merge  # noqa: E402
from stages.workers import free_ports  # noqa: E402

SHARED_DATA = REPO.parent / "shared" / "data" / "tum_fr1_xyz"
# Tests that need a system program (sshd, chromium) skip without it, unless required:
# CI=true (set by CI services and .ci/run) or MAI_REQUIRE_SYSTEM_TESTS=1.
REQUIRE_SYSTEM_TESTS = "MAI_REQUIRE_SYSTEM_TESTS"
SERVER_START_TIMEOUT_S = 90  # an MLflow server needs ~8 s; the 2 shared cores can be busy


def system_tests_required() -> bool:
    return (
        os.environ.get("CI", "").lower() in ("true", "1")
        or os.environ.get(REQUIRE_SYSTEM_TESTS) == "1"
    )


def require_program(name: str, install_hint: str, candidates: tuple[str, ...] = ()) -> str:
    """The path of a system program. Missing, the test skips with a one-line reason, or
    fails when system tests are required (a skip there would hide a broken path)."""
    found = next((c for c in candidates if os.access(c, os.X_OK)), None) or shutil.which(name)
    if found:
        return found
    reason = (
        f"{name} not installed ({install_hint}); required when CI=true or {REQUIRE_SYSTEM_TESTS}=1"
    )
    if system_tests_required():
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    """A loopback port nothing listens on (closed again on return)."""
    return free_ports(1)[0]


@contextlib.contextmanager
def serving(cmd: list[str], health_url: str, log_path: Path, *, cwd: Path, env: dict[str, str]):
    """Run a server command until the block ends; yields the process once `health_url`
    answers 200. Its own process group, so teardown also stops the workers it forks."""
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"{Path(cmd[0]).name} exited with {proc.returncode}: "
                    f"{log_path.read_text()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(health_url, timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{health_url} not healthy after {SERVER_START_TIMEOUT_S} s")
            time.sleep(0.5)
        yield proc
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


# A made-up Pi 4 calibration: published / these = ratios 5, 4, 4, 5 (median 4.5, spread 4..5).
FAKE_RPI4_LOCAL_MS = {
    "mobilenet_v1": 15.0,
    "mobilenet_v2": 11.0,
    "mobilenet_v3_large": 10.25,
    "mobilenet_v3_small": 2.8,
}


@pytest.fixture(scope="session", autouse=True)
def fake_rpi4_calibration(tmp_path_factory):
    """Every test (and the stages it starts) reads FAKE_RPI4_LOCAL_MS for every thread count
    from a cache of its own: no test pays the real one-off calibration (about a minute: four
    MobileNets built, converted and timed) or writes to the user's cache. Without the
    reference .tflite files there, the cached calibration is used as is (no anchor check).
    test_benchmark.py covers the calibration itself with injected timers."""
    from pipeline.core import host
    from pipeline.core.files import write_json
    from pipeline.device import rpi4

    directory = tmp_path_factory.mktemp("mai-cache")
    for threads in range(1, host.usable_cpus() + 1):
        key = rpi4.calibration_key(threads)
        write_json(
            rpi4.calibration_path(key, directory), {"key": key, "local_ms": FAKE_RPI4_LOCAL_MS}
        )
    patch = pytest.MonkeyPatch()
    patch.setenv(rpi4.CACHE_ENV, str(directory))
    yield directory
    patch.undo()


# Small enough for 2 CPU cores: few low-resolution scenes, one short epoch, few timing runs.
TINY_PARAMS = {
    "data": {"val_fraction": 0.3, "synthetic": {"count": 6, "height": 120, "width": 160}},
    "train": {"height": 64, "width": 64, "epochs": 1, "batch_size": 2, "decoder_channels": 8},
    "export": {"representative_images": 2, "parity_images": 1},
    "benchmark": {"threads": 1, "warmup": 1, "runs": 2},
    "evaluate": {"panels": 1},
}


def project_env() -> dict[str, str]:
    """The venv first on PATH (dvc.yaml says `python -m ...`), no outer MLflow server."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(MLFLOW_DISABLE_TELEMETRY="true", TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    return env


def make_project(root: Path, overrides: dict | None = None, *, git: bool = True) -> Path:
    """Copy the code, dvc.yaml and a tiny params.yaml into `root` (a git + DVC repo)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("pipeline", "stages", "presets"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    (root / "models/teacher").mkdir(
        parents=True
    )  # the teacher stage's dep, as a clone has it (README only)
    for name in ("README.md", ".gitignore"):
        shutil.copy(REPO / "models/teacher" / name, root / "models/teacher" / name)
    params = merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY_PARAMS)
    params = merge(params, overrides or {})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / ".gitignore").write_text((REPO / ".gitignore").read_text())
    if git:
        run(["git", "init", "-q"], root)
        run(["git", "config", "user.email", "test@example.com"], root)
        run(["git", "config", "user.name", "test"], root)
        run([dvc_bin(), "init", "-q"], root)
        run([dvc_bin(), "config", "core.analytics", "false"], root)
        run([dvc_bin(), "config", "core.autostage", "true"], root)
        run(["git", "add", "-A"], root)
        run(["git", "commit", "-qm", "tiny project"], root)
    return root


def weight_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array in a Keras .weights.h5 file, by its path inside the file."""
    import h5py

    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, obj: (
                arrays.update({name: obj[()]}) if isinstance(obj, h5py.Dataset) else None
            )
        )
    return arrays


def dvc_bin() -> str:
    return str(Path(sys.executable).parent / "dvc")


def split_csv(rows, source: str = "src") -> str:
    """split.csv text (pipeline.data.dataset.SPLIT_COLUMNS) from (name, split, rgb, depth) tuples;
    sizes and digests are not read by the stages under test, so they stay blank."""
    from pipeline.data.dataset import SPLIT_COLUMNS

    lines = [",".join(SPLIT_COLUMNS)]
    lines += [f"{name},{split},{source},{rgb},{depth},,," for name, split, rgb, depth in rows]
    return "\n".join(lines) + "\n"


def run(cmd, cwd: Path, *, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        cmd, cwd=cwd, env=project_env(), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} failed "
            f"({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def run_stage(name: str, cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", f"stages.{name}", *args], cwd, check=check)


# `dvc queue` of a tiny project (tests/test_experiments.py, bench/queue_parallel.py)
FINAL = ("Success", "Failed")
QUEUE_TIMEOUT_S = 1200  # two tiny pipelines take ~3-5 min on 2 shared cores
POLL_S = 5.0


def queue_status(root: Path, names) -> dict[str, str]:
    """{exp name: Queued | Running | Success | Failed} from `dvc queue status`."""
    proc = run([dvc_bin(), "queue", "status"], root, check=False, timeout=120)
    statuses = {}
    for line in proc.stdout.splitlines():
        parts = line.split()  # Task  Name  Created (2 words)  Status
        if len(parts) >= 4 and parts[1] in names:
            statuses[parts[1]] = parts[-1]
    return statuses


def wait_for_queue(root: Path, names, *, timeout: float = QUEUE_TIMEOUT_S, poll: float = POLL_S):
    """Poll until every named task has finished; returns (statuses, running sets seen).

    `dvc queue start` returns at once: its workers are detached processes that run the
    tasks in temp copies and exit by themselves ~10 s after the queue is empty.
    """
    names = set(names)
    deadline = time.monotonic() + timeout
    running_seen: list[set[str]] = []
    statuses: dict[str, str] = {}
    while time.monotonic() < deadline:
        statuses = queue_status(root, names)
        running_seen.append({n for n, s in statuses.items() if s == "Running"})
        if set(statuses) == names and all(s in FINAL for s in statuses.values()):
            return statuses, running_seen
        time.sleep(poll)
    raise AssertionError(f"queue not done after {timeout:.0f} s: {statuses}")


def start_queue(root: Path, jobs: int) -> None:
    """`dvc queue start -j JOBS`, output to a file: the detached workers inherit the
    command's stdout/stderr, and a pipe would keep a captured run blocked until they exit."""
    with open(root / ".dvc/tmp/queue_start.log", "w") as log:
        proc = subprocess.run(
            [dvc_bin(), "queue", "start", "-j", str(jobs)],
            cwd=root,
            env=project_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=120,
        )
    assert proc.returncode == 0, (root / ".dvc/tmp/queue_start.log").read_text()


def queue_logs(root: Path, name: str) -> str:
    proc = run([dvc_bin(), "queue", "logs", name], root, check=False, timeout=120)
    return proc.stdout + proc.stderr


def tiny_tflite(path, height, width):
    """Real TFLite model: 1xHxWx3 RGB 0..255 -> 1xHxWx1 metres = 0.5 + 4 * mean(RGB) / 255."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    inp = keras.Input((height, width, 3), batch_size=1)
    x = keras.layers.AveragePooling2D(16)(inp)
    x = keras.layers.Conv2D(
        1,
        1,
        kernel_initializer=keras.initializers.Constant(4.0 / 765.0),
        bias_initializer=keras.initializers.Constant(0.5),
    )(x)
    out = keras.layers.UpSampling2D(16, interpolation="bilinear")(x)
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(keras.Model(inp, out)).convert())
    return path


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """Two real TFLite models: the device's 480x640 input, and a wrong 240x320 one."""
    root = tmp_path_factory.mktemp("models")
    return {
        "good": tiny_tflite(root / "good.tflite", 480, 640),
        "small": tiny_tflite(root / "small.tflite", 240, 320),
    }


@pytest.fixture(scope="session")
def tiny_repro(tmp_path_factory) -> Path:
    """One full `dvc repro` of the tiny project, shared by the end-to-end tests."""
    root = make_project(tmp_path_factory.mktemp("e2e") / "project")
    proc = run([dvc_bin(), "repro"], root)
    (root / "first_repro.log").write_text(proc.stdout + proc.stderr)
    return root
