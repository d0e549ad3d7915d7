"""Shared storage: a DVC remote (here a local folder) holds data, models and the run-cache.

The tiny project after one `dvc repro` is pushed; a wiped workspace and a teammate's fresh
clone get byte-identical outputs back with `dvc pull`, and a stage run by one teammate is
restored from the remote run-cache by another instead of being run again.
Metrics JSONs and the history CSV are `cache: false` (git-tracked, never pushed): they
travel with the git commit, as they would for a user.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import dvc_bin, run

# `dvc status --json` of a complete project: the two always_changed stages
UP_TO_DATE = {"check": ["always changed"], "track": ["always changed"]}


def cached_outs(root: Path) -> list[str]:
    """Every `outs:` path of dvc.yaml (metrics and plots are cache: false here)."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    outs = []
    for stage in stages.values():
        for out in stage.get("outs", []):
            outs.append(out if isinstance(out, str) else next(iter(out)))
    return outs


def digest(root: Path, rels: list[str]) -> dict[str, str]:
    """{file path: sha256} of every file under the given outputs."""
    out = {}
    for rel in rels:
        path = root / rel
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            out[f.relative_to(root).as_posix()] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def status(root: Path) -> dict:
    return json.loads(run([dvc_bin(), "status", "--json"], root).stdout)


def set_param(root: Path, section: str, key: str, value) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params[section][key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def pushed(tiny_repro, tmp_path_factory):
    base = tmp_path_factory.mktemp("remote")
    root = base / "project"
    shutil.copytree(
        tiny_repro, root, symlinks=True, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts")
    )
    # Other tests edit tiny_repro's params; bring every stage but `track` up to date.
    run([dvc_bin(), "repro", "package"], root)
    assert status(root) == UP_TO_DATE
    remote = base / "remote"
    run([dvc_bin(), "remote", "add", "-d", "store", str(remote)], root)
    run(["git", "add", "-A"], root)  # dvc.lock, metrics, history, .dvc/config with the remote
    run(["git", "commit", "-qm", "tiny run"], root)
    proc = run([dvc_bin(), "push", "--run-cache"], root)
    outs = cached_outs(root)
    before = digest(root, outs)
    assert (
        any(rel.startswith("data/synthetic/") for rel in before) and "models/model.tflite" in before
    )
    assert list((remote / "runs").rglob("*")), f"no run-cache pushed:\n{proc.stdout}"
    return root, remote, outs, before


def test_pull_restores_wiped_cache_and_outputs_byte_identical(pushed):
    root, _, outs, before = pushed
    shutil.rmtree(root / ".dvc/cache")
    for rel in outs:
        path = root / rel
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    assert status(root) != UP_TO_DATE  # really gone

    run([dvc_bin(), "pull"], root)
    assert digest(root, outs) == before
    assert status(root) == UP_TO_DATE
    proc = run([dvc_bin(), "status", "--with-deps", "package"], root)
    assert proc.stdout == "check:\n\talways changed\n"  # all else up to date
    assert run(["git", "status", "--porcelain"], root).stdout == ""


def test_teammate_clone_pulls_outputs_and_reuses_remote_run_cache(pushed, tmp_path):
    root, _, outs, before = pushed
    # Teammate B: clone, pull, get the same files; then run a variant and share it.
    b = tmp_path / "b"
    run(["git", "clone", "-q", str(root), str(b)], tmp_path)
    run([dvc_bin(), "pull"], b)
    assert digest(b, outs) == before
    assert status(b) == UP_TO_DATE
    set_param(b, "package", "description", "teammate B's variant")
    proc = run([dvc_bin(), "repro", "package"], b)
    assert "Running stage 'package'" in proc.stdout
    variant_zip = digest(b, ["submission/submission.zip"])
    assert variant_zip != {k: v for k, v in before.items() if k == "submission/submission.zip"}
    run([dvc_bin(), "push", "--run-cache"], b)

    # Teammate C: same variant; the stage comes from the remote run-cache, not a rerun.
    c = tmp_path / "c"
    run(["git", "clone", "-q", str(root), str(c)], tmp_path)
    run([dvc_bin(), "pull", "--run-cache"], c)
    set_param(c, "package", "description", "teammate B's variant")
    proc = run([dvc_bin(), "repro", "--pull", "package"], c)
    assert "Stage 'package' is cached - skipping run" in proc.stdout, proc.stdout
    assert [line for line in proc.stdout.splitlines() if "Running stage" in line] == [
        "Running stage 'check':"  # always_changed, never cached: it checks where it runs
    ]
    assert digest(c, ["submission/submission.zip"]) == variant_zip
