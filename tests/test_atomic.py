"""Interrupted writes never leave a truncated file at the target path.

An exception (or Ctrl-C) inside the write removes the temp file; a SIGKILL (the OOM
killer, a power cut, `kill -9` of a DVC stage) leaves at most a hidden `.NAME.*.tmp`
beside the target, while the target keeps its old content or does not exist.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import REPO, project_env
from pipeline.core import files
from pipeline.core.files import atomic_dir, atomic_path, read_depth_m, write_depth_png, write_json

# A child that starts a real write, signals readiness half-way, then waits to be killed.
CHILD = r"""
import io, os, pathlib, sys, time
from pipeline.core import files
mode, target, marker = sys.argv[1:4]

def stall():
    with open(marker, "w") as f:  # plain open: pathlib's write_text may be patched below
        f.write("ready")
    time.sleep(120)

if mode == "atomic_path":
    with files.atomic_path(target) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"NEW-" * 5000)
            f.flush()
            stall()
            f.write(b"END")
elif mode == "write_json":
    real = pathlib.Path.write_text
    def half_then_stall(self, text, *args, **kwargs):
        real(self, text[: len(text) // 2])
        stall()
    pathlib.Path.write_text = half_then_stall
    files.write_json(target, {"new": list(range(2000))})
elif mode == "write_depth_png":
    import numpy as np
    from PIL import Image
    real = Image.Image.save
    def half_then_stall(self, fp, *args, **kwargs):
        buf = io.BytesIO()
        real(self, buf, *args, **kwargs)
        pathlib.Path(fp).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        stall()
    Image.Image.save = half_then_stall
    files.write_depth_png(target, np.full((30, 40), 7.5, np.float32))
elif mode == "atomic_dir":
    with files.atomic_dir(target) as tmp:
        for i in range(3):
            (tmp / f"new{i}.png").write_bytes(b"new")
        stall()
"""


def kill_mid_write(mode: str, target: Path, tmp_path: Path) -> None:
    marker = tmp_path / f"{mode}.ready"
    env = dict(project_env(), PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, mode, str(target), str(marker)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 60
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, "child never reached the middle of its write"
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def strays(target: Path) -> list[str]:
    """Everything beside the target except the target itself: only hidden temp names allowed."""
    others = sorted(p.name for p in target.parent.iterdir() if p.name != target.name)
    assert all(n.startswith(f".{target.name}.") and n.endswith(".tmp") for n in others), others
    return others


# ------------------------------------------------------------- SIGKILL, for real
@pytest.mark.parametrize("existed", [True, False], ids=["old-file", "no-file"])
def test_atomic_path_survives_sigkill(tmp_path, existed):
    target = tmp_path / "out" / "model.tflite"
    if existed:
        target.parent.mkdir()
        target.write_bytes(b"OLD complete model")
    kill_mid_write("atomic_path", target, tmp_path)
    if existed:
        assert target.read_bytes() == b"OLD complete model"
    else:
        assert not target.exists()
    (stray,) = strays(target)  # the half-written temp file, never at the target path
    assert (target.parent / stray).read_bytes().startswith(b"NEW-")
    with atomic_path(target) as tmp:  # the next run just works
        tmp.write_bytes(b"NEW complete model")
    assert target.read_bytes() == b"NEW complete model"


def test_write_json_survives_sigkill(tmp_path):
    target = tmp_path / "metrics" / "evaluate.json"
    write_json(target, {"si_rmse": 0.25})
    kill_mid_write("write_json", target, tmp_path)
    assert json.loads(target.read_text()) == {"si_rmse": 0.25}
    (stray,) = strays(target)
    with pytest.raises(json.JSONDecodeError):  # the stray really is a truncated JSON
        json.loads((target.parent / stray).read_text())


@pytest.mark.parametrize("existed", [True, False], ids=["old-file", "no-file"])
def test_write_depth_png_survives_sigkill(tmp_path, existed):
    target = tmp_path / "pred" / "000001.png"
    if existed:
        write_depth_png(target, np.full((30, 40), 1.25, np.float32))
    kill_mid_write("write_depth_png", target, tmp_path)
    if existed:
        np.testing.assert_array_equal(read_depth_m(target), np.full((30, 40), 1.25, np.float32))
    else:
        assert not target.exists()
    assert len(strays(target)) == 1


def test_atomic_dir_survives_sigkill(tmp_path):
    target = tmp_path / "data" / "synthetic"
    target.mkdir(parents=True)
    (target / "old.png").write_bytes(b"old")
    kill_mid_write("atomic_dir", target, tmp_path)
    assert sorted(p.name for p in target.iterdir()) == ["old.png"]
    assert len(strays(target)) == 1
    with atomic_dir(target) as tmp:
        (tmp / "new.png").write_bytes(b"new")
    assert sorted(p.name for p in target.iterdir()) == ["new.png"]


# ----------------------------------------------------- exceptions and Ctrl-C
@pytest.mark.parametrize(
    "error", [RuntimeError("disk full"), KeyboardInterrupt()], ids=["error", "ctrl-c"]
)
def test_atomic_path_cleans_up_on_exception(tmp_path, error):
    target = tmp_path / "model.keras"
    target.write_bytes(b"old")
    with pytest.raises(type(error)):
        with atomic_path(target, suffix=".keras") as tmp:
            tmp.write_bytes(b"half")
            raise error
    assert target.read_bytes() == b"old"
    assert strays(target) == []  # the temp file is gone too


def test_atomic_path_publishes_with_usual_mode(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"a": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
    assert json.loads(target.read_text()) == {"a": 1}


def test_write_json_unserializable_keeps_old(tmp_path):
    target = tmp_path / "m.json"
    write_json(target, {"ok": True})
    with pytest.raises(TypeError):
        write_json(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"ok": True}
    assert strays(target) == []


def test_write_depth_png_failing_save_keeps_old(tmp_path, monkeypatch):
    target = tmp_path / "d.png"
    write_depth_png(target, np.full((4, 5), 2.0, np.float32))
    real = Image.Image.save

    def half_then_fail(self, fp, *args, **kwargs):
        buf = io.BytesIO()
        real(self, buf, *args, **kwargs)
        Path(fp).write_bytes(buf.getvalue()[:20])
        raise OSError("No space left on device")

    monkeypatch.setattr(Image.Image, "save", half_then_fail)
    with pytest.raises(OSError, match="No space"):
        write_depth_png(target, np.full((4, 5), 9.0, np.float32))
    monkeypatch.undo()
    np.testing.assert_array_equal(read_depth_m(target), np.full((4, 5), 2.0, np.float32))
    assert strays(target) == []


def test_atomic_dir_cleans_up_on_exception(tmp_path):
    target = tmp_path / "panels"
    target.mkdir()
    (target / "old.png").write_bytes(b"old")
    with pytest.raises(ValueError):
        with atomic_dir(target) as tmp:
            (tmp / "new.png").write_bytes(b"new")
            raise ValueError("render failed")
    assert sorted(p.name for p in target.iterdir()) == ["old.png"]
    assert strays(target) == []


def test_write_helpers_use_atomic_path(tmp_path, monkeypatch):
    """write_json / write_depth_png / write_rgb_png go through atomic_path (no direct writes)."""
    used = []
    real = files.atomic_path

    def spy(path, **kwargs):
        used.append(Path(path).name)
        return real(path, **kwargs)

    monkeypatch.setattr(files, "atomic_path", spy)
    files.write_json(tmp_path / "a.json", {})
    files.write_depth_png(tmp_path / "b.png", np.ones((3, 3), np.float32))
    files.write_rgb_png(tmp_path / "c.png", np.zeros((3, 3, 3), np.uint8))
    assert used == ["a.json", "b.png", "c.png"]


# ------------------------------------------------ a real stage, killed mid-run
@pytest.fixture
def tmp_repro_copy(tiny_repro, tmp_path) -> Path:
    """A private copy of the shared tiny project (other tests keep using the original)."""
    return Path(shutil.copytree(tiny_repro, tmp_path / "copy", symlinks=True))


def kill_package_when_zip_tmp_grows(root: Path) -> float:
    """Start `python -m stages.package`, SIGKILL it once its temp ZIP has data; return
    the temp ZIP's size at the kill."""
    sub = root / "submission"
    earlier = set(sub.glob(".submission.zip.*.tmp"))  # strays of an earlier kill do not count
    proc = subprocess.Popen(
        [sys.executable, "-m", "stages.package"],
        cwd=root,
        env=project_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    size = 0
    try:
        deadline = time.time() + 120
        while size == 0:
            assert proc.poll() is None, (
                "package finished before it could be killed",
                proc.communicate(),
            )
            assert time.time() < deadline
            tmps = set(sub.glob(".submission.zip.*.tmp")) - earlier if sub.exists() else []
            size = max((p.stat().st_size for p in tmps if p.exists()), default=0)
            time.sleep(0.005)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    return size


def test_killed_package_stage_leaves_old_zip_or_none(tmp_repro_copy):
    root = tmp_repro_copy
    # 60 inputs: enough work that the ZIP is still being written when we kill it.
    inputs = root / "many_inputs"
    inputs.mkdir()
    val_rgb = sorted((root / "data/synthetic/rgb").glob("*.png"))[0]
    for i in range(60):
        shutil.copy(val_rgb, inputs / f"{i:03d}.png")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["package"]["inputs"] = "many_inputs"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    zip_path = root / "submission/submission.zip"
    old = zip_path.read_bytes()
    assert kill_package_when_zip_tmp_grows(root) > 0
    assert zip_path.read_bytes() == old  # the old, complete submission is still in place
    with zipfile.ZipFile(zip_path) as zf:
        assert zf.testzip() is None

    zip_path.unlink()  # no earlier submission: a kill leaves none, never a broken one
    assert kill_package_when_zip_tmp_grows(root) > 0
    assert not zip_path.exists()
    assert len(list(zip_path.parent.glob(".submission.zip.*.tmp"))) == 2  # the two killed writers'

    proc = subprocess.run(
        [sys.executable, "-m", "stages.package"],
        cwd=root,
        env=project_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    with zipfile.ZipFile(zip_path) as zf:
        assert zf.testzip() is None
        assert len([n for n in zf.namelist() if n.endswith(".png")]) == 60
