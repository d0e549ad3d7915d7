"""The real DVC pipeline on a tiny configuration: data -> model -> TFLite -> ZIP -> MLflow."""

from __future__ import annotations

import json
import re
import sqlite3
import zipfile

import numpy as np
import yaml
from PIL import Image

from conftest import dvc_bin, run

STAGES = ("synthesize", "prepare", "train", "export", "benchmark", "evaluate", "package", "track")


def ran_stages(log: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", log)


def test_full_repro_produces_zip_metrics_and_mlflow_run(tiny_repro):
    root = tiny_repro
    assert ran_stages((root / "first_repro.log").read_text()) == list(STAGES)

    evaluation = json.loads((root / "metrics/evaluate.json").read_text())
    assert evaluation["n_images"] == 2
    assert 0 < evaluation["si_rmse"] < 2 and evaluation["rmse"] > 0
    bench = json.loads((root / "metrics/benchmark.json").read_text())
    assert bench["median_ms"] > 0 and bench["init_ms"] > 0 and bench["peak_rss_mb"] > 0

    val_names = [line.split(",")[0] for line in (root / "data/prepared/split.csv").read_text().splitlines()[1:]
                 if line.split(",")[1] == "val"]
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

    db = sqlite3.connect(root / "mlflow.db")
    (n_runs,) = db.execute("select count(*) from runs").fetchone()
    assert n_runs == 1


def test_second_repro_reruns_only_track(tiny_repro):
    proc = run([dvc_bin(), "repro"], tiny_repro)
    assert ran_stages(proc.stdout) == ["track"]


def test_evaluate_param_change_reruns_evaluate_without_training(tiny_repro):
    root = tiny_repro
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["evaluate"]["panels"] = 2
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = run([dvc_bin(), "repro"], root)
    assert ran_stages(proc.stdout) == ["evaluate", "track"]
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
        assert ran_stages(proc.stdout) == ["benchmark"], proc.stdout
        assert "run-cache" not in proc.stdout
        assert json.loads((root / "metrics/benchmark.json").read_text())["runs"] == runs
