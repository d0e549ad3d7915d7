"""Paths outside the project in DVC's experiment copies (issue #35), through a real queue.

Queued and --temp experiments run in a copy of the project's tracked files under
<project>/.dvc/tmp/exps/, where a relative path outside the project (`../srcA`: how the
README names data beside the project, and where users keep it) would lead into .dvc/tmp/.
DVC hashes data folders there itself, so no stage can re-anchor one (treeverse/dvc#8747):
- `make exp` (with --queue or --temp) and `make sweep` queue every such path absolute, by
  the rule of pipeline.core.paths.resolve_user_path;
- a raw `dvc exp run --queue` with one stops at the check stage, the first, with one line
  that gives the absolute path, before any other stage runs;
- the files a stage opens itself (train.init_from, train.encoder_weights, package.inputs) are
  found from a copy by resolve_user_path, whoever queued it.

Two tiny sources (3 and 4 pairs) sit beside a tiny git + DVC project whose params.yaml
names the first one relatively; one `dvc queue start -j 2` runs four prepare-only
experiments (no training).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import (
    REPO,
    dvc_bin,
    make_project,
    queue_logs,
    run,
    start_queue,
    wait_for_queue,
)
from pipeline.core.cli import run_stage
from pipeline.core.paths import (
    CHECKED,
    in_experiment_copy,
    leaves_project,
    project_root,
    resolve_user_path,
)
from pipeline.tracking import sweep
from stages import check

PAIRS = {"srcA": 3, "srcB": 4}
PRESET = "presets/both.yaml"


def make_source(folder: Path, n: int) -> Path:
    """n challenge-layout pairs of 40x30: RGB noise, depth 0.5..4 m in mm."""
    rng = np.random.default_rng(n)
    for i in range(n):
        for sub, arr in (
            ("rgb", rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)),
            ("depth", rng.integers(500, 4000, (30, 40)).astype(np.uint16)),
        ):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(folder / sub / f"{i:04d}.png")
    return folder


def ran_stages(log: str) -> list[str]:
    return re.findall(r"Running stage '([\w@-]+)'", log)


# ---------------------------------------------------------------- the rule, no DVC
def test_the_path_rule_anchors_paths_outside_the_project_at_the_project(tmp_path):
    root = tmp_path / "project"
    copy = root / ".dvc/tmp/exps/tmpab12"
    temp = root / ".dvc/tmp/exps/standalone/tmpcd34"
    for where in (root, copy, temp):
        assert project_root(where) == root.resolve()
    assert not in_experiment_copy(root) and in_experiment_copy(copy) and in_experiment_copy(temp)
    assert [leaves_project(p) for p in ("../x", "a/../../x", "..", "data/x", "/abs", "")] == [
        True,
        True,
        True,
        False,
        False,
        False,
    ]
    for where in (root, copy, temp):
        assert resolve_user_path("../shared/data/x", where) == str(tmp_path / "shared/data/x")
        assert resolve_user_path("data/mydata", where) == "data/mydata"  # in the copy, as tracked
        assert resolve_user_path("/abs/x", where) == "/abs/x"
        assert resolve_user_path("", where) == ""


@pytest.fixture
def copy_of(tmp_path, monkeypatch):
    """A tiny project and a stand-in for DVC's copy of it (cwd there), with the copy's own
    data/synthetic; the real project holds `../srcA` beside it."""

    def make(**data) -> tuple[Path, Path]:
        root = make_project(tmp_path / "project", git=False)
        make_source(tmp_path / "srcA", 3)
        copy = make_project(root / ".dvc/tmp/exps/tmpab12", {"data": data}, git=False)
        make_source(copy / "data/synthetic", 2)
        monkeypatch.chdir(copy)
        return root, copy

    return make


def test_the_check_stage_refuses_a_data_folder_outside_the_project_from_a_copy(copy_of, capsys):
    root, copy = copy_of(sources={"a": {"path": "../srcA"}})
    assert run_stage(check.main, []) == 2
    assert capsys.readouterr().err == (
        "error: params: data.sources.a.path='../srcA' leaves the project, and this experiment "
        f"runs in DVC's copy of it, where DVC would look for it at {copy.parent / 'srcA'}: give "
        f"the absolute path {root.parent / 'srcA'} instead (make exp and make sweep do that)\n"
    )
    assert not (copy / CHECKED).exists()
    params = yaml.safe_load((copy / "params.yaml").read_text())  # RGB-only folders alike
    params["data"]["sources"] = {"synthetic": {"path": "data/synthetic"}}
    params["data"]["unlabeled"] = {"u": {"path": "../srcA"}}
    params["teacher"]["model"] = "models/teacher/t.tflite"
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert run_stage(check.main, []) == 2
    assert capsys.readouterr().err.startswith(
        "error: params: data.unlabeled.u.path='../srcA' leaves the project"
    )


def test_from_a_copy_files_a_stage_opens_are_found_beside_the_project(copy_of, capsys):
    root, copy = copy_of()
    (root.parent / "pre.keras").write_bytes(b"a model")
    inputs = make_source(root.parent / "challenge_val", 2) / "rgb"
    params = yaml.safe_load((copy / "params.yaml").read_text())
    params["train"]["init_from"] = "../pre.keras"
    params["package"]["inputs"] = "../challenge_val/rgb"
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert inputs.is_dir() and not (copy.parent / "pre.keras").exists()
    assert run_stage(check.main, []) == 0, capsys.readouterr().err
    assert "check: 3 path(s) in the params found" in capsys.readouterr().out
    assert (copy / CHECKED).is_file()
    (root.parent / "pre.keras").unlink()
    assert run_stage(check.main, []) == 2
    assert capsys.readouterr().err == "error: ../pre.keras: train.init_from model not found\n"


def test_from_a_copy_the_encoder_weights_beside_the_project_are_found(copy_of, capsys):
    """train.encoder_weights follows the same rule: ../shared/encoders/... from a copy."""
    root, copy = copy_of()
    (root.parent / "enc.tflite").write_bytes(b"weights")
    params = yaml.safe_load((copy / "params.yaml").read_text())
    params["train"]["encoder_weights"] = "../enc.tflite"
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert run_stage(check.main, []) == 0, capsys.readouterr().err
    (root.parent / "enc.tflite").unlink()
    assert run_stage(check.main, []) == 2
    assert capsys.readouterr().err.endswith(
        "error: ../enc.tflite: train.encoder_weights file not found\n"
    )


def test_a_missing_teacher_or_init_from_file_is_one_line_before_any_stage(tmp_path, monkeypatch):
    root = make_project(tmp_path / "project", git=False)
    monkeypatch.chdir(root)
    for key, value, line in (
        (
            "teacher",
            {"model": "models/teacher/gone.onnx"},
            "models/teacher/gone.onnx: teacher model file not found (teacher.model)",
        ),
        (
            "train",
            {"init_from": "models/pre.keras"},
            "models/pre.keras: train.init_from model not found",
        ),
        (
            "train",
            {"encoder_weights": "../gone.tflite"},
            "../gone.tflite: train.encoder_weights file not found",
        ),
    ):
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        params[key].update(value)
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        proc = run([sys.executable, "-m", "stages.check"], root, check=False)
        assert (proc.returncode, proc.stderr) == (2, f"error: {line}\n")
        assert not (root / CHECKED).exists()


def test_under_dvc_repro_a_missing_data_folder_is_one_line_before_any_stage(tmp_path):
    """Before the check stage, DVC itself failed on it: `ERROR: failed to reproduce
    'index@x': [Errno 2] No such file or directory: ...`, after synthesize had run."""
    root = make_project(tmp_path / "project", {"data": {"sources": {"x": {"path": "../nope"}}}})
    proc = run([dvc_bin(), "repro"], root, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert ran_stages(out) == ["check"], out
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert errors == [
        "error: ../nope: data folder not found (check its path under data.sources in params.yaml)"
    ]
    assert "Errno" not in out


# ------------------------------------------------ one real queue of four experiments
@pytest.fixture(scope="module")
def queue(tmp_path_factory):
    base = tmp_path_factory.mktemp("paths")
    sources = {name: make_source(base / name, n).resolve() for name, n in PAIRS.items()}
    root = make_project(base / "project", {"data": {"sources": {"a": {"path": "../srcA"}}}})
    (root / PRESET).write_text(
        yaml.safe_dump({"data": {"sources": {"a": {"path": "../srcA"}, "b": {"path": "../srcB"}}}})
    )
    run(["git", "add", PRESET], root)
    run(["git", "commit", "-qm", "a preset of both sources"], root)

    # make exp PRESET=presets/both.yaml EXP_ARGS="--queue -n via-exp prepare"
    exp = run(
        [sys.executable, "-m", "stages.exp", PRESET, "--queue", "-n", "via-exp", "prepare"], root
    )
    # make sweep, over a grid of both folders (its commands, each up to prepare)
    grid = base / "g.yaml"
    grid.write_text("grid:\n  data.sources.a.path: [../srcA, ../srcB]\n")
    plan = sweep.check(sweep.read_grid(grid), params=root / "params.yaml", root=root)
    commands = sweep.queue_commands(plan, dvc=dvc_bin())
    for cmd in commands:
        run([*cmd, "prepare"], root)
    # the raw form
    raw = [
        dvc_bin(),
        "exp",
        "run",
        "--queue",
        "-n",
        "raw",
        "-S",
        "~data.sources.a",
        "-S",
        "+data.sources.tum.path=../srcB",
        "prepare",
    ]
    run(raw, root)
    names = ["via-exp", "g-srcA", "g-srcB", "raw"]
    start_queue(root, 2)
    try:
        statuses, _ = wait_for_queue(root, names)
    except BaseException:
        run([dvc_bin(), "queue", "stop", "--kill"], root, check=False)
        raise
    run([dvc_bin(), "queue", "stop"], root, check=False)
    show = json.loads(run([dvc_bin(), "exp", "show", "--json"], root).stdout)
    prepared = {}  # exp name -> its metrics/prepare.json (the failed one has none)
    for baseline in show:
        for entry in baseline.get("experiments") or []:
            for rev in entry.get("revs") or []:
                metrics = (rev.get("data") or {}).get("metrics") or {}
                if rev.get("name") and "data" in metrics.get("metrics/prepare.json", {}):
                    prepared[rev["name"]] = metrics["metrics/prepare.json"]["data"]
    return SimpleNamespace(
        root=root,
        sources=sources,
        exp_out=exp.stdout,
        commands=commands,
        statuses=statuses,
        logs={name: queue_logs(root, name) for name in names},
        prepared=prepared,
    )


def assert_success(queue, name: str) -> dict:
    assert queue.statuses[name] == "Success", queue.logs[name][-4000:]
    return queue.prepared[name]


def test_make_exp_queues_a_preset_of_two_sources_outside_the_project(queue):
    a, b = (str(queue.sources[n]) for n in ("srcA", "srcB"))
    # the preset adds b as written; the last -S pin both (a from params.yaml) absolute
    command = queue.exp_out.splitlines()[0]  # what stages.exp prints, then runs
    assert command == (
        "dvc exp run -S +data.sources.b.path=../srcB --queue -n via-exp prepare "
        f"-S data.sources.a.path={a} -S data.sources.b.path={b}"
    )
    prepared = assert_success(queue, "via-exp")
    assert {n: s["path"] for n, s in prepared["sources"].items()} == {"a": a, "b": b}
    assert prepared["train_images"] + prepared["val_images"] == sum(PAIRS.values())


def test_make_sweep_queues_a_grid_of_folders_outside_the_project(queue):
    for name, folder in (("g-srcA", "srcA"), ("g-srcB", "srcB")):
        prepared = assert_success(queue, name)
        assert prepared["sources"]["a"]["path"] == str(queue.sources[folder])
        assert prepared["train_images"] + prepared["val_images"] == PAIRS[folder]
    assert [cmd[cmd.index("-n") + 1] for cmd in queue.commands] == ["g-srcA", "g-srcB"]


def test_a_raw_queued_run_with_a_relative_folder_outside_stops_first_with_one_line(queue):
    log = queue.logs["raw"]
    assert queue.statuses["raw"] == "Failed", log[-4000:]
    assert ran_stages(log) == ["check"], log[-4000:]
    errors = [line for line in log.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, log[-4000:]
    assert errors[0].startswith(
        "error: params: data.sources.tum.path='../srcB' leaves the project, and this "
        "experiment runs in DVC's copy of it, where DVC would look for it at "
        f"{queue.root.resolve() / '.dvc/tmp/exps'}"
    )
    assert errors[0].endswith(
        f": give the absolute path {queue.sources['srcB']} instead (make exp and make sweep do "
        "that)"
    )
    assert "Errno" not in log


def test_a_temp_run_through_make_exp_finds_them_too_and_the_workspace_keeps_them_relative(
    queue,
):
    """--temp runs one level deeper (.dvc/tmp/exps/standalone/tmpXXXX); in the workspace the
    relative paths work as they are and stay as written."""
    root = queue.root
    proc = run(
        [sys.executable, "-m", "stages.exp", PRESET, "--temp", "-n", "via-temp", "prepare"], root
    )
    assert "Ran experiment(s): via-temp" in proc.stdout + proc.stderr
    proc = run([dvc_bin(), "repro", "prepare"], root)
    assert ran_stages(proc.stdout)[0] == "check"
    prepared = json.loads((root / "metrics/prepare.json").read_text())
    assert prepared["sources"]["a"]["path"] == "../srcA"
    assert all(
        row.split(",")[3].startswith(os.path.join("..", "srcA", "rgb"))
        for row in (root / "data/prepared/split.csv").read_text().splitlines()[1:]
    )
