"""`make exp PRESET=...`: a preset reaches DVC as `-S` arguments DVC accepts and applies.

Runs the real Makefile target in a tiny git + DVC copy of the project, limited to the
`synthesize` stage (EXP_ARGS; `check` runs before it; a few seconds): DVC parses every
argument and writes the preset into params.yaml before it runs anything, so the params.yaml
it leaves is the proof.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO, make_project, project_env, require_program, run
from pipeline.core.cli import run_stage
from pipeline.core.config import as_flat_dict, load_params
from stages import exp

# Spaces, a comma (a sweep to Hydra unless quoted), a colon and both quotes
DESCRIPTION = """it's a test, with spaces: and "quotes\""""


def test_make_exp_applies_a_preset_through_dvc(tmp_path):
    make = require_program("make", "apt-get install make")
    project = make_project(tmp_path / "project")
    # the preset's data where it says, ../shared/data/...: the check stage looks for it first
    (tmp_path / "shared").symlink_to(REPO.parent / "shared")
    shutil.copy(REPO / "Makefile", project / "Makefile")
    (project / ".venv").symlink_to(Path(sys.executable).parent.parent)  # this venv, installed
    preset = project / "presets/tum.yaml"
    quoted = DESCRIPTION.replace("'", "''")  # YAML's single-quoted style
    preset.write_text(preset.read_text() + f"package:\n  description: '{quoted}'\n")
    run(["git", "add", "Makefile", "presets/tum.yaml"], project)
    run(["git", "commit", "-qm", "make exp"], project)
    expected = load_params(project / "params.yaml", presets=[preset])
    assert expected.package.description == DESCRIPTION and list(expected.data.sources) == ["tum"]

    # INSTALLED= : the linked venv needs no pip run (the recipe itself is the Makefile's)
    cmd = [make, "exp", "PRESET=presets/tum.yaml", "EXP_ARGS=synthesize", "INSTALLED="]
    proc = subprocess.run(
        cmd, cwd=project, env=project_env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Ran experiment(s)" in proc.stdout + proc.stderr
    assert as_flat_dict(load_params(project / "params.yaml")) == as_flat_dict(expected)


def test_a_preset_or_override_that_does_not_load_stops_before_dvc(tmp_path, monkeypatch, capsys):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    preset = str(REPO / "presets/tum.yaml")
    assert run_stage(exp.main, [preset, "-n", "x", "-S", "train.epochs=0"]) == 2
    assert capsys.readouterr().err == (
        "error: params: train.epochs=0 is out of range (must be >= 1)\n"
    )
    assert run_stage(exp.main, ["missing.yaml"]) == 2
    assert capsys.readouterr().err == "error: missing.yaml: params file not found\n"


def test_print_shows_the_command_and_runs_nothing(tmp_path, monkeypatch, capsys):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    assert run_stage(exp.main, ["--print", str(REPO / "presets/tum.yaml"), "-n", "tum"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dvc exp run -S '~data.sources.synthetic' -S ")
    assert out.endswith(" -n tum\n")
    assert "-S +data.sources.tum.path=../shared/data/tum_fr1_xyz" in out


def test_queued_or_temp_a_path_outside_the_project_is_pinned_absolute(
    tmp_path, monkeypatch, capsys
):
    """A queued or --temp experiment runs in DVC's copy of the project, where ../x would point
    into .dvc/tmp/: a last -S gives it absolute. In the workspace it stays as written."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(REPO / "params.yaml", project / "params.yaml")
    monkeypatch.chdir(project)
    preset = str(REPO / "presets/tum.yaml")  # +data.sources.tum.path=../shared/data/tum_fr1_xyz
    tum = tmp_path / "shared/data/tum_fr1_xyz"
    for flag in ("--queue", "--temp"):
        assert run_stage(exp.main, ["--print", preset, flag, "-n", "tum"]) == 0
        out = capsys.readouterr().out
        assert "-S +data.sources.tum.path=../shared/data/tum_fr1_xyz " in out
        assert out.endswith(f" {flag} -n tum -S data.sources.tum.path={tum}\n"), out
    assert run_stage(exp.main, ["--print", preset, "-n", "tum"]) == 0
    assert "data.sources.tum.path=/" not in capsys.readouterr().out
