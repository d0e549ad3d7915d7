"""The real DVC pipeline on a tiny configuration: data -> model -> TFLite -> ZIP -> MLflow."""

from __future__ import annotations

import csv
import json
import re
import sqlite3
import zipfile

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import dvc_bin, run
from pipeline.tracking.runs import stage_seconds

STAGES = (
    "check",  # always first: the paths the params name are there
    "synthesize",
    "index@synthetic",
    "prepare",
    "teacher",
    "train",
    "export",
    "benchmark",
    "evaluate",
    "package",
    "track",
)


def ran_stages(log: str) -> list[str]:
    return re.findall(r"Running stage '([\w@-]+)'", log)


def test_full_repro_produces_zip_metrics_and_mlflow_run(tiny_repro):
    root = tiny_repro
    assert ran_stages((root / "first_repro.log").read_text()) == list(STAGES)

    evaluation = json.loads((root / "metrics/evaluate.json").read_text())
    assert evaluation["rmse"] > 0
    from pipeline.core.files import read_depth_m, read_rgb
    from pipeline.core.metrics import image_metrics
    from pipeline.device.predict import TFLiteDepthModel

    with open(root / "reports/eval_per_image.csv") as f:
        scored = [row for row in csv.DictReader(f) if int(row["n_valid"]) > 0]
    with open(root / "data/prepared/split.csv") as f:
        files = {(row["source"], row["name"]): row for row in csv.DictReader(f)}
    model = TFLiteDepthModel(root / "models/model.tflite")
    for row in scored:  # each image's si-RMSE is that of the shipped TFLite model on it
        pair = files[row["source"], row["name"]]
        gt = read_depth_m(root / pair["depth"])
        pred = model.predict(read_rgb(root / pair["rgb"]), out_size=gt.shape)
        assert float(row["si_rmse"]) == pytest.approx(
            image_metrics(pred=pred, gt=gt)["si_rmse"], rel=1e-5
        )
    assert len(scored) == evaluation["n_images"] == 2
    assert evaluation["si_rmse"] == pytest.approx(
        np.mean([float(r["si_rmse"]) for r in scored]), rel=1e-5
    )
    bench = json.loads((root / "metrics/benchmark.json").read_text())
    assert bench["median_ms"] > 0 and bench["init_ms"] > 0 and bench["peak_rss_mb"] > 0

    val_names = [
        line.split(",")[0]
        for line in (root / "data/prepared/split.csv").read_text().splitlines()[1:]
        if line.split(",")[1] == "val"
    ]
    with zipfile.ZipFile(root / "submission/submission.zip") as zf:
        names = sorted(zf.namelist())
        assert names == sorted(val_names + ["model.tflite", "readme.txt"])
        assert all("/" not in n for n in names)  # flat
        readme = zf.read("readme.txt").decode()
        runtime = float(re.search(r"runtime per image \[s\] : ([0-9.]+)", readme).group(1))
        assert abs(runtime - bench["median_ms"] / 1000) < 1e-4
        assert "CPU[1] / GPU[0] : 1" in readme
        with zf.open(val_names[0]) as f:
            png = Image.open(f)
            png.load()
        assert png.mode == "I;16" and png.size == (160, 120)  # the synthetic inputs' size
        depth = np.asarray(png)
        assert depth.max() > 100  # millimetres, not metres

    assert tracked_runs(root) == 1
    db = sqlite3.connect(root / "mlflow.db")
    (n_inputs,) = db.execute("select count(*) from inputs where source_type = 'DATASET'").fetchone()
    assert n_inputs == 2  # the synthetic train and val splits
    (note,) = db.execute("select value from tags where key = 'mlflow.note.content'").fetchone()
    assert "validated on synthetic/val (2 pairs)" in note and "si-RMSE " in note
    # every stage with a metrics JSON recorded its own time (index@NAME's through prepare's),
    # and the run lasts as long as all of them and track
    times = stage_seconds(root)
    assert set(times) == set(STAGES) - {"check", "synthesize", "package", "track"}, times
    assert times["train"] > 1
    assert run_seconds(root)[-1] >= sum(times.values())


def tracked_runs(root) -> int:
    with sqlite3.connect(root / "mlflow.db") as db:
        return db.execute("select count(*) from runs").fetchone()[0]


def run_seconds(root) -> list[float]:
    """Each run's Duration in the MLflow UI (end - start), in the order they were logged."""
    with sqlite3.connect(root / "mlflow.db") as db:
        rows = db.execute("select start_time, end_time from runs order by end_time").fetchall()
    return [(end - start) / 1000 for start, end in rows]


def test_second_repro_reruns_only_check_and_track_which_logs_no_second_run(tiny_repro):
    proc = run([dvc_bin(), "repro"], tiny_repro)
    assert ran_stages(proc.stdout) == ["check", "track"]  # the two always_changed stages
    assert "already tracked: MLflow run " in proc.stdout
    assert tracked_runs(tiny_repro) == 1


def test_evaluate_param_change_reruns_evaluate_without_training(tiny_repro):
    root = tiny_repro
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["evaluate"]["panels"] = 2
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = run([dvc_bin(), "repro"], root)
    assert ran_stages(proc.stdout) == ["check", "evaluate", "track"]
    assert tracked_runs(root) == 2  # new outputs, new run
    # the new result took the skipped stages' time too: training's above all
    times = stage_seconds(root)
    assert run_seconds(root)[-1] >= sum(times.values()) > times["train"] > 1
    assert len(list((root / "reports/eval_panels").glob("*.png"))) == 4  # 2 worst + 2 best
    proc = run([dvc_bin(), "repro", "-s", "-f", "evaluate"], root)
    assert ran_stages(proc.stdout) == ["evaluate"]


def test_benchmark_is_never_restored_from_run_cache(tiny_repro):
    """A timing belongs to the machine that measured it: going back to earlier params
    must measure again, not restore the old figure from DVC's run-cache."""
    root = tiny_repro
    for runs in (3, 2):
        params = yaml.safe_load((root / "params.yaml").read_text())
        params["benchmark"]["runs"] = runs
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        proc = run([dvc_bin(), "repro", "benchmark"], root)
        assert ran_stages(proc.stdout) == ["check", "benchmark"], proc.stdout
        assert "run-cache" not in proc.stdout
        assert json.loads((root / "metrics/benchmark.json").read_text())["runs"] == runs
