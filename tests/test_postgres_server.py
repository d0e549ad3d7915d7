"""The team tracking server on a real database: `mlflow server` on PostgreSQL (Debian's
package, a private cluster started and stopped here) with artifacts proxied by the server.
Two project copies, two "machines" with their own CPUs, log to it over HTTP only; compare
and the fact sheet read it back; two identical experiments that finish at once log one run."""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from test_tracking import make_project, race_track

from conftest import SERVER_START_TIMEOUT_S, free_port, require_program, serving

REPO = Path(__file__).resolve().parents[1]
PG_USER = "mlflow"
# Debian keeps the server programs out of PATH, one folder per major version.
PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
# PostgreSQL refuses to run as root; Debian's package creates this account for it.
PG_SYSTEM_ACCOUNT = "postgres"
VERSIONS = {
    "machine": "x86_64",
    "tensorflow": "2.21.0",
    "keras": "3.15.1",
    "onednn_max_cpu_isa": "none",
}
HOSTS = {  # project -> where its model was trained (metrics/train.json `host`)
    "machine-a": {
        "cpu": "AMD EPYC 9454",
        "cpu_extensions": "AVX2, FMA, AVX-512",
        "vector_path": "AVX-512",
        "cores": 2,
        **VERSIONS,
    },
    "machine-b": {
        "cpu": "Intel(R) Xeon(R) CPU E5-2680 v3",
        "cpu_extensions": "AVX2, FMA",
        "vector_path": "AVX2",
        "cores": 8,
        **VERSIONS,
    },
}


def pg_program(name: str) -> str:
    # the newest major version first
    candidates = tuple(sorted(glob.glob(f"{PG_BIN_GLOB}/{name}"), reverse=True))
    return require_program(name, "apt-get install postgresql", candidates)


def as_database_user() -> dict:
    """subprocess keywords that run PostgreSQL's programs as an unprivileged account."""
    if os.geteuid() != 0:
        return {}
    try:
        pwd.getpwnam(PG_SYSTEM_ACCOUNT)
    except KeyError:
        pytest.fail(
            f"running as root and no {PG_SYSTEM_ACCOUNT!r} account to run PostgreSQL as",
            pytrace=False,
        )
    return {"user": PG_SYSTEM_ACCOUNT}


def wait_for_port(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"postgres exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            pytest.fail(f"postgres not listening on {port} after {SERVER_START_TIMEOUT_S} s")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def postgres():
    """A private PostgreSQL cluster on a free loopback port, removed afterwards; its URI."""
    initdb, postgres_bin = pg_program("initdb"), pg_program("postgres")
    sudo = as_database_user()
    # Not under pytest's tmp folder: its root-only parents would lock the database account out.
    root = Path(tempfile.mkdtemp(prefix="mai-postgres-"))
    if sudo:
        shutil.chown(root, PG_SYSTEM_ACCOUNT)
    data, log = root / "data", root / "postgres.log"
    subprocess.run(
        [initdb, "-D", str(data), "-U", PG_USER, "--auth=trust", "-E", "UTF8", "--no-locale"],
        check=True,
        capture_output=True,
        **sudo,
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            postgres_bin,
            "-D",
            str(data),
            "-p",
            str(port),
            "-k",
            str(root),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
        ],
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        **sudo,
    )
    try:
        wait_for_port(port, proc, log)
        subprocess.run(
            [pg_program("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, "mlflow"],
            check=True,
            capture_output=True,
        )
        yield f"postgresql://{PG_USER}@127.0.0.1:{port}/mlflow"
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # PostgreSQL's fast shutdown
        proc.wait(timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def team_server(postgres, tmp_path_factory):
    """`mlflow server` on that database, proxying artifacts into its own folder (as `make
    tracking-server TRACKING_DB=postgresql://...`); yields (URL, artifact folder)."""
    workdir = tmp_path_factory.mktemp("team-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--backend-store-uri",
        postgres,
        "--artifacts-destination",
        str(workdir / "artifacts"),
        "--workers",
        "2",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with serving(cmd, url + "/health", workdir / "server.log", cwd=workdir, env=env):
        yield url, workdir / "artifacts"


def client_env(url: str) -> dict:
    """A machine that knows the server's URL and nothing else (no database, no shared folder)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MLFLOW_TRACKING_URI": url,
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    for name in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        env.pop(name, None)
    return env


def stage(name: str, cwd: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", f"stages.{name}", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_two_machines_log_to_the_postgres_server_and_read_it_back(team_server, tmp_path):
    from mlflow import MlflowClient

    url, artifacts = team_server
    env = client_env(url)
    run_ids = {}
    for i, (name, host) in enumerate(HOSTS.items()):
        project = make_project(tmp_path / name)
        (project / "dvc.lock").write_text(f"schema: '2.0'\nstages: {{train: {{cmd: run {i}}}}}\n")
        (project / "metrics" / "train.json").write_text(
            json.dumps(
                {
                    "best_val_si_rmse": 0.25 + i / 100,
                    "params": 1000,
                    "batch_size": 8,
                    "replicas": 1,
                    "hardware": f"CPU ({host['cpu']}), {host['cores']} cores",
                    "host": host,
                    "op_determinism": True,
                }
            )
        )
        out = stage("track", project, env, "--experiment", "team", "--run-name", name).stdout
        run_ids[name] = out.split("MLflow run ", 1)[1].split()[0]
        assert not (project / "mlflow.db").exists() and not (project / "mlartifacts").exists()

    client = MlflowClient(tracking_uri=url)
    exp = client.get_experiment_by_name("team")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert {name: r.info.run_id for name, r in runs.items()} == run_ids
    for name, host in HOSTS.items():  # a search tells the two machines apart
        found = client.search_runs(
            [exp.experiment_id], filter_string=f"tags.`host.cpu` = '{host['cpu']}'"
        )
        assert [r.info.run_name for r in found] == [name]
        assert runs[name].data.tags["host.vector_path"] == host["vector_path"]
    # the artifacts went through the server into its own folder
    assert len(list(artifacts.rglob("model.tflite"))) == 2

    reader = tmp_path / "reader"  # a third machine: compare and the fact sheet over HTTP
    reader.mkdir()
    shutil.copy(REPO / "params.yaml", reader / "params.yaml")
    stage("compare", reader, env, "--experiment", "team", "--out", "cmp")
    table = pd.read_csv(reader / "cmp" / "runs.csv").set_index("run")
    for column in ("cpu", "vector_path"):
        assert table.loc[list(HOSTS), column].to_dict() == {n: h[column] for n, h in HOSTS.items()}
    sheet = stage(
        "factsheet",
        reader,
        env,
        "--experiment",
        "team",
        "--run",
        run_ids["machine-b"],
        "--out",
        "sheet.md",
    )
    text = (reader / "sheet.md").read_text()
    assert text in sheet.stdout and text.startswith("# Fact sheet: machine-b")
    assert "Trained on Intel(R) Xeon(R) CPU E5-2680 v3 (AVX2, FMA); TensorFlow 2.21.0" in text


def test_identical_experiments_finishing_at_once_log_one_run_on_the_server(team_server, tmp_path):
    from mlflow import MlflowClient

    url, _ = team_server
    # the same dvc.lock, params and outputs
    projects = [make_project(tmp_path / name) for name in ("a", "b")]
    results = race_track(projects, client_env(url), tmp_path)
    assert sorted(r["logged"] for r in results) == [False, True]
    assert results[0]["run_id"] == results[1]["run_id"]
    client = MlflowClient(tracking_uri=url)
    runs = client.search_runs([client.get_experiment_by_name("race").experiment_id])
    assert [r.info.run_id for r in runs] == [results[0]["run_id"]]
    assert runs[0].info.status == "FINISHED"
