"""pipeline.tracking.runs: one complete MLflow run from a project's outputs, absolute store
paths."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import free_port
from pipeline.core.cli import run_stage
from pipeline.core.config import load_params
from pipeline.tracking.runs import (
    CLAIM_STALE_S,
    LOGGING_SINCE_TAG,
    NOTE_TAG,
    PIPELINE_KEY_TAG,
    TOTAL_SECONDS_METRIC,
    VAL_DIGEST_TAG,
    VIEW_TAG,
    TrackingError,
    _live_run_with_key,
    collect_metrics,
    data_splits,
    log_pipeline_run,
    pipeline_key,
    stage_seconds,
    store_root,
    tracking_uri,
)
from stages import track

REPO = Path(__file__).resolve().parents[1]
DVC_ENV = ("MLFLOW_TRACKING_URI", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_ROOT")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in DVC_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


def make_project(root: Path, *, git: bool = False) -> Path:
    """A project folder holding what the pipeline stages leave behind (fabricated)."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    (root / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    metrics = root / "metrics"
    metrics.mkdir()
    (metrics / "evaluate.json").write_text(
        json.dumps(
            {
                "si_rmse": 0.31,
                "rmse": 1.25,
                "n_images": 10,
                "ok": True,
                "source": "synthetic",
                "per_image": [0.1, 0.2],
                "deltas": {"d1": 0.8},
            }
        )
    )
    (metrics / "benchmark.json").write_text(
        json.dumps({"median_ms": 42.5, "init_ms": 12, "threads": 2})
    )
    (metrics / "export.json").write_text(json.dumps({"size_mb": 1.4, "precision": "fp32"}))
    reports = root / "reports"
    (reports / "eval_panels").mkdir(parents=True)
    (reports / "history.csv").write_text(
        "epoch,learning_rate,loss,val_loss\n0,0.002,1.5,1.6\n1,0.0015,1.0,1.2\n2,0.001,0.8,1.1\n"
    )
    (reports / "eval_per_image.csv").write_text("name,si_rmse\na.png,0.3\n")
    for name in ("worst_0.png", "best_0.png"):
        (reports / "eval_panels" / name).write_bytes(b"\x89PNG\r\n\x1a\nfake")
    (root / "models").mkdir()
    (root / "models" / "model.tflite").write_bytes(b"TFL3" + bytes(1000))
    (root / "submission").mkdir()
    with zipfile.ZipFile(root / "submission" / "submission.zip", "w") as zf:
        zf.writestr("readme.txt", "runtime per image [s] : 0.0425\n")
    write_split(root, "data/scenes", {"a.png": "train", "b.png": "train", "c.png": "val"})
    if git:
        env = {
            **os.environ,
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t",
        }
        for cmd in (["init", "-q"], ["add", "params.yaml", "dvc.lock"], ["commit", "-qm", "init"]):
            subprocess.run(["git", *cmd], cwd=root, check=True, env=env, capture_output=True)
    return root


def write_split(root: Path, source: str, splits: dict[str, str], size: int = 10) -> None:
    """data/prepared/split.csv as the prepare stage writes it, with `size`-byte files."""
    lines = ["name,split,rgb,depth"]
    for name, split in splits.items():
        for kind in ("rgb", "depth"):
            (root / source / kind).mkdir(parents=True, exist_ok=True)
            (root / source / kind / name).write_bytes(bytes(size))
        lines.append(f"{name},{split},{source}/rgb/{name},{source}/depth/{name}")
    (root / "data" / "prepared").mkdir(parents=True, exist_ok=True)
    (root / "data" / "prepared" / "split.csv").write_text("\n".join(lines) + "\n")


def test_log_pipeline_run_logs_params_metrics_history_artifacts_tags(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    project = make_project(tmp_path / "proj", git=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the store must follow project_root, not the cwd
    monkeypatch.setenv("DVC_EXP_NAME", "fishy-dace")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "abc123")
    params = load_params(project / "params.yaml")

    run_id = log_pipeline_run(project_root=project, params=params, experiment_name="test-exp")

    uri = f"sqlite:///{project.resolve()}/mlflow.db"
    assert tracking_uri(project) == uri and (project / "mlflow.db").is_file()
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "fishy-dace"
    assert client.get_experiment(run.info.experiment_id).name == "test-exp"

    p = run.data.params
    assert p["train.arch"] == params.train.arch
    assert p["train.loss.silog_weight"] == str(params.train.loss.silog_weight)
    assert p["export.precision"] == params.export.precision
    assert p["base.seed"] == "42" and p["package.description"] == ""

    m = run.data.metrics
    assert m["evaluate.si_rmse"] == pytest.approx(0.31)
    assert m["evaluate.rmse"] == pytest.approx(1.25)
    assert m["evaluate.deltas.d1"] == pytest.approx(0.8)
    assert m["benchmark.median_ms"] == pytest.approx(42.5)
    assert m["export.size_mb"] == pytest.approx(1.4)
    # strings, bools and lists are not metrics
    assert not {"evaluate.ok", "evaluate.source", "evaluate.per_image", "export.precision"} & set(m)

    history = client.get_metric_history(run_id, "history.val_loss")
    assert [(h.step, h.value) for h in sorted(history, key=lambda h: h.step)] == [
        (0, 1.6),
        (1, 1.2),
        (2, 1.1),
    ]
    assert len(client.get_metric_history(run_id, "history.learning_rate")) == 3
    assert "history.epoch" not in m

    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True, check=True
    ).stdout.strip()
    t = run.data.tags
    assert t["git.commit"] == commit and t["mlflow.source.git.commit"] == commit
    assert t["git.dirty"] == "false"
    assert t["dvc.exp_name"] == "fishy-dace" and t["dvc.baseline_rev"] == "abc123"
    import hashlib

    assert t["dvc.lock_sha256"] == hashlib.sha256((project / "dvc.lock").read_bytes()).hexdigest()
    assert t["train.arch"] == params.train.arch and t["export.precision"] == params.export.precision

    assert t[PIPELINE_KEY_TAG] == pipeline_key(project, params)
    # the data it trained and was validated on, as dataset inputs (the UI's Dataset column)
    splits = {s.split: s for s in data_splits(project)}
    assert {s: (d.pairs, d.name) for s, d in splits.items()} == {
        "train": (2, "scenes/train"),
        "val": (1, "scenes/val"),
    }
    inputs = {
        (i.dataset.name, i.dataset.digest): (
            {t.key: t.value for t in i.tags},
            json.loads(i.dataset.source),
        )
        for i in run.inputs.dataset_inputs
    }
    assert inputs == {
        ("scenes", splits["train"].digest): (
            {"mlflow.data.context": "train"},
            {"uri": "data/scenes"},
        ),
        ("scenes", splits["val"].digest): ({"mlflow.data.context": "val"}, {"uri": "data/scenes"}),
    }
    assert t[VAL_DIGEST_TAG] == splits["val"].digest and t["data.val_name"] == "scenes/val"
    # the description a person reads first
    note = t[NOTE_TAG]
    assert note.startswith(
        f"**{params.train.arch}** at {params.train.height}x{params.train.width}, "
        f"{params.export.precision} TFLite"
    )
    assert "trained on scenes/train (2 pairs); validated on scenes/val (1 pair)" in note
    assert "si-RMSE 0.3100, latency 42.5 ms (median, 2 threads), score -" in note
    # the runs view the UI link opens shows si-RMSE and latency columns
    view = json.loads(client.get_experiment(run.info.experiment_id).tags[VIEW_TAG])
    assert {"metrics.`evaluate.si_rmse`", "metrics.`benchmark.median_ms`"} <= set(
        view["selectedColumns"]
    )

    def listing(path=None):
        return {a.path for a in client.list_artifacts(run_id, path)}

    assert listing() >= {"models", "submission", "reports", "metrics", "dvc.lock", "params.yaml"}
    assert listing("models") == {"models/model.tflite"}
    assert listing("submission") == {"submission/submission.zip"}
    assert listing("metrics") == {
        "metrics/evaluate.json",
        "metrics/benchmark.json",
        "metrics/export.json",
    }
    assert listing("reports") >= {
        "reports/history.csv",
        "reports/eval_per_image.csv",
        "reports/eval_panels",
    }
    assert listing("reports/eval_panels") == {
        "reports/eval_panels/worst_0.png",
        "reports/eval_panels/best_0.png",
    }
    # artifacts stored beside the store (absolute), not under the cwd
    assert run.info.artifact_uri.startswith((project.resolve() / "mlartifacts").as_uri())
    assert not any(elsewhere.iterdir())


def test_missing_optional_files_and_no_git_still_log(tmp_path):
    from mlflow import MlflowClient

    project = tmp_path / "bare"
    project.mkdir()
    shutil.copy(REPO / "params.yaml", project / "params.yaml")
    params = load_params(project / "params.yaml")
    run_id = log_pipeline_run(project_root=project, params=params, experiment_name="bare")
    run = MlflowClient(tracking_uri=tracking_uri(project)).get_run(run_id)
    assert run.data.metrics == {}
    assert (
        run.data.tags["git.commit"] == "unknown" and run.data.tags["dvc.lock_sha256"] == "missing"
    )
    assert "dvc.exp_name" not in run.data.tags
    # readable default name: arch-precision-timestamp
    assert run.info.run_name.startswith(f"{params.train.arch}-{params.export.precision}-")


def test_dvc_temp_copy_logs_into_the_real_root(tmp_path):
    from mlflow import MlflowClient

    root = tmp_path / "repo"
    copy = make_project(root / ".dvc" / "tmp" / "exps" / "standalone" / "tmpab12cd")
    assert store_root(copy) == root.resolve()
    assert tracking_uri(copy) == f"sqlite:///{root.resolve()}/mlflow.db"

    run_id = log_pipeline_run(
        project_root=copy, params=load_params(copy / "params.yaml"), experiment_name="exps"
    )
    assert (root / "mlflow.db").is_file() and not (copy / "mlflow.db").exists()
    run = MlflowClient(tracking_uri=tracking_uri(root)).get_run(run_id)
    assert run.info.artifact_uri.startswith((root.resolve() / "mlartifacts").as_uri())
    assert (root / "mlartifacts").is_dir() and not (copy / "mlartifacts").exists()


def test_tracking_uri_mapping(tmp_path, monkeypatch):
    root = tmp_path / "r"
    assert (
        tracking_uri(root / ".dvc" / "tmp" / "exps" / "tmpq1")
        == f"sqlite:///{root.resolve()}/mlflow.db"
    )
    assert store_root(root / "sub") == (root / "sub").resolve()  # only the exps temp dir maps
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://10.0.0.1:5000")
    assert tracking_uri(root) == "http://10.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///team.db")  # relative: anchored at the root
    assert tracking_uri(root / ".dvc/tmp/exps/x") == f"sqlite:///{root.resolve()}/team.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////abs/x.db")
    assert tracking_uri(root) == "sqlite:////abs/x.db"


def test_corrupt_metrics_json_is_a_one_line_error(tmp_path):
    from pipeline.core.files import DataError

    project = make_project(tmp_path / "p")
    (project / "metrics" / "export.json").write_text("{not json")
    with pytest.raises(DataError, match=r"export\.json: not valid JSON"):
        collect_metrics(project)


def test_unreachable_server_fails_fast_and_touches_nothing(tmp_path, monkeypatch):
    project = make_project(tmp_path / "p")
    before = sorted(p.relative_to(project) for p in project.rglob("*"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    start = time.monotonic()
    with pytest.raises(TrackingError, match="unreachable"):
        log_pipeline_run(
            project_root=project, params=load_params(project / "params.yaml"), experiment_name="x"
        )
    assert time.monotonic() - start < 10
    assert sorted(p.relative_to(project) for p in project.rglob("*")) == before


def test_track_stage_exit_1_with_one_line_error(tmp_path):
    project = make_project(tmp_path / "p")
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
    }
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "stages.track"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1  # the tracking store failed, the pipeline's outputs are fine
    assert proc.stderr.startswith("error: MLflow tracking server http://127.0.0.1:")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert time.monotonic() - start < 30  # includes importing mlflow


def test_data_digest_follows_the_files_not_their_folder(tmp_path):
    one, two, three = (make_project(tmp_path / name) for name in ("one", "two", "three"))
    write_split(two, "elsewhere/scenes", {"a.png": "train", "b.png": "train", "c.png": "val"})
    write_split(three, "data/scenes", {"a.png": "train", "b.png": "train", "c.png": "val"}, size=11)
    digests = [{s.split: s.digest for s in data_splits(p)} for p in (one, two, three)]
    assert digests[0] == digests[1]  # same names and files at another path
    assert digests[2]["val"] != digests[0]["val"]  # other bytes
    assert data_splits(tmp_path) == []  # no split.csv: nothing to log


def test_pipeline_key_ignores_the_track_stage_and_follows_outputs_and_params(tmp_path):
    project = make_project(tmp_path / "p")
    params = load_params(project / "params.yaml")
    lock = {
        "schema": "2.0",
        "stages": {"train": {"outs": [{"path": "models/model.keras", "md5": "aa"}]}},
    }

    def key_with(lock, params=params):
        (project / "dvc.lock").write_text(yaml.safe_dump(lock))
        return pipeline_key(project, params)

    key = key_with(lock)
    # DVC writes track's own entry after track ran: the next no-op repro must find the same key
    assert (
        key_with({**lock, "stages": {**lock["stages"], "track": {"cmd": "python -m stages.track"}}})
        == key
    )
    forced = dataclasses.replace(params, track=dataclasses.replace(params.track, force=True))
    assert key_with(lock, forced) == key
    assert (
        key_with({"stages": {"train": {"outs": [{"path": "models/model.keras", "md5": "bb"}]}}})
        != key
    )
    reseeded = dataclasses.replace(params, base=dataclasses.replace(params.base, seed=7))
    assert key_with(lock, reseeded) != key
    (project / "dvc.lock").unlink()
    assert pipeline_key(project, params) is None


def test_track_stage_logs_once_per_pipeline_state_unless_forced(tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient

    project = make_project(tmp_path / "p")
    monkeypatch.chdir(project)
    assert run_stage(track.main, []) == 0
    out = capsys.readouterr().out
    run_id = out.split("MLflow run ", 1)[1].split()[0]
    link = "http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning&viewStateShareKey=pipeline"
    assert f"Browse: make ui  -> {link}" in out

    assert run_stage(track.main, []) == 0  # nothing changed: no second run
    out = capsys.readouterr().out
    assert (
        out.startswith(f"already tracked: MLflow run {run_id} of experiment 'mai-depth'")
        and link in out
    )

    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["track"]["force"] = True
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    assert run_stage(track.main, []) == 0
    assert capsys.readouterr().out.startswith("MLflow run ")
    runs = MlflowClient(tracking_uri=tracking_uri(project)).search_runs(["1"])
    assert len(runs) == 2


def test_ui_link_names_the_experiment_in_the_store(tmp_path):
    project = make_project(tmp_path / "p")
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def ui_link():
        return subprocess.run(
            [sys.executable, "-m", "pipeline.tracking.runs", "ui-link", "--port", "5123"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout

    assert (
        ui_link() == "MLflow UI: http://127.0.0.1:5123  (no run of experiment 'mai-depth' yet: "
        "run `make repro` first)\n"
    )
    log_pipeline_run(
        project_root=project, params=load_params(project / "params.yaml"), experiment_name="other"
    )
    log_pipeline_run(
        project_root=project,
        params=load_params(project / "params.yaml"),
        experiment_name="mai-depth",
    )
    assert ui_link() == (
        "MLflow UI: http://127.0.0.1:5123/#/experiments/2/runs?workflowType=machine_learning"
        "&viewStateShareKey=pipeline\n"
    )


def test_runs_say_where_they_were_trained(tmp_path):
    """metrics/train.json's host facts become `host.*` tags (text a search or compare can
    filter on), op determinism a train tag, the encoder's start `encoder.*` tags; the numbers
    stay metrics."""
    from mlflow import MlflowClient

    project = make_project(tmp_path / "p")
    facts = {
        "cpu": "AMD EPYC 9454",
        "cpu_extensions": "AVX2, FMA, AVX-512",
        "onednn_max_cpu_isa": "AVX2",
        "vector_path": "AVX2 (capped)",
        "cores": 2,
        "machine": "x86_64",
        "tensorflow": "2.21.0",
        "keras": "3.15.1",
    }
    (project / "metrics" / "train.json").write_text(
        json.dumps(
            {
                "best_val_si_rmse": 0.25,
                "hardware": "CPU (AMD EPYC 9454), 2 cores",
                "host": facts,
                "op_determinism": True,
                "inter_op_threads": 1,
                "encoder": {
                    "weights": "../shared/encoders/mobilenet_v1_0.5_160_quant.tflite",
                    "file": "mobilenet_v1_0.5_160_quant.tflite",
                    "sha256": "3cc6d2ca" * 8,
                    "layers_loaded": 54,
                },
            }
        )
    )
    run_id = log_pipeline_run(
        project_root=project, params=load_params(project / "params.yaml"), experiment_name="hosts"
    )
    run = MlflowClient(tracking_uri=tracking_uri(project)).get_run(run_id)
    tags = {k: v for k, v in run.data.tags.items() if k.startswith(("host.", "train.op_"))}
    assert tags == {
        **{f"host.{k}": str(v) for k, v in facts.items()},
        "host.hardware": "CPU (AMD EPYC 9454), 2 cores",
        "train.op_determinism": "true",
    }
    assert run.data.metrics["train.host.cores"] == 2
    assert run.data.metrics["train.inter_op_threads"] == 1
    # and which weights started the encoder: a search on the file's digest finds the run
    assert {k: v for k, v in run.data.tags.items() if k.startswith("encoder.")} == {
        "encoder.weights": "../shared/encoders/mobilenet_v1_0.5_160_quant.tflite",
        "encoder.file": "mobilenet_v1_0.5_160_quant.tflite",
        "encoder.sha256": "3cc6d2ca" * 8,
        "encoder.layers_loaded": "54",
    }


# Each stage's own time (metrics JSON `stage_seconds`, index@NAME's through prepare.json),
# as a pipeline that ran long ago, or was restored from DVC's run-cache, leaves them.
STAGE_TIMES = {
    "index@synthetic": 4.0,
    "prepare": 1.5,
    "teacher": 0.5,
    "train": 100.0,
    "export": 10.0,
    "benchmark": 5.0,
    "evaluate": 3.0,
}


def write_stage_times(project: Path, times: dict[str, float]):
    """metrics/<stage>.json with `stage_seconds`, merged into what is there already."""
    for stage, seconds in times.items():
        if stage.startswith("index@"):
            continue
        path = project / "metrics" / f"{stage}.json"
        content = json.loads(path.read_text()) if path.is_file() else {}
        content["stage_seconds"] = seconds
        if stage == "prepare":
            content["sources"] = {
                name.split("@", 1)[1]: {"path": "data/synthetic", "index_seconds": times[name]}
                for name in times
                if name.startswith("index@")
            }
        path.write_text(json.dumps(content))


def test_a_run_lasts_as_long_as_its_result_took_to_make(tmp_path):
    """Issue #35: the run's start is set back by every stage's own time, so the MLflow UI's
    Duration is the pipeline's (not the track stage's 0.1 s), and pipeline.seconds says it."""
    from mlflow import MlflowClient

    project = make_project(tmp_path / "p")
    write_stage_times(project, STAGE_TIMES)
    made_in = sum(STAGE_TIMES.values())  # 124 s
    assert stage_seconds(project) == STAGE_TIMES
    before = time.time()
    run_id = log_pipeline_run(
        project_root=project, params=load_params(project / "params.yaml"), experiment_name="t"
    )
    after = time.time()
    run = MlflowClient(tracking_uri=tracking_uri(project)).get_run(run_id)
    start, end = run.info.start_time / 1000, run.info.end_time / 1000
    assert before - 0.01 <= end <= after + 0.01  # ended when track was done
    track_s = end - start - made_in  # what is left is the track stage's own time
    assert -0.01 <= track_s <= after - before + 0.01
    assert run.data.metrics[TOTAL_SECONDS_METRIC] == pytest.approx(end - start, abs=0.06)
    assert run.data.metrics["train.stage_seconds"] == 100.0
    # the moment logging began: what tells a running claimant from a dead one
    assert before * 1000 - 10 <= int(run.data.tags[LOGGING_SINCE_TAG]) <= after * 1000 + 10


def test_stage_seconds_counts_the_stages_of_this_result(tmp_path):
    project = make_project(tmp_path / "p")
    write_stage_times(project, STAGE_TIMES)
    (project / "metrics" / "other.json").write_text(json.dumps({"stage_seconds": "long"}))
    assert stage_seconds(project) == STAGE_TIMES  # numbers only
    # a train resumed after an interruption: its file has the last attempt's time, its
    # epochs' time (train_seconds) every attempt's
    train = project / "metrics" / "train.json"
    train.write_text(json.dumps({"stage_seconds": 30.0, "train_seconds": 250.0}))
    assert stage_seconds(project)["train"] == 250.0
    train.write_text(json.dumps({"stage_seconds": 30.0, "train_seconds": 25.0}))
    assert stage_seconds(project)["train"] == 30.0
    train.write_text(json.dumps({"train_seconds": 25.0}))  # written before stage times were
    assert "train" not in stage_seconds(project)
    assert stage_seconds(tmp_path / "nothing") == {}


def test_a_running_claimant_set_back_by_its_pipeline_time_is_still_alive(tmp_path):
    """The claim's loser waits for a RUNNING winner logged in the last CLAIM_STALE_S; the
    winner's start is hours back (its training), its logging began now."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("claims")
    now_ms = int(time.time() * 1000)
    winner = client.create_run(
        exp,
        start_time=now_ms - 3 * 3600 * 1000,
        tags={PIPELINE_KEY_TAG: "k", LOGGING_SINCE_TAG: str(now_ms)},
    ).info.run_id
    loser = client.create_run(exp, tags={PIPELINE_KEY_TAG: "k"}).info.run_id
    assert _live_run_with_key(client, exp, "k", other_than=loser) == winner
    dead = client.create_run(
        exp,
        start_time=now_ms - 3 * 3600 * 1000,
        tags={PIPELINE_KEY_TAG: "d", LOGGING_SINCE_TAG: str(now_ms - 2 * CLAIM_STALE_S * 1000)},
    ).info.run_id
    assert dead and _live_run_with_key(client, exp, "d", other_than=loser) is None


# Two identical experiments finishing at once: each process waits for the other at a
# barrier, so both get past the quick "already tracked?" look before either has logged.
TRACK_RACE = """
import json, sys, time
from pathlib import Path
import pipeline.model.archs  # registers train.arch's choices, as stages/ does
from pipeline.core.config import load_params
from pipeline.tracking.runs import track_pipeline
import mlflow
project, me, other = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
me.touch()
deadline = time.time() + 120
while not other.exists() and time.time() < deadline:
    time.sleep(0.01)
params = load_params(project / "params.yaml")
done = track_pipeline(project_root=project, params=params, experiment_name="race")
print("RESULT", json.dumps({"run_id": done.run_id, "logged": done.logged}))
"""


def race_track(projects: list[Path], env: dict, barrier: Path) -> list[dict]:
    """Run TRACK_RACE in one process per project, all at once; their results."""
    procs = []
    for i, project in enumerate(projects):
        me, other = barrier / f"ready_{i}", barrier / f"ready_{1 - i}"
        cmd = [sys.executable, "-c", TRACK_RACE, str(project), str(me), str(other)]
        procs.append(
            subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.split("RESULT", 1)[1]))
    return results


def test_two_identical_experiments_finishing_at_once_log_one_run(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "PYTHONPATH": str(REPO),
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    # the same dvc.lock, params and outputs
    projects = [make_project(tmp_path / name) for name in ("a", "b")]
    results = race_track(projects, env, tmp_path)
    assert sorted(r["logged"] for r in results) == [False, True]
    assert results[0]["run_id"] == results[1]["run_id"]
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("race")
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] == [results[0]["run_id"]]
    assert runs[0].info.status == "FINISHED"
    # the claim is a deleted experiment: out of the experiment list
    assert sorted(e.name for e in client.search_experiments()) == ["Default", "race"]
