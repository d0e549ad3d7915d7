"""The challenge fact sheet, written from a tracked MLflow run."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from pipeline.core.cli import run_stage
from pipeline.core.config import SourceConfig, as_flat_dict, load_params
from pipeline.core.errors import ReportError
from pipeline.tracking.factsheet import load_run, made_on, reproduce_overrides, run_params
from pipeline.tracking.runs import log_pipeline_run
from stages import factsheet

REPO = Path(__file__).resolve().parents[1]
TUM = "../shared/data/tum_fr1_xyz"


@pytest.fixture
def tracked_run(tmp_path, monkeypatch):
    """One run logged from a project holding the repo's real metrics, trained on TUM in int8."""
    for name in ("MLFLOW_TRACKING_URI", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(name, raising=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    proj = tmp_path / "proj"
    shutil.copytree(REPO / "metrics", proj / "metrics")
    train = json.loads((proj / "metrics" / "train.json").read_text())
    train.update(
        train_seconds=123.4,
        hardware="CPU (Test CPU), 2 cores",
        op_determinism=True,
        host={
            "cpu": "Test CPU",
            "cpu_extensions": "AVX2, FMA, AVX-512",
            "onednn_max_cpu_isa": "AVX2",
            "cores": 2,
            "machine": "x86_64",
            "tensorflow": "2.21.0",
            "keras": "3.15.1",
        },
    )
    (proj / "metrics" / "train.json").write_text(json.dumps(train))
    (proj / "dvc.lock").write_text("schema: '2.0'\n")
    base = load_params(REPO / "params.yaml")
    params = dataclasses.replace(
        base,
        data=dataclasses.replace(base.data, sources={"tum": SourceConfig(path=TUM)}),
        export=dataclasses.replace(base.export, precision="int8"),
    )
    run_id = log_pipeline_run(
        project_root=proj, params=params, experiment_name="facts", run_name="tum-int8"
    )
    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    return run_id, params, uri


def test_factsheet_describes_the_run_from_its_tracked_records(tracked_run, capsys):
    run_id, params, _ = tracked_run
    assert run_stage(factsheet.main, ["--experiment", "facts", "--out", "sheet.md"]) == 0
    text = Path("sheet.md").read_text()
    assert capsys.readouterr().out.startswith("# Fact sheet: tum-int8")
    metrics = {
        s: json.loads((REPO / "metrics" / f"{s}.json").read_text())
        for s in ("export", "benchmark", "evaluate")
    }
    train = json.loads((REPO / "metrics" / "train.json").read_text())
    for needle in (
        "Architecture: mobile_unet: mobilenet_v2 encoder x0.35 (from scratch) + light U-Net "
        "decoder",
        f"Parameters: {train['params']:,}; {metrics['export']['macs'] / 1e9:.3f} GMACs",
        "Working resolution 128x160 resized inside a 480x640 TFLite graph (bilinear resize in; sep",
        f"Extra data: 1 (source tum ({TUM}))",
        "silog x1.0 (lambda 0.85), grad x0.5",
        "horizontal flip, crop-and-resize (p 0.5, scale >= 0.7), colour jitter (brightness 0.2",
        "Training time 123 s on CPU (Test CPU), 2 cores",
        "Trained on Test CPU (AVX2, FMA, AVX-512), oneDNN capped at AVX2; TensorFlow 2.21.0, "
        "Keras 3.15.1; op determinism on",
        f"Sources: tum `{TUM}` (weight 1.0)",
        "TFLite int8",
        f"median {metrics['benchmark']['median_ms']:.2f} ms",
        f"Timed on {metrics['benchmark']['device']} with {metrics['benchmark']['threads']} "
        "thread(s) (asked for 4",
        f"si-RMSE {metrics['evaluate']['si_rmse']:.4f} "
        f"({metrics['evaluate']['si_rmse'] / metrics['evaluate']['baseline_si_rmse']:.2f}x the "
        "constant",
        f"Challenge score {metrics['evaluate']['score']:.4g}",
        f"MLflow run `{run_id}`",
        "dvc exp run -S '~data.sources.synthetic' -S export.precision=int8 -S "
        f"+data.sources.tum.path={TUM}",
    ):
        assert needle in text, needle


def test_the_reproduce_line_gives_back_the_runs_params(tracked_run, tmp_path):
    from dvc.utils.hydra import apply_overrides
    from mlflow import MlflowClient

    run_id, params, uri = tracked_run
    logged = MlflowClient(tracking_uri=uri).get_run(run_id).data.params
    assert run_params(logged) == params  # typed again from MLflow's strings
    overrides = reproduce_overrides(run_params(logged))
    assert overrides == [
        "~data.sources.synthetic",
        "export.precision=int8",
        f"+data.sources.tum.path={TUM}",
        "+data.sources.tum.weight=1.0",
    ]
    shutil.copy(REPO / "params.yaml", tmp_path / "applied.yaml")
    apply_overrides(tmp_path / "applied.yaml", overrides)  # `dvc exp run -S ...` on params.yaml
    assert as_flat_dict(load_params(tmp_path / "applied.yaml")) == as_flat_dict(params)


def test_a_runs_own_auto_sizes_stay_auto_in_the_reproduce_line():
    for overrides, expected in (
        ({"arch": "mai_baseline_unet"}, ["train.arch=mai_baseline_unet"]),
        (
            {"arch": "mai_baseline_unet", "height": 256},
            ["train.arch=mai_baseline_unet", "train.height=256"],
        ),
    ):
        params = load_params(REPO / "params.yaml", overrides={"train": overrides})
        assert reproduce_overrides(params) == expected


def test_params_of_a_run_that_no_longer_load_are_one_line():
    with pytest.raises(ReportError, match=r"^the run's params do not load with this code \("):
        run_params({"train.arch": "gone_net"})
    assert (
        run_params({"train.epochs": "3", "old.key": "x"}).train.epochs == 3
    )  # unknown keys left out


def test_factsheet_without_runs_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/empty.db")
    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    assert run_stage(factsheet.main, []) == 2
    err = capsys.readouterr().err
    assert err == f"error: no MLflow store at {tmp_path}/empty.db; run the pipeline first\n"
    assert not (tmp_path / "reports").exists() and not (tmp_path / "empty.db").exists()


def test_the_training_machine_line_names_the_vector_path_settings():
    facts = {
        "cpu": "AMD EPYC",
        "cpu_extensions": "AVX2, AVX-512",
        "tensorflow": "2.21.0",
        "keras": "3.15.1",
        "onednn_max_cpu_isa": "AVX2",
        "tf_enable_onednn_opts": "0",
    }
    assert made_on({"host": facts, "op_determinism": False}) == (
        "AMD EPYC (AVX2, AVX-512), oneDNN off (Eigen kernels); TensorFlow 2.21.0, Keras 3.15.1; "
        "op determinism off"
    )
    facts.update(tf_enable_onednn_opts="none", onednn_max_cpu_isa="none")
    assert made_on({"host": facts}) == "AMD EPYC (AVX2, AVX-512); TensorFlow 2.21.0, Keras 3.15.1"
    # which EPYC: two of that name trained different models on the AVX2 path (issue #35)
    facts.update(cpu_id="AuthenticAMD family 23 model 49 stepping 0")
    assert made_on({"host": facts}) == (
        "AMD EPYC, AuthenticAMD family 23 model 49 stepping 0 (AVX2, AVX-512); "
        "TensorFlow 2.21.0, Keras 3.15.1"
    )
    assert made_on({"hardware": "CPU (x), 2 cores"}).startswith("not recorded")


def test_the_newest_run_is_the_last_logged_whatever_its_pipeline_took(tmp_path, monkeypatch):
    """A run starts its pipeline's time before track logged it: one logged later can start
    earlier (an hour of training), and it is still the newest."""
    for name in ("MLFLOW_TRACKING_URI", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(name, raising=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    params = load_params(REPO / "params.yaml")
    for name, train_s in (("quick", 60.0), ("long", 3600.0)):
        proj = tmp_path / name
        (proj / "metrics").mkdir(parents=True)
        (proj / "metrics" / "train.json").write_text(json.dumps({"stage_seconds": train_s}))
        log_pipeline_run(project_root=proj, params=params, experiment_name="order", run_name=name)
    run, _ = load_run(tracking_uri=uri, experiment="order")
    assert run.info.run_name == "long"
