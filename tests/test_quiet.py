"""Quiet stages: the C++ runtimes' start-up lines are filtered out of every stage's stderr,
everything else passes in order, and MAI_VERBOSE=1 brings them back."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO
from pipeline.core.cli import RUNTIME_NOISE, VERBOSE_ENV

# As TensorFlow 2.21 and LiteRT 2.3 print them (copied from a stage's output before the filter).
NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796397398.671011    5634 port.cc:153] oneDNN custom operations are on. You may "
    "see slightly different numerical results due to floating-point round-off errors from "
    "different computation orders. To turn them off, set the environment variable "
    "`TF_ENABLE_ONEDNN_OPTS=0`.",
    "I0000 00:00:1796397398.715049    5634 cpu_feature_guard.cc:227] This TensorFlow binary is "
    "optimized to use available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 FMA, in other "
    "operations, rebuild TensorFlow with the appropriate compiler flags.",
    "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
]
# Lines a stage prints on purpose, some close to the noise: they must all pass.
KEPT = [
    "warning: data/x: skipped 1 depth maps without any valid pixel: a.png",
    "E0000 00:00:1796397398.1 5634 port.cc:99] an error from the same file is not start-up chatter",
    "INFO: Created TensorFlow Lite XNNPACK delegate for CPU. (and something else)",
]


def stage_stderr(tmp_path, body: str, **env) -> tuple[int, list[str]]:
    """(exit status, stderr lines) of a process whose stage `main` runs `body`, as
    `python -m stages.X` runs one: fd 2 is its real stderr, not pytest's capture."""
    script = tmp_path / "stage.py"
    script.write_text(f"""import os, subprocess, sys
sys.path.insert(0, {str(REPO)!r})
from pipeline.core.cli import run_stage

def child_writes(lines):
    # a child process writes to the fd 2 it inherited, as a C++ library or the timing
    # subprocess would, not through this process's sys.stderr
    code = "import os, sys; os.write(2, ''.join(a + chr(10) for a in sys.argv[1:]).encode())"
    subprocess.run([sys.executable, "-c", code, *lines], check=True)

def main(argv):
{textwrap.indent(textwrap.dedent(body), "    ")}

sys.exit(run_stage(main))
""")
    full_env = {
        k: v for k, v in os.environ.items() if k not in (VERBOSE_ENV, "TF_CPP_MIN_LOG_LEVEL")
    }
    full_env.update(env)
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=full_env, timeout=60
    )
    return proc.returncode, proc.stderr.splitlines()


def mixed_lines() -> list[str]:
    return [line for pair in zip(NOISE, KEPT + KEPT[:2]) for line in pair]


MIXED = f"""
print("from python before", file=sys.stderr)
child_writes({mixed_lines()!r})
print("from python after", file=sys.stderr)
print("level", os.environ["TF_CPP_MIN_LOG_LEVEL"], file=sys.stderr)
"""


def test_the_noise_is_dropped_and_everything_else_passes_in_order(tmp_path):
    code, err = stage_stderr(tmp_path, MIXED)
    assert code == 0
    assert err == [
        "from python before",
        *[line for line in mixed_lines() if line not in NOISE],
        "from python after",
        "level 2",
    ]


@pytest.mark.parametrize("value", ["1", "yes"])
def test_mai_verbose_passes_every_line(tmp_path, value):
    # TF_CPP_MIN_LOG_LEVEL=2 as the Makefile sets it: cpu_feature_guard's line is TensorFlow's
    # own to hide, so the switch lowers that too
    code, err = stage_stderr(tmp_path, MIXED, **{VERBOSE_ENV: value, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert code == 0
    assert err == ["from python before", *mixed_lines(), "from python after", "level 0"]


def test_the_noise_pattern_matches_whole_known_lines_only():
    assert all(RUNTIME_NOISE.match(line) for line in NOISE)
    assert not any(RUNTIME_NOISE.match(line) for line in KEPT)


def test_what_a_crashing_stage_wrote_last_still_gets_out(tmp_path):
    """A stage that dies hard (abort, segfault) loses no line it wrote before: the filter
    is a process of its own and drains the pipe after the stage is gone."""
    code, err = stage_stderr(
        tmp_path,
        f"""
        os.write(2, {NOISE[1]!r}.encode() + b"\\n")
        os.write(2, b"F0000 fatal: the last words before the abort\\n")
        os.abort()
    """,
    )
    assert code != 0
    assert err == ["F0000 fatal: the last words before the abort"]


def test_an_error_line_comes_last_after_everything_the_stage_printed(tmp_path):
    code, err = stage_stderr(
        tmp_path,
        f"""
        from pipeline.core.errors import DataError
        child_writes(["a line from a child", {NOISE[4]!r}])
        raise DataError("data/x: broken")
    """,
    )
    assert code == 2 and err == ["a line from a child", "error: data/x: broken"]


def test_no_stage_module_imports_tensorflow_before_run_stage():
    """run_stage sets TF_CPP_MIN_LOG_LEVEL and starts the filter; a stage module that imported
    TensorFlow at the top would print its start-up lines before either."""
    modules = sorted(p.stem for p in (REPO / "stages").glob("*.py") if p.stem != "__init__")
    code = (
        f"import sys\nfor m in {modules!r}: __import__('stages.' + m)\n"
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert out.strip() == "[]"


@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"),
    reason="oneDNN and its log line exist in TensorFlow's x86-64 builds only",
)
def test_a_stage_that_imports_tensorflow_prints_none_of_it_unless_verbose(tmp_path):
    """The export stage imports Keras (so TensorFlow) before it finds no model to export:
    the runtime's lines come, then the stage's one-line error. TF_ENABLE_ONEDNN_OPTS=1 makes
    oneDNN log on any x86-64 CPU, not only those with the vector units that turn it on."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    env = {k: v for k, v in os.environ.items() if k not in (VERBOSE_ENV, "TF_CPP_MIN_LOG_LEVEL")}
    env.update(PYTHONPATH=str(REPO), TF_ENABLE_ONEDNN_OPTS="1")
    error = "error: models/model.keras: model file not found (run the train stage first)"

    def export(**extra) -> list[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "stages.export"],
            cwd=tmp_path,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 2, proc.stderr
        return proc.stderr.splitlines()

    loud = export(**{VERBOSE_ENV: "1"})
    assert any("port.cc" in line and "oneDNN custom operations are on" in line for line in loud), (
        "the export stage no longer imports TensorFlow before this error: pick another stage",
        loud,
    )
    assert any("cpu_feature_guard.cc" in line for line in loud) and loud[-1] == error
    assert export() == [error]
