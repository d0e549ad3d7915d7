"""The MLflow UI as a user sees it: `make ui` over a store with two tracked runs, opened at
the link it prints, rendered by Debian's headless Chromium (nothing is downloaded).

Needs chromium and make (`apt-get install -y chromium chromium-driver make`); without them
the tests skip, except where system tests are required (CI=true or MAI_REQUIRE_SYSTEM_TESTS=1).
MAI_SCREENSHOT_DIR=docs (relative to the repo) also saves the screenshots the README shows.
"""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, free_port, require_program, serving, system_tests_required
from pipeline.core.cli import run_stage
from pipeline.core.config import load_params
from pipeline.tracking.runs import log_pipeline_run
from stages import compare

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
# Headless, and nothing but the page: no sandbox (root in CI), no network besides the page.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1600,900",
)
# Virtual time the React app gets to fetch the runs and render (about 4 s of real time).
RENDER_BUDGET_MS = 20000
RUNS = {"synthetic-run": ("synthetic", 0.3141), "tum-run": ("tum_fr1_xyz", 0.2718)}
# Each run's stages' own times (train, evaluate): the Duration column shows their sum and the
# track stage's few seconds, as MLflow words it (1.0h = 3600..3780 s, 15.0min = 897..903 s).
STAGE_TIMES = {"synthetic-run": (3000.0, 600.0), "tum-run": (300.0, 600.0)}
DURATIONS = {"synthetic-run": "1.0h", "tum-run": "15.0min"}


def chromium(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    exe = require_program(
        "chromium", "apt-get install -y chromium chromium-driver", CHROMIUM_CANDIDATES
    )
    return subprocess.run(
        [
            exe,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={RENDER_BUDGET_MS}",
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )


def page_text(dom: str) -> str:
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


def screenshot(url: str, tmp_path: Path, name: str) -> None:
    folder = os.environ.get("MAI_SCREENSHOT_DIR")
    if folder:
        chromium(
            url,
            tmp_path / f"profile-{name}",
            "--window-size=2000,850",
            f"--screenshot={REPO / folder / name}",
        )  # relative: to the repo


@pytest.fixture
def ui(tmp_path, monkeypatch):
    """`make ui` on a free port over <tmp>/store with two runs on different data; yields
    (the link it printed, the store folder)."""
    from test_tracking import make_project, write_split

    make = require_program("make", "apt-get install -y make")
    store = tmp_path / "store"
    store.mkdir()
    (store / "params.yaml").write_text((REPO / "params.yaml").read_text())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}/mlflow.db")
    for name, (source, si_rmse) in RUNS.items():
        project = make_project(tmp_path / name)
        write_split(project, f"data/{source}", {"a.png": "train", "b.png": "val"}, size=len(source))
        train_s, evaluate_s = STAGE_TIMES[name]
        (project / "metrics" / "evaluate.json").write_text(
            json.dumps({"si_rmse": si_rmse, "score": si_rmse / 10, "stage_seconds": evaluate_s})
        )
        (project / "metrics" / "train.json").write_text(json.dumps({"stage_seconds": train_s}))
        log_pipeline_run(
            project_root=project,
            params=load_params(project / "params.yaml"),
            experiment_name="mai-depth",
            run_name=name,
        )
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI")
    # The Makefile's own ui target, run in the store's folder with this venv (-o: no pip install).
    cmd = [
        make,
        "-s",
        "-f",
        str(REPO / "Makefile"),
        "-C",
        str(store),
        "-o",
        ".venv/.installed",
        "ui",
        f"UI_PORT={port}",
        f"BIN={Path(sys.executable).parent}",
    ]
    with serving(cmd, f"http://127.0.0.1:{port}/health", tmp_path / "ui.log", cwd=store, env=env):
        printed = (tmp_path / "ui.log").read_text()
        yield re.search(r"MLflow UI: (\S+)", printed).group(1), store


def test_make_ui_link_opens_the_training_runs_with_si_rmse(ui, tmp_path, monkeypatch):
    link, store = ui
    assert "/#/experiments/1/runs?workflowType=machine_learning" in link
    text = page_text(chromium(link, tmp_path / "profile", "--dump-dom").stdout)
    assert "synthetic-run" in text and "tum-run" in text
    # the training workflow, not MLflow 3's GenAI overview
    assert "Model registry" in text and "Sessions" not in text and "Detect issues" not in text
    # the pipeline's columns: si-RMSE values, and the data each run was validated on
    assert "evaluate.si_rmse" in text and "0.3141" in text and "0.2718" in text
    assert "synthetic (" in text and "tum_fr1_xyz (" in text
    # each run's Duration is its pipeline's, not the track stage's fraction of a second
    # (the grid may put the pinned run names apart from the other cells: the values alone)
    assert all(f" {duration} " in text for duration in DURATIONS.values()), text
    screenshot(link, tmp_path, "mlflow-runs.png")

    # make compare: one group per data set, each plot opens as an image in the run's artifacts
    monkeypatch.chdir(store)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}/mlflow.db")
    assert run_stage(compare.main, ["--out", str(tmp_path / "compare")]) == 0
    plot = next(
        (store / "mlartifacts" / "mai-depth").glob("*/artifacts/compare/pareto-tum_fr1_xyz-*.png")
    )
    run_id = plot.parents[2].name
    artifact = link.split("/runs?")[0] + f"/runs/{run_id}/artifacts/compare/{plot.name}"
    dom = chromium(artifact, tmp_path / "profile-artifact", "--dump-dom").stdout
    assert re.search(rf'<img alt="compare/{re.escape(plot.name)}" src="blob:', dom)
    screenshot(artifact, tmp_path, "mlflow-compare.png")


@pytest.mark.parametrize("required", [False, True])
def test_a_missing_system_program_skips_or_fails_when_required(required, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("MAI_REQUIRE_SYSTEM_TESTS", "1" if required else "0")
    assert system_tests_required() == required
    outcome = pytest.fail.Exception if required else pytest.skip.Exception
    with pytest.raises(
        outcome, match=r"^no-such-program not installed \(apt-get install x\); required when"
    ):
        require_program("no-such-program", "apt-get install x")
    monkeypatch.setenv("CI", "true")
    assert system_tests_required()
