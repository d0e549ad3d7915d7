"""Every shell command the README shows is run by a test, or marked as needing what no test
has (`# needs a device`, `# needs internet` at the end of its line).

A command added to the README fails `test_every_readme_command_is_run_by_a_test_or_marked`
until COMMANDS below names the test that runs it (write one if none does). The commands no
other test ran are run here, for real: `make` targets through the project's Makefile in a
temporary project (its `-o .venv/.installed` keeps make from reinstalling the venv, and
BIN points it at this one), stages from the repo root.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import REPO, dvc_bin, free_port, make_project, project_env, require_program, serving

README = REPO / "README.md"
SHELL_LANGUAGES = ("bash", "sh", "shell", "console")
MARKS = ("needs a device", "needs internet")
VENV_BIN = Path(sys.executable).parent
MAKE_TIMEOUT_S = 600  # a make target that runs DVC stages; the 2 shared cores can be busy

# README command (as written, without its comment) -> the test that runs it.
COMMANDS = {
    "make repro": "tests/test_readme.py::test_make_repro_reruns_what_changed_with_the_venvs_python",
    "make test": "tests/test_readme.py::test_make_test_runs_pytest_and_names_each_skipped_test",
    "CI=true make test": "tests/test_readme.py::test_ci_make_test_fails_where_a_program_is_missing",
    "make exp PRESET=presets/tum.yaml": (
        "tests/test_make_exp.py::test_make_exp_applies_a_preset_through_dvc"
    ),
    "python -m stages.exp --print presets/tum.yaml": (
        "tests/test_sources.py::test_a_preset_replaces_the_sources_and_its_experiment_says_so"
    ),
    "ln -s ../../../shared/teachers/pydnet_matterport/pydnet_matterport.tflite models/teacher/": (
        "tests/test_teacher.py::test_readme_teacher_commands_label_every_source_with_the_shared_teacher"
    ),
    "make exp PRESET=presets/teacher.yaml": (
        "tests/test_teacher.py::test_readme_teacher_commands_label_every_source_with_the_shared_teacher"
    ),
    "make exp PRESET=presets/pretrained.yaml": (
        "tests/test_pretrained.py::test_readme_offline_commands_start_the_encoder_from_the_shared_files"
    ),
    (
        "dvc exp run -S train.encoder=mobilenet_v1 -S train.width_multiplier=0.5"
        " -S train.encoder_weights=../shared/encoders/mobilenet_v1_0.5_160_quant.tflite"
    ): (
        "tests/test_pretrained.py::test_readme_offline_commands_start_the_encoder_from_the_shared_files"
    ),
    "dvc exp show": "tests/test_readme.py::test_dvc_exp_show_lists_the_workspace_and_its_metrics",
    "make sweep DRY=1": (
        "tests/test_readme.py::test_make_sweep_dry_prints_the_grid_and_queues_nothing"
    ),
    "python -m stages.probe --arch fastdepth --precision int8": (
        "tests/test_readme.py::test_probe_times_fastdepth_in_int8_in_one_xnnpack_partition"
    ),
    (
        "python -m pipeline.results.submission validate submission/submission.zip"
        " --inputs path/to/rgb"
    ): "tests/test_submission.py::test_valid_zip_from_writer_is_accepted",
    "make ui": "tests/test_ui_browser.py::test_make_ui_link_opens_the_training_runs_with_si_rmse",
    "make compare": "tests/test_readme.py::test_make_compare_writes_the_table_of_the_stores_runs",
    "make factsheet": "tests/test_readme.py::test_make_factsheet_writes_the_newest_runs_sheet",
    "make tracking-server": (
        "tests/test_readme.py::test_make_tracking_server_takes_a_clients_dvc_exp_run"
    ),
    "MLFLOW_TRACKING_URI=http://SERVER:5000 dvc exp run": (
        "tests/test_readme.py::test_make_tracking_server_takes_a_clients_dvc_exp_run"
    ),
}


# ------------------------------------------------------------- the README's commands
@dataclass(frozen=True)
class Command:
    text: str
    mark: str | None  # one of MARKS, or None
    line: int


def code_blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """(language, line number of the opening fence, lines) of every fenced block."""
    blocks, open_at, language, lines = [], None, "", []
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            if open_at is None:
                open_at, language, lines = number, line.strip()[3:].strip(), []
            else:
                blocks.append((language, open_at, lines))
                open_at = None
        elif open_at is not None:
            lines.append(line)
    assert open_at is None, f"README.md:{open_at}: a code block is never closed"
    return blocks


def split_comment(line: str) -> tuple[str, str]:
    """(command, comment) at the first ` #` outside quotes."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1 :].strip()
    return line.rstrip(), ""


def shell_commands(text: str) -> list[Command]:
    """Every command line of the shell blocks (continuation lines joined)."""
    commands = []
    for language, start, lines in code_blocks(text):
        if language not in SHELL_LANGUAGES:
            continue
        pending, first = "", 0
        for offset, raw in enumerate(lines, 1):
            line = raw.strip()
            if not pending and (not line or line.startswith("#")):
                continue
            command, comment = split_comment(line)
            if command.endswith("\\"):
                pending, first = pending + command[:-1].rstrip() + " ", first or start + offset
                continue
            mark = comment if comment in MARKS else None
            commands.append(Command(pending + command, mark, first or start + offset))
            pending, first = "", 0
    return commands


def unaccounted(text: str) -> list[Command]:
    """The commands that no test runs and no mark excuses."""
    return [c for c in shell_commands(text) if c.mark is None and c.text not in COMMANDS]


def test_every_code_block_names_its_language():
    unnamed = [start for language, start, _ in code_blocks(README.read_text()) if not language]
    assert not unnamed, f"README.md lines {unnamed}: say ```bash, ```yaml or ```text"


def test_every_readme_command_is_run_by_a_test_or_marked():
    missing = unaccounted(README.read_text())
    assert not missing, (
        "README commands that no test runs; add each to COMMANDS in tests/test_readme.py with "
        "the test that runs it, or end its line with one of "
        + ", ".join(f"'# {m}'" for m in MARKS)
        + ":\n"
        + "\n".join(f"  README.md:{c.line}: {c.text}" for c in missing)
    )


def test_every_mapped_test_exists():
    absent = []
    for command, target in COMMANDS.items():
        path, name = target.split("::")
        source = (REPO / path).read_text() if (REPO / path).is_file() else ""
        names = {
            node.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef)
        }
        if name not in names:
            absent.append(f"{command!r} -> {target}")
    assert not absent, "mapped to a test that does not exist:\n" + "\n".join(absent)


def test_every_mapped_command_is_still_in_the_readme():
    shown = {c.text for c in shell_commands(README.read_text())}
    assert not set(COMMANDS) - shown, f"no longer in README.md: {sorted(set(COMMANDS) - shown)}"


def test_a_command_added_to_a_copy_of_the_readme_is_caught():
    text = README.read_text()
    assert unaccounted(text) == []
    added = text + (
        "\n```bash\ndvc exp run -S train.epochs=3   # three epochs\n"
        "ssh pi@raspberrypi.local uptime  # needs a device\n"
        "make \\\n  repro\n```\n"
    )
    missing = unaccounted(added)
    assert [c.text for c in missing] == ["dvc exp run -S train.epochs=3"]
    assert missing[0].line == len(text.splitlines()) + 3
    # the marked line is excused, the continued one is `make repro` again
    assert [c.mark for c in shell_commands(added)[-2:]] == ["needs a device", None]
    assert shell_commands(added)[-1].text == "make repro"


def test_every_relative_link_of_the_readme_and_docs_resolves():
    broken = []
    for page in [README, *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not re.match(r"[a-z]+://", target) and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken, broken


def test_a_quoted_hash_is_not_a_comment():
    assert split_comment("echo '# not a comment' x  # a comment") == (
        "echo '# not a comment' x",
        "a comment",
    )


# ------------------------------------------------------------- running them
def make_command(cwd: Path, *args: str) -> list[str]:
    """The project's Makefile run in `cwd` with this venv (`-o`: no pip install)."""
    make = require_program("make", "apt-get install -y make")
    return [
        make,
        "--no-print-directory",
        "-f",
        str(REPO / "Makefile"),
        "-C",
        str(cwd),
        "-o",
        ".venv/.installed",
        *args,
        f"BIN={VENV_BIN}",
    ]


def without_venv_on_path(env: dict[str, str]) -> dict[str, str]:
    """The Makefile must put its venv first itself."""
    entries = [p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p) != VENV_BIN]
    return {**env, "PATH": os.pathsep.join(entries)}


def ran_stages(log: str) -> list[str]:
    return re.findall(r"Running stage '([\w@-]+)'", log)


@pytest.fixture
def repro_copy(tiny_repro, tmp_path) -> Path:
    """A private copy of the session's repro'd tiny project, with a store of its own."""
    return Path(
        shutil.copytree(
            tiny_repro,
            tmp_path / "project",
            symlinks=True,
            ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"),
        )
    )


def test_make_repro_reruns_what_changed_with_the_venvs_python(repro_copy):
    params = yaml.safe_load((repro_copy / "params.yaml").read_text())
    params["evaluate"]["panels"] += 1
    (repro_copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = subprocess.run(
        make_command(repro_copy, "repro"),
        cwd=repro_copy,
        env=without_venv_on_path(project_env()),
        capture_output=True,
        text=True,
        timeout=MAKE_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stages = ran_stages(proc.stdout)
    assert "evaluate" in stages and "track" in stages and "train" not in stages, stages
    assert "MLflow run " in proc.stdout and (repro_copy / "mlflow.db").is_file()
    panels = len(list((repro_copy / "reports/eval_panels").glob("*.png")))
    assert panels == 2 * min(params["evaluate"]["panels"], 2)  # worst + best of 2 val images


STANDIN_SUITE = """
import importlib.util

# the project's own rule for tests that need a system program
spec = importlib.util.spec_from_file_location("project_conftest", {conftest!r})
project = importlib.util.module_from_spec(spec)
spec.loader.exec_module(project)


def test_passes():
    assert sum([1, 1]) == 2


def test_needs_a_system_program():
    project.require_program("mai-no-such-program", "apt-get install -y mai-no-such-program")
"""


def make_test(tmp_path: Path, **env_vars: str) -> subprocess.CompletedProcess:
    """`make test` on a stand-in suite of two tests, one needing a program no machine has
    (the project's own suite would run itself)."""
    tests = tmp_path / "standin" / "tests"
    tests.mkdir(parents=True, exist_ok=True)
    (tests / "test_standin.py").write_text(
        STANDIN_SUITE.format(conftest=str(REPO / "tests" / "conftest.py"))
    )
    env = {
        k: v
        for k, v in project_env().items()
        if k not in ("CI", "MAI_REQUIRE_SYSTEM_TESTS") and not k.startswith("PYTEST")
    }
    return subprocess.run(
        make_command(tests.parent, "test"),
        cwd=tests.parent,
        env={**env, **env_vars},
        capture_output=True,
        text=True,
        timeout=300,
    )


REASON = (
    "mai-no-such-program not installed (apt-get install -y mai-no-such-program); "
    "required when CI=true or MAI_REQUIRE_SYSTEM_TESTS=1"
)


def test_make_test_runs_pytest_and_names_each_skipped_test(tmp_path):
    proc = make_test(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"^SKIPPED \[1\] \S+:\d+: " + re.escape(REASON) + "$", proc.stdout, re.M)
    assert "1 passed, 1 skipped" in proc.stdout


def test_ci_make_test_fails_where_a_program_is_missing(tmp_path):
    proc = make_test(tmp_path, CI="true")
    assert proc.returncode != 0
    assert "1 failed, 1 passed" in proc.stdout and REASON in proc.stdout


def test_dvc_exp_show_lists_the_workspace_and_its_metrics(repro_copy):
    proc = subprocess.run(
        [dvc_bin(), "exp", "show"],
        cwd=repro_copy,
        env=project_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.split()[:2] == ["Experiment", "Created"])
    workspace = next(line for line in lines if line.split()[:1] == ["workspace"])
    best = json.loads((repro_copy / "metrics/train.json").read_text())["best_val_si_rmse"]
    assert "best_val_si_rmse" in header.split() and f"{best:.5g}" in workspace.split()
    assert "base.seed" in header.split()  # params too


def test_make_sweep_dry_prints_the_grid_and_queues_nothing(tmp_path):
    root = make_project(tmp_path / "project")
    shutil.copytree(REPO / "sweeps", root / "sweeps")
    proc = subprocess.run(
        make_command(root, "sweep", "DRY=1"),
        cwd=root,
        env=project_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    grid = yaml.safe_load((root / "sweeps/default.yaml").read_text())
    queued = [line for line in proc.stdout.splitlines() if line.startswith("dvc exp run --queue")]
    expected = 1
    for values in grid["grid"].values():
        expected *= len(values)
    assert len(queued) == expected == 24  # every combination of the default grid is valid
    assert proc.stdout.splitlines()[-1] == f"dvc queue start -j {grid['jobs']}"
    status = subprocess.run(
        [dvc_bin(), "queue", "status"],
        cwd=root,
        env=project_env(),
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "default-" not in status  # nothing was queued


def test_probe_times_fastdepth_in_int8_in_one_xnnpack_partition(monkeypatch, capsys):
    """From the repo root with its params.yaml; the Pi 4 estimate uses conftest's made-up
    calibration (ratios 4..5, median 4.5)."""
    import stages.probe
    from pipeline.core.cli import run_stage

    monkeypatch.chdir(REPO)
    assert run_stage(stages.probe.main, ["--arch", "fastdepth", "--precision", "int8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("arch "))
    row = next(line for line in lines if line.startswith("fastdepth "))
    cells = dict(zip(re.split(r"\s{2,}", header.strip()), row.split()))
    assert cells["precision"] == "int8" and cells["work size"] == "128x160"
    assert (cells["XNNPACK parts"], cells["not in XNNPACK"]) == ("1", "-")
    assert float(cells["est. Pi 4 ms"]) == pytest.approx(4.5 * float(cells["median ms"]), abs=0.75)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A project whose store holds two tracked runs of one data set, as `make compare` and
    `make factsheet` find it after two `dvc exp run`s; yields (project root, run ids)."""
    from test_tracking import make_project as tracked_project

    from pipeline.core.config import load_params
    from pipeline.tracking.runs import log_pipeline_run

    root = make_project(tmp_path_factory.mktemp("store") / "project", git=False)
    ids = []
    with pytest.MonkeyPatch.context() as patch:
        for name in ("MLFLOW_TRACKING_URI", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_ROOT"):
            patch.delenv(name, raising=False)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        for name, si_rmse, ms in (("slow-good", 0.25, 80.0), ("fast-rough", 0.35, 20.0)):
            project = tracked_project(root.parent / name)  # what the pipeline left there
            (project / "metrics/evaluate.json").write_text(json.dumps({"si_rmse": si_rmse}))
            (project / "metrics/benchmark.json").write_text(json.dumps({"median_ms": ms}))
            params = load_params(project / "params.yaml")
            ids.append(
                log_pipeline_run(
                    project_root=project, params=params, experiment_name="mai-depth", run_name=name
                )
            )
    return root, ids


def tracking_env() -> dict[str, str]:
    return {k: v for k, v in project_env().items() if not k.startswith("DVC_")}


def test_make_compare_writes_the_table_of_the_stores_runs(store):
    root, _ = store
    proc = subprocess.run(
        make_command(root, "compare"),
        cwd=root,
        env=tracking_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = (root / "reports/compare/runs.md").read_text()
    assert "slow-good" in table and "fast-rough" in table
    assert "Pareto front: " in proc.stdout and "1 data group(s)" in proc.stdout
    assert list((root / "reports/compare").glob("pareto-*.png"))


def test_make_factsheet_writes_the_newest_runs_sheet(store):
    root, ids = store
    proc = subprocess.run(
        make_command(root, "factsheet"),
        cwd=root,
        env=tracking_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"wrote reports/factsheet.md (MLflow run {ids[-1]})" in proc.stdout
    sheet = (root / "reports/factsheet.md").read_text()
    assert "mobile_unet" in sheet and "git checkout" in sheet


def get_json(url: str, **query) -> dict:
    with urllib.request.urlopen(f"{url}?{urllib.parse.urlencode(query)}", timeout=30) as resp:
        return json.loads(resp.read())


def test_make_tracking_server_takes_a_clients_dvc_exp_run(repro_copy, tmp_path):
    """The server from the Makefile's defaults (sqlite + a proxied artifact folder, in the
    folder it runs in), and a client's `dvc exp run` whose track stage logs to it."""
    server = tmp_path / "server"
    server.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = make_command(
        server, "tracking-server", "TRACKING_HOST=127.0.0.1", f"TRACKING_PORT={port}"
    )
    with serving(cmd, f"{url}/health", tmp_path / "server.log", cwd=server, env=tracking_env()):
        proc = subprocess.run(
            [dvc_bin(), "exp", "run"],
            cwd=repro_copy,
            env={**tracking_env(), "MLFLOW_TRACKING_URI": url},
            capture_output=True,
            text=True,
            timeout=MAKE_TIMEOUT_S,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "Running stage 'track'" in proc.stdout and f"at {url}" in proc.stdout
        experiment = get_json(
            f"{url}/api/2.0/mlflow/experiments/get-by-name", experiment_name="mai-depth"
        )["experiment"]
        # proxied: clients send artifacts to the server, which stores them in its folder
        assert experiment["artifact_location"].startswith("mlflow-artifacts:")
        request = urllib.request.Request(
            f"{url}/api/2.0/mlflow/runs/search",
            method="POST",
            data=json.dumps({"experiment_ids": [experiment["experiment_id"]]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            runs = json.loads(resp.read())["runs"]
        assert len(runs) == 1
        listed = get_json(
            f"{url}/api/2.0/mlflow/artifacts/list", run_id=runs[0]["info"]["run_id"], path="models"
        )
    assert "models/model.tflite" in {f["path"] for f in listed.get("files", [])}
    assert (server / "mlflow-server.db").is_file()
    assert list((server / "mlartifacts-server").rglob("model.tflite"))
    assert not (repro_copy / "mlflow.db").exists()  # nothing logged locally
