"""pipeline.tracking.compare + stages.compare: table and Pareto plot of tracked runs."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.core.cli import run_stage
from pipeline.core.config import load_params
from pipeline.core.metrics import challenge_score
from pipeline.tracking.compare import (
    best_score,
    describe_best,
    pareto_front,
    runs_table,
    to_markdown,
)
from pipeline.tracking.runs import log_pipeline_run
from stages import compare

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


def test_pareto_front_minimises_both():
    x = [50, 20, 60, 20, 10, np.nan, 5]
    y = [0.30, 0.35, 0.36, 0.35, 0.50, 0.01, np.nan]
    # 60/0.36 is dominated by 50/0.30; the two equal 20/0.35 points both stay; NaN never on it
    assert pareto_front(x, y).tolist() == [True, True, False, True, True, False, False]
    assert pareto_front([1, 2, 3], [3, 2, 1]).all()
    assert pareto_front([1, 2, 3], [1, 2, 3]).tolist() == [True, False, False]
    assert pareto_front([1, 1], [2, 1]).tolist() == [False, True]  # same x, worse y
    assert pareto_front([], []).tolist() == []


RUNS = {  # run name -> (arch, precision, evaluate.json, benchmark.json, export.json)
    # fast-int8 was timed on idle cores, the others under load: the est. Pi 4 ms (the local
    # median x that moment's calibration) ranks good-fp32 first, the local median fast-int8
    "fast-int8": (
        "fastdepth",
        "int8",
        {"si_rmse": 0.35, "rmse": 1.4},
        {"median_ms": 20.0, "est_rpi4_ms": 150.0},
        {"size_mb": 0.5},
    ),
    "good-fp32": (
        "mobile_unet",
        "fp32",
        {"si_rmse": 0.30, "rmse": 1.2},
        {"median_ms": 50.0, "est_rpi4_ms": 100.0},
        {"size_mb": 2.0},
    ),
    "bad-fp16": (
        "litedepth",
        "fp16",
        {"si_rmse": 0.36, "rmse": 1.5},
        {"median_ms": 60.0, "est_rpi4_ms": 120.0},
        {"size_mb": 1.0},
    ),
    "no-bench": ("mobile_unet", "fp32", {"si_rmse": 0.10, "rmse": 0.9}, None, None),
}
# Where two of them were trained (metrics/train.json `host`): the table tells the machines apart.
HOSTS = {
    "fast-int8": {
        "cpu": "AMD EPYC",
        "cpu_id": "AuthenticAMD family 23 model 49 stepping 0",
        "vector_path": "AVX-512",
    },
    "good-fp32": {
        "cpu": "AMD EPYC",
        "cpu_id": "AuthenticAMD family 25 model 17 stepping 1",
        "vector_path": "AVX2 (capped)",
        "onednn_max_cpu_isa": "AVX2",
    },
}
# How long good-fp32's stages took (metrics JSON `stage_seconds`; train_seconds: its epochs)
GOOD_TIMES = {"train": 600.0, "export": 30.0, "benchmark": 20.0, "evaluate": 10.0}
GOOD_EPOCHS_S = 540.0


@pytest.fixture
def tracked(tmp_path, monkeypatch):
    """Four runs logged through pipeline.tracking.runs into <tmp>/store/mlflow.db."""
    store = tmp_path / "store"
    store.mkdir()
    uri = f"sqlite:///{store}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    base = load_params(REPO / "params.yaml")
    for name, (arch, precision, ev, bench, export) in RUNS.items():
        proj = tmp_path / name
        (proj / "metrics").mkdir(parents=True)
        shutil.copy(REPO / "params.yaml", proj / "params.yaml")
        train = {"host": HOSTS[name]} if name in HOSTS else None
        stages = (("evaluate", ev), ("benchmark", bench), ("export", export), ("train", train))
        for stage, content in stages:
            if content is not None:
                if name == "good-fp32":
                    content = {**content, "stage_seconds": GOOD_TIMES[stage]}
                    if stage == "train":
                        content["train_seconds"] = GOOD_EPOCHS_S
                (proj / "metrics" / f"{stage}.json").write_text(json.dumps(content))
        params = dataclasses.replace(
            base,
            train=dataclasses.replace(base.train, arch=arch),
            export=dataclasses.replace(base.export, precision=precision),
        )
        log_pipeline_run(project_root=proj, params=params, experiment_name="cmp", run_name=name)
    return uri


def test_compare_stage_writes_table_and_plot(tracked, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracked)
    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    out = tmp_path / "cmp_out"
    assert run_stage(compare.main, ["--experiment", "cmp", "--out", str(out)]) == 0
    printed = capsys.readouterr().out

    table = pd.read_csv(out / "runs.csv")
    assert sorted(table["run"]) == sorted(RUNS)
    by_run = table.set_index("run")
    assert by_run.loc["good-fp32", "arch"] == "mobile_unet"
    assert by_run.loc["fast-int8", "precision"] == "int8"
    assert by_run.loc["fast-int8", "latency_ms"] == pytest.approx(20.0)
    assert by_run.loc["good-fp32", "size_mb"] == pytest.approx(2.0)
    assert by_run.loc["bad-fp16", "rmse_m"] == pytest.approx(1.5)
    for name, host in HOSTS.items():
        for column in ("cpu", "cpu_id", "vector_path"):
            assert by_run.loc[name, column] == host[column]
    # logged before host facts
    assert by_run[["cpu", "cpu_id", "vector_path"]].loc["no-bench"].isna().all()
    # how long each took: training's epochs, and the whole result: the run's Duration in MLflow
    from mlflow import MlflowClient

    good = MlflowClient(tracking_uri=tracked).get_run(by_run.loc["good-fp32", "run_id"]).info
    assert by_run.loc["good-fp32", "train_s"] == GOOD_EPOCHS_S
    assert by_run.loc["good-fp32", "total_s"] == pytest.approx(
        (good.end_time - good.start_time) / 1000, abs=0.06
    )
    assert sum(GOOD_TIMES.values()) <= by_run.loc["good-fp32", "total_s"] < 670
    assert by_run[["train_s", "total_s"]].loc["no-bench"].isna().all()  # no stage times known
    assert by_run.loc["good-fp32", "score"] == pytest.approx(
        challenge_score(si_rmse=0.30, runtime_s=0.05)
    )
    assert math.isnan(by_run.loc["no-bench", "score"]) and math.isnan(
        by_run.loc["no-bench", "latency_ms"]
    )
    assert by_run.loc["good-fp32", "score_rpi4"] == pytest.approx(
        challenge_score(si_rmse=0.30, runtime_s=0.1)
    )
    assert by_run.loc["fast-int8", "score"] > by_run.loc["good-fp32", "score"]
    assert by_run["pareto"].to_dict() == {
        "fast-int8": True,
        "good-fp32": True,
        "bad-fp16": False,
        "no-bench": False,
    }
    assert by_run["pareto_rpi4"].to_dict() == {
        "fast-int8": False,
        "good-fp32": True,
        "bad-fp16": False,
        "no-bench": False,
    }
    # best score (at est. Pi 4, the challenge's device) first, runs without a score last
    assert list(table["run"]) == ["good-fp32", "bad-fp16", "fast-int8", "no-bench"]
    score = challenge_score(si_rmse=0.30, runtime_s=0.1)
    best = f"best challenge score: good-fp32, {score:.4g} at est. Pi 4 100.0 ms"

    assert set(table["data"]) == {"unknown data"}  # logged without a split: one group of their own

    md = (out / "runs.md").read_text()
    assert md.splitlines()[0] == "### unknown data: 4 runs"
    assert md.splitlines()[2].startswith(best)
    assert md.splitlines()[4].startswith(
        "| run | arch | precision | si_rmse | rmse_m | latency_ms | est_rpi4_ms |"
    )
    assert len(md.strip().splitlines()) == 6 + len(RUNS)
    assert md in printed
    group = next(line for line in printed.splitlines() if line.startswith("- unknown data"))
    assert "Pareto front: good-fp32, fast-int8; est. Pi 4 front: good-fp32; " + best in group

    with Image.open(out / "pareto-unknown-data.png") as img:
        assert img.format == "PNG" and img.size == (1200, 500)  # local latency | est. Pi 4
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))
    # the plot opens in the MLflow UI: an image artifact of the group's best-score run
    from mlflow import MlflowClient

    best = by_run.loc["good-fp32", "run_id"]
    assert [a.path for a in MlflowClient(tracking_uri=tracked).list_artifacts(best, "compare")] == [
        "compare/pareto-unknown-data.png"
    ]


def test_runs_on_other_data_are_never_ranked_together(tmp_path, monkeypatch, capsys):
    """Synthetic and TUM runs: two groups, a front and a plot each, nothing across."""
    from test_tracking import write_split

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    params = load_params(REPO / "params.yaml")
    runs = {
        "syn-a": ("synthetic", 0.30, 50.0),
        "syn-b": ("synthetic", 0.35, 20.0),
        "tum-a": ("tum_fr1_xyz", 0.20, 40.0),
        "tum-b": ("tum_fr1_xyz", 0.25, 70.0),
    }
    for name, (source, si_rmse, ms) in runs.items():
        proj = tmp_path / name
        write_split(proj, f"data/{source}", {"a.png": "train", "b.png": "val"}, size=len(source))
        (proj / "metrics").mkdir()
        (proj / "metrics" / "evaluate.json").write_text(json.dumps({"si_rmse": si_rmse}))
        (proj / "metrics" / "benchmark.json").write_text(json.dumps({"median_ms": ms}))
        log_pipeline_run(project_root=proj, params=params, experiment_name="cmp", run_name=name)
    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    assert run_stage(compare.main, ["--experiment", "cmp", "--out", "out"]) == 0
    printed = capsys.readouterr().out

    table = pd.read_csv(tmp_path / "out" / "runs.csv")
    # tum-a alone would dominate syn-a in a mixed ranking; per data set both fronts stand
    assert table.set_index("run")["pareto"].to_dict() == {
        "syn-a": True,
        "syn-b": True,
        "tum-a": True,
        "tum-b": False,
    }
    assert table.groupby("data")["run"].apply(sorted).to_dict() == {
        "synthetic/val": ["syn-a", "syn-b"],
        "tum_fr1_xyz/val": ["tum-a", "tum-b"],
    }
    assert "in 2 data group(s)" in printed
    groups = [line for line in printed.splitlines() if line.startswith("- ")]
    assert len(groups) == 2 and groups[0].startswith("- synthetic/val (val digest ")
    assert "2 runs; Pareto front: syn-b, syn-a;" in groups[0]
    assert "Pareto front: tum-a;" in groups[1]
    md = (tmp_path / "out" / "runs.md").read_text()
    assert [line for line in md.splitlines() if line.startswith("###")] == [
        line.split(";")[0].replace("- ", "### ", 1) for line in groups
    ]
    assert len(list((tmp_path / "out").glob("pareto-*.png"))) == 2


def test_compare_without_store_or_runs_is_a_clear_error(tracked, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    # no store at all: not created as a side effect
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/none.db")
    assert run_stage(compare.main, []) == 2
    assert (
        capsys.readouterr().err
        == f"error: no MLflow store at {tmp_path}/none.db; run the pipeline first\n"
    )
    assert not (tmp_path / "none.db").exists()
    # a store without that experiment
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracked)
    assert run_stage(compare.main, ["--experiment", "nothing-here"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: no MLflow experiment 'nothing-here' at sqlite:///")
    # an experiment without runs
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=tracked).create_experiment("empty")
    assert run_stage(compare.main, ["--experiment", "empty"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: experiment 'empty' at sqlite:///") and "has no runs yet" in err
    assert not (tmp_path / "reports").exists()


def test_runs_table_tolerates_missing_columns():
    runs = pd.DataFrame({"run_id": ["abcdef123456"], "metrics.evaluate.si_rmse": [0.4]})
    table = runs_table(runs)
    assert table.loc[0, "run"] == "abcdef12" and table.loc[0, "si_rmse"] == pytest.approx(0.4)
    assert math.isnan(table.loc[0, "latency_ms"]) and not table.loc[0, "pareto"]
    assert table.loc[0, "data"] == "unknown data"
    assert (
        "| abcdef12 | - | - | 0.4000 | - | - | - | - | - | - | - | - | - | unknown data "
        "| - | - | - |  |  | abcdef12 |"
    ) in to_markdown(table)


def test_best_score_is_named_per_group_by_the_pi4_estimate_when_there_is_one():
    def table(rows):
        return runs_table(
            pd.DataFrame(
                {
                    "run_id": [f"id{i}" for i in range(len(rows))],
                    "tags.mlflow.runName": [r[0] for r in rows],
                    "metrics.evaluate.si_rmse": [r[1] for r in rows],
                    "metrics.benchmark.median_ms": [r[2] for r in rows],
                    "metrics.benchmark.est_rpi4_ms": [r[3] for r in rows],
                }
            )
        )

    local_only = table(
        [("a", 0.30, 10.0, np.nan), ("b", 0.20, 40.0, np.nan), ("c", 0.50, np.nan, np.nan)]
    )
    best = best_score(local_only)
    assert (best["run"], best["by"]) == ("a", "latency_ms")  # 2^-6/1 beats 2^-4/4
    assert best["score"] == pytest.approx(challenge_score(si_rmse=0.30, runtime_s=0.01))
    assert describe_best(local_only).startswith(
        "best challenge score: a, 0.01562 at the local median 10.0 ms"
    )
    # one run with an estimate: the estimate decides, and is named with the local score beside it
    mixed = table([("a", 0.30, 10.0, np.nan), ("b", 0.20, 40.0, 200.0)])
    assert best_score(mixed)["run"] == "b" and list(mixed["run"]) == ["b", "a"]
    assert describe_best(mixed) == (
        f"best challenge score: b, {challenge_score(si_rmse=0.2, runtime_s=0.2):.4g} "
        f"at est. Pi 4 200.0 ms, si-RMSE 0.2000 "
        f"({challenge_score(si_rmse=0.2, runtime_s=0.04):.4g} at the local median 40.0 ms)"
    )
    # a tie in score, and a run without a score: the front keeps both ties, the best is one of them
    tied = table([("x", 0.25, 20.0, np.nan), ("y", 0.25, 20.0, np.nan), ("z", np.nan, 5.0, np.nan)])
    assert tied.set_index("run")["pareto"].to_dict() == {"x": True, "y": True, "z": False}
    assert best_score(tied)["run"] in ("x", "y")
    assert best_score(table([("z", np.nan, 5.0, np.nan)])) is None
    assert describe_best(table([("z", np.nan, 5.0, np.nan)])).startswith(
        "best challenge score: none"
    )
