"""pipeline.tracking.sweep + stages.sweep: a grid file -> checked combinations -> queued DVC
experiments.

No training and no real queue here (tests/test_experiments.py runs DVC's queue): a fake
`dvc` on PATH records what the sweep asks of it.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from pipeline.core.cli import run_stage
from pipeline.core.errors import ConfigError, PipelineError
from pipeline.tracking import sweep
from stages import sweep as sweep_stage


def grid_file(tmp_path: Path, text: str, name: str = "g.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A folder with the repo's params.yaml, the working directory of the test."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_expansion_is_the_product_first_key_slowest_with_linked_keys(tmp_path):
    g = sweep.read_grid(
        grid_file(
            tmp_path,
            """
        jobs: 2
        grid:
          train.arch: [mobile_unet, fastdepth]
          train.height,train.width: [[auto, auto], [192, 256]]
          export.precision: fp32          # one value: the same in every combination
    """,
        )
    )
    assert g.jobs == 2 and g.name == "g"
    assert sweep.expand(g.axes) == [
        {"train.arch": a, "train.height": h, "train.width": w, "export.precision": "fp32"}
        for a in ("mobile_unet", "fastdepth")
        for h, w in (("auto", "auto"), (192, 256))
    ]


def test_invalid_combinations_are_skipped_with_their_reason(project):
    g = sweep.check(
        sweep.read_grid(
            grid_file(
                project,
                """
        grid:
          train.arch: [mobile_unet, mai_baseline_unet]
          train.height,train.width: [[240, 320], [192, 256]]
    """,
            )
        )
    )
    # 240x320 is the baseline's own size (stride 16) but not divisible by mobile_unet's 32
    assert [(p["train.arch"], p["train.height"]) for p in g.points] == [
        ("mobile_unet", 192),
        ("mai_baseline_unet", 240),
        ("mai_baseline_unet", 192),
    ]
    assert g.skipped == (
        (
            {"train.arch": "mobile_unet", "train.height": 240, "train.width": 320},
            "params: train.height=240 must be divisible by 32 for mobile_unet",
        ),
    )
    lines = sweep.describe(g)
    assert lines[0] == "grid g: 4 combinations, 3 to queue, 1 skipped; dvc queue start -j 1"
    assert lines[1] == (
        "skip train.arch=mobile_unet train.height=240 train.width=320: "
        "params: train.height=240 must be divisible by 32 for mobile_unet"
    )


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "grid: {train.arch: [mobile_unet], export.precision: [fp32, fp33]}",
            "grid g: export.precision=fp33 is invalid in every combination: params: "
            "export.precision='fp33' is not one of",
        ),
        (
            "grid: {train.archh: [mobile_unet, fastdepth]}",
            "grid g: no valid combination: -S 'train.archh=mobile_unet': params have no "
            "train.archh",
        ),
        (
            "grid: {train.arch: [mobile_unet, fastdepth], train.height: [100]}",
            "grid g: no valid combination: params: train.height=100 must be divisible by 32 for "
            "mobile_unet",
        ),
        (
            "grid: {train.arch: [mobile_unet, fastdepth], train.height: [128, 100]}",
            "grid g: train.height=100 is invalid in every combination: params: train.height=100 "
            "must be divisible by 32",
        ),
        (
            "grid:\n  train.height,train.width: [[192]]",
            "g.yaml: grid.train.height,train.width: each value must be a list of 2",
        ),
        ("grid: {}", "g.yaml: expected `grid:`"),
        ("grid: {train.arch: [fastdepth]}\njob: 2", "g.yaml: unknown key job (known: grid, jobs)"),
        ("grid: {train.arch: [fastdepth]}\njobs: 0", "g.yaml: jobs must be an int >= 1, got 0"),
        (
            "grid:\n  train.arch: [fastdepth]\n  train.arch,train.width: [[litedepth, 160]]",
            "g.yaml: a key is in the grid twice: train.arch",
        ),
    ],
)
def test_a_bad_grid_is_one_line_before_anything_is_queued(project, text, message):
    with pytest.raises(ConfigError) as err:
        sweep.check(sweep.read_grid(grid_file(project, text)))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_names_and_commands(project):
    g = sweep.check(
        sweep.read_grid(
            grid_file(
                project,
                """
        grid:
          train.arch: [fastdepth]
          train.width_multiplier: [auto, 0.5]
          train.height,train.width: [[auto, auto], [192, 256]]
          train.learning_rate: [1e-5]          # YAML 1.2: a number, as in params files
    """,
                name="small.yaml",
            )
        )
    )
    names = [sweep.exp_name(g, p) for p in g.points]
    assert names == ["small-auto-auto", "small-auto-192x256", "small-0.5-auto", "small-0.5-192x256"]
    cmds = sweep.queue_commands(g)
    assert cmds[3] == [
        "dvc",
        "exp",
        "run",
        "--queue",
        "-n",
        "small-0.5-192x256",
        "-S",
        "train.arch=fastdepth",
        "-S",
        "train.width_multiplier=0.5",
        "-S",
        "train.height=192",
        "-S",
        "train.width=256",
        "-S",
        "train.learning_rate=1e-05",
    ]
    assert sweep.queue_commands(g, force=True)[0][4] == "-f"
    assert sweep.start_command(3) == ["dvc", "queue", "start", "-j", "3"]


def test_relative_paths_outside_the_repo_are_queued_absolute(project):
    """Queued runs resolve paths in .dvc/tmp/exps/...: ../x would point nowhere there. Every
    path param that leaves the project, in the grid or in params.yaml, is queued absolute
    (resolve_user_path's rule); the names keep the grid's values (a path: its last part)."""
    data = project.parent / "outside_data"
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["init_from"] = "../pre.keras"  # opened by the train stage: pinned too
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    g = sweep.check(
        sweep.read_grid(
            grid_file(
                project,
                f"""
        grid:
          data.sources.synthetic.path: [../{data.name}, data/synthetic]
    """,
            )
        ),
        root=project,
    )
    assert [p["data.sources.synthetic.path"] for p in g.points] == [
        f"../{data.name}",
        "data/synthetic",
    ]
    init_from = str(project.parent / "pre.keras")
    assert [cmd[5:] for cmd in sweep.queue_commands(g)] == [
        [
            "g-outside_data",
            "-S",
            f"data.sources.synthetic.path={data}",
            "-S",
            f"train.init_from={init_from}",
        ],
        [
            "g-synthetic",
            "-S",
            "data.sources.synthetic.path=data/synthetic",
            "-S",
            f"train.init_from={init_from}",
        ],
    ]


def test_the_default_grid_is_valid_on_params_yaml():
    g = sweep.check(
        sweep.read_grid(REPO / sweep.DEFAULT_GRID), params=REPO / "params.yaml", root=REPO
    )
    assert len(g.points) == 24 and not g.skipped and g.jobs == 1
    assert len({sweep.exp_name(g, p) for p in g.points}) == 24


FAKE_DVC = """#!/bin/sh
echo "$*" >> "$DVC_CALLS"
case "$*" in
  "exp list --name-only") cat "$DVC_EXPS" 2>/dev/null || true ;;
  "queue status") printf 'Task     Name    Created    Status\\n' ;;
  "queue start"*) echo "workers started" ;;
esac
"""


@pytest.fixture
def fake_dvc(project, monkeypatch):
    path = project / "bin" / "dvc"
    path.parent.mkdir()
    path.write_text(FAKE_DVC)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("DVC_CALLS", str(project / "calls.txt"))
    monkeypatch.setenv("DVC_EXPS", str(project / "exps.txt"))
    # the venv's bin after the fake: the sweep leaves PATH as it is when the venv is on it
    monkeypatch.setenv(
        "PATH",
        os.pathsep.join([str(path.parent), str(Path(sys.executable).parent), os.environ["PATH"]]),
    )
    return path


def test_the_stage_queues_every_point_then_starts_the_workers(project, fake_dvc, capsys):
    grid = grid_file(
        project, "grid: {train.arch: [fastdepth, litedepth]}\njobs: 2\n", name="two.yaml"
    )
    assert run_stage(sweep_stage.main, [str(grid), "--jobs", "1"]) == 0
    assert (project / "calls.txt").read_text().splitlines() == [
        "exp list --name-only",
        "queue status",
        "exp run --queue -n two-fastdepth -S train.arch=fastdepth",
        "exp run --queue -n two-litedepth -S train.arch=litedepth",
        "queue start -j 1",
    ]
    assert (project / sweep.QUEUE_LOG).read_text() == "workers started\n"  # a file, never a pipe
    out = capsys.readouterr().out
    assert "started 2 experiments, 1 at a time" in out and "dvc queue status" in out

    (project / "exps.txt").write_text("two-litedepth\n")  # run again: the names are taken
    assert run_stage(sweep_stage.main, [str(grid)]) == 1
    assert capsys.readouterr().err == (
        "error: 1 experiment name(s) of grid two exist already: two-litedepth; "
        "--force (FORCE=1) replaces them, or copy the grid to a file of another name\n"
    )


def test_dry_run_prints_the_commands_and_runs_nothing(project, fake_dvc, capsys):
    grid = grid_file(
        project, "grid: {train.arch: [fastdepth, mai_baseline_unet], train.height: [160, 240]}\n"
    )
    assert run_stage(sweep_stage.main, [str(grid), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "grid g: 4 combinations, 3 to queue, 1 skipped; dvc queue start -j 1"
    assert out[1].startswith("skip train.arch=fastdepth train.height=240: ")
    assert out[-4:] == [
        "dvc exp run --queue -n g-fastdepth-160 -S train.arch=fastdepth -S train.height=160",
        "dvc exp run --queue -n g-mai_baseline_unet-160 -S train.arch=mai_baseline_unet "
        "-S train.height=160",
        "dvc exp run --queue -n g-mai_baseline_unet-240 -S train.arch=mai_baseline_unet "
        "-S train.height=240",
        "dvc queue start -j 1",
    ]
    assert not (project / "calls.txt").exists()
    assert run_stage(sweep_stage.main, ["nope.yaml", "--dry-run"]) == 2
    assert capsys.readouterr().err == "error: nope.yaml: grid file not found\n"


def test_a_failing_dvc_command_is_one_line(project, fake_dvc, monkeypatch):
    fake_dvc.write_text(
        "#!/bin/sh\necho 'ERROR: Experiment conflicts with existing experiment' >&2\n"
        "echo '  dvc exp run -f ...' >&2\nexit 255\n"
    )
    with pytest.raises(PipelineError) as err:
        sweep.statuses(None, root=project)
    assert (
        str(err.value)
        == "`dvc queue status` failed: ERROR: Experiment conflicts with existing experiment"
    )
