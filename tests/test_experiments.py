"""Parallel DVC experiments on the tiny project, tracked in one MLflow store.

One queue (`dvc exp run --queue` + `dvc queue start -j 2`) serves every test here:
- two full pipelines with different `train.arch` run at the same time; each lands in
  `dvc exp show --json` with its own outputs and as exactly one MLflow run in the
  project's absolute mlflow.db (issues 7 and 9);
- three `prepare`-only experiments show which source paths (`data.sources.NAME.path`) resolve
  inside DVC's temporary experiment copies (.dvc/tmp/exps/...): an absolute path and a DVC-tracked
  folder do; a relative path outside the repo, queued as it is, is stopped by the check stage
  with one line (docs/scale-out.md; make exp and make sweep queue it absolute:
  tests/test_experiment_paths.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import (
    REPO,
    SHARED_DATA,
    dvc_bin,
    make_project,
    project_env,
    queue_logs,
    run,
    start_queue,
    wait_for_queue,
)

EPOCHS = 2  # two history steps per run, at little extra cost over one
FULL = {"q-mobile-unet": "mobile_unet", "q-litedepth": "litedepth"}  # exp name -> train.arch
SOURCES = ("src-absolute", "src-dvc-tracked", "src-relative-outside")
N_FRAMES = 6
EXPERIMENT = "mai-depth"  # params.yaml track.experiment


def experiments_by_name(show: list) -> dict[str, dict]:
    """`dvc exp show --json` -> {exp name: its data (params, metrics, outs, ...)}."""
    out = {}
    for baseline in show:
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs") or []:
                if rev.get("name"):
                    out[rev["name"]] = rev["data"]
    return out


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def queue(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("queue") / "project", {"train": {"epochs": EPOCHS}})
    # A few real frames as a DVC-tracked folder: DVC checks it out into each temp copy.
    frames = sorted(p.name for p in (SHARED_DATA / "rgb").glob("*.png"))[:N_FRAMES]
    for sub in ("rgb", "depth"):
        (root / "data/mydata" / sub).mkdir(parents=True)
        for name in frames:
            shutil.copy(SHARED_DATA / sub / name, root / "data/mydata" / sub / name)
    run([dvc_bin(), "add", "data/mydata"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "track data/mydata"], root)
    baseline = run(["git", "rev-parse", "HEAD"], root).stdout.strip()

    shared = SHARED_DATA.resolve()
    queued = {  # name -> (overrides, targets); prepare-only first, so they finish early
        "src-absolute": (
            [f"data.sources.synthetic.path={shared}", f"data.max_images={N_FRAMES}"],
            ["prepare"],
        ),
        "src-dvc-tracked": (["data.sources.synthetic.path=data/mydata"], ["prepare"]),
        "src-relative-outside": (
            [
                f"data.sources.synthetic.path={os.path.relpath(shared, root)}",
                f"data.max_images={N_FRAMES}",
            ],
            ["prepare"],
        ),
        **{name: ([f"train.arch={arch}"], []) for name, arch in FULL.items()},
    }
    for name, (overrides, targets) in queued.items():
        sets = [arg for o in overrides for arg in ("-S", o)]
        run([dvc_bin(), "exp", "run", "--queue", "-n", name, *sets, *targets], root)

    start = time.monotonic()
    start_queue(root, 2)
    try:
        statuses, running_seen = wait_for_queue(root, queued)
    except BaseException:
        run([dvc_bin(), "queue", "stop", "--kill"], root, check=False)
        raise
    wall_s = time.monotonic() - start
    run([dvc_bin(), "queue", "stop"], root, check=False)  # idle workers: exit now, not in 10 s
    logs = {name: queue_logs(root, name) for name in queued}
    show = json.loads(run([dvc_bin(), "exp", "show", "--json"], root).stdout)
    return SimpleNamespace(
        root=root,
        baseline=baseline,
        statuses=statuses,
        running_seen=running_seen,
        logs=logs,
        exps=experiments_by_name(show),
        wall_s=wall_s,
    )


def assert_success(queue, name: str) -> None:
    assert queue.statuses.get(name) == "Success", (
        f"{name}: {queue.statuses.get(name)}\n--- dvc queue logs {name} "
        f"---\n{queue.logs[name][-6000:]}"
    )


@pytest.fixture(scope="module")
def mlflow_runs(queue):
    """({run name: (run, [(step, history.loss)])}, number of runs) of the project's store."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{queue.root / 'mlflow.db'}")
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exp_ids)
    return {
        run.info.run_name: (
            run,
            [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "history.loss")],
        )
        for run in runs
    }, len(runs)


def test_two_queued_experiments_run_in_parallel(queue):
    for name in FULL:
        assert_success(queue, name)
    both = [running for running in queue.running_seen if set(FULL) <= running]
    assert both, f"the two pipelines never ran at the same time: {queue.running_seen}"
    print(f"queue of {len(queue.statuses)} experiments with -j 2: {queue.wall_s:.0f} s")


def test_exp_show_has_both_experiments_with_their_own_outputs(queue):
    for name in FULL:
        assert_success(queue, name)
    found = {name: queue.exps[name] for name in FULL}
    tflite_md5, n_params = {}, {}
    for name, data in found.items():
        assert data["params"]["params.yaml"]["data"]["train"]["arch"] == FULL[name]
        metrics = {Path(k).stem: v["data"] for k, v in data["metrics"].items() if "data" in v}
        assert metrics["evaluate"]["si_rmse"] > 0 and metrics["benchmark"]["median_ms"] > 0
        assert metrics["export"]["size_mb"] > 0 and metrics["train"]["epochs"] == EPOCHS
        # the exported model is the one this experiment trained (same parameter count)
        assert metrics["export"]["params"] == metrics["train"]["params"]
        n_params[name] = metrics["train"]["params"]
        tflite_md5[name] = data["outs"]["models/model.tflite"]["hash"]
        assert tflite_md5[name] and data["outs"]["submission/submission.zip"]["hash"]
    # different architectures: nothing one experiment wrote was overwritten by the other
    assert len(set(n_params.values())) == 2, n_params
    assert len(set(tflite_md5.values())) == 2, tflite_md5


def test_exactly_one_mlflow_run_per_queued_pipeline(queue, mlflow_runs):
    runs, n_runs = mlflow_runs
    assert n_runs == 2 and set(runs) == set(FULL), sorted(runs)  # prepare-only exps log nothing
    artifact_root = (queue.root / "mlartifacts").as_uri()
    for name, (run_, loss_history) in runs.items():
        info, data = run_.info, run_.data
        assert info.status == "FINISHED"
        assert data.params["train.arch"] == FULL[name] and data.params["train.epochs"] == str(
            EPOCHS
        )
        for key in ("evaluate.si_rmse", "benchmark.median_ms", "export.size_mb"):
            assert data.metrics[key] > 0, key
        steps = sorted(step for step, _ in loss_history)
        assert len(steps) == EPOCHS and steps == list(range(steps[0], steps[0] + EPOCHS)), (
            loss_history
        )
        assert data.tags["dvc.exp_name"] == name == info.run_name
        assert data.tags["git.commit"] == queue.baseline and data.tags["train.arch"] == FULL[name]
        assert data.tags["git.dirty"] == "true"  # the -S override changed params.yaml
        # artifacts in the real root, not in the temp copy DVC deleted afterwards
        assert info.artifact_uri.startswith(artifact_root), info.artifact_uri
        folder = Path(info.artifact_uri.removeprefix("file://"))
        for rel in (
            "models/model.tflite",
            "submission/submission.zip",
            "reports/history.csv",
            "dvc.lock",
        ):
            assert (folder / rel).is_file(), rel
    assert not (queue.root / "mlruns").exists()
    assert not list((queue.root / ".dvc/tmp/exps").rglob("mlflow.db"))


def test_each_mlflow_run_holds_its_own_experiments_results(queue, mlflow_runs):
    runs, _ = mlflow_runs
    logged_md5 = {}
    for name, (run_, _) in runs.items():
        exp = queue.exps[name]
        metrics = {Path(k).stem: v["data"] for k, v in exp["metrics"].items() if "data" in v}
        logged = run_.data.metrics
        assert logged["evaluate.si_rmse"] == pytest.approx(metrics["evaluate"]["si_rmse"])
        assert logged["export.size_mb"] == pytest.approx(metrics["export"]["size_mb"])
        assert logged["benchmark.median_ms"] == pytest.approx(metrics["benchmark"]["median_ms"])
        folder = Path(run_.info.artifact_uri.removeprefix("file://"))
        logged_md5[name] = md5(folder / "models/model.tflite")
        assert logged_md5[name] == exp["outs"]["models/model.tflite"]["hash"]
        assert (
            md5(folder / "submission/submission.zip")
            == exp["outs"]["submission/submission.zip"]["hash"]
        )
    assert len(set(logged_md5.values())) == 2


def test_data_source_resolution_in_queued_temp_copies(queue):
    for name, source, n in (
        ("src-absolute", str(SHARED_DATA.resolve()), N_FRAMES),
        ("src-dvc-tracked", "data/mydata", N_FRAMES),
    ):
        assert_success(queue, name)
        prepared = queue.exps[name]["metrics"]["metrics/prepare.json"]["data"]
        assert prepared["sources"]["synthetic"]["path"] == source
        assert prepared["train_images"] + prepared["val_images"] == n
    # `../x` would be resolved from the temp copy <root>/.dvc/tmp/exps/tmpXXXX, not from the
    # root: the check stage, the first, stops it with one line (before it: DVC's Errno 2)
    name = "src-relative-outside"
    assert queue.statuses[name] == "Failed", queue.logs[name][-3000:]
    errors = [line for line in queue.logs[name].splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(
        "error: params: data.sources.synthetic.path='../"
    ), queue.logs[name][-3000:]
    assert "leaves the project, and this experiment runs in DVC's copy of it" in errors[0]
    assert f"give the absolute path {SHARED_DATA.resolve()} instead" in errors[0]
    assert "Errno" not in queue.logs[name]


# Each process imports mlflow, says it is ready, and starts logging when both are.
RACE_WORKER = """
import sys, time
from pathlib import Path
from pipeline.core.config import load_params
from pipeline.tracking.runs import log_pipeline_run
import mlflow
project, me, other = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
me.touch()
deadline = time.time() + 120
while not other.exists() and time.time() < deadline:
    time.sleep(0.01)
params = load_params(project / "params.yaml")
print(log_pipeline_run(project_root=project, params=params, experiment_name="race"))
"""


def test_parallel_tracking_on_a_fresh_store(tmp_path):
    """Two experiments finishing together on a new mlflow.db: both runs are logged.

    Without the store lock both processes ran MLflow's schema migrations and one (or
    both) failed with alembic's "Online migration expected to match one row".
    """
    env = project_env()
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env["PYTHONPATH"] = str(REPO)
    procs = []
    for me, other in (("a", "b"), ("b", "a")):
        project = tmp_path / me
        (project / "metrics").mkdir(parents=True)
        shutil.copy(REPO / "params.yaml", project / "params.yaml")
        (project / "metrics/evaluate.json").write_text(json.dumps({"si_rmse": 0.3}))
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    RACE_WORKER,
                    str(project),
                    str(tmp_path / f"ready_{me}"),
                    str(tmp_path / f"ready_{other}"),
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (_out, err) in zip(procs, results):
        assert proc.returncode == 0, err[-3000:]
    db = sqlite3.connect(tmp_path / "mlflow.db")
    assert db.execute("select count(*) from runs where status = 'FINISHED'").fetchone() == (2,)
