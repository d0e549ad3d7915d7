"""bench/ is a package run as `python -m bench.NAME` from the project root: every script
answers --help without TensorFlow, documents that command, and the train -> TFLite ->
score chain and what goes with it exist once, in bench/common.py."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from conftest import REPO

BENCH = REPO / "bench"
COMMON = "common"
HELP_TIMEOUT_S = 60  # an import without TensorFlow takes ~0.5 s; the 2 shared cores can be busy


def tree(name: str) -> ast.Module:
    return ast.parse((BENCH / f"{name}.py").read_text())


def top_level_functions(name: str) -> set[str]:
    return {node.name for node in tree(name).body if isinstance(node, ast.FunctionDef)}


def scripts() -> list[str]:
    """Every bench module with a main(): the runnable ones."""
    return sorted(
        p.stem
        for p in BENCH.glob("*.py")
        if p.stem not in ("__init__", COMMON) and "main" in top_level_functions(p.stem)
    )


def bench_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=HELP_TIMEOUT_S
    )


def test_every_bench_module_is_a_script_of_the_package():
    modules = sorted(p.stem for p in BENCH.glob("*.py") if p.stem not in ("__init__", COMMON))
    assert modules and modules == scripts(), "a bench module without main() is not runnable"


@pytest.mark.parametrize("name", scripts())
def test_help_runs_as_a_module_and_the_docstring_says_how(name):
    proc = bench_run("-m", f"bench.{name}", "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage: "), proc.stdout[:200]
    doc = ast.get_docstring(tree(name)) or ""
    assert f".venv/bin/python -m bench.{name}" in doc, f"bench/{name}.py: usage line not updated"


def test_importing_the_bench_modules_imports_no_tensorflow():
    names = [f"bench.{n}" for n in [COMMON, *scripts()]]
    code = (
        f"import importlib, sys\nfor n in {names!r}: importlib.import_module(n)\n"
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    proc = bench_run("-c", code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_no_sys_path_edits_in_bench():
    for path in BENCH.glob("*.py"):
        assert "sys.path" not in path.read_text(), f"{path.name}: run as a module, no sys.path"


def test_the_shared_chain_exists_once():
    shared = top_level_functions(COMMON)
    assert {"train_and_score", "parse_set", "print_table", "bench_params"} <= shared
    for name in scripts():
        copies = shared & top_level_functions(name)
        assert not copies, f"bench/{name}.py defines {sorted(copies)} again (bench.common has them)"


def test_parse_set_nests_keys_and_reads_yaml_values():
    from bench.common import parse_set

    assert parse_set(
        [
            "train.ema=0.99",
            "train.loss.distill_weight=1",
            "base.deterministic=false",
            "train.ema=0.9",
        ]
    ) == {"train": {"ema": 0.9, "loss": {"distill_weight": 1}}, "base": {"deterministic": False}}
    with pytest.raises(SystemExit, match="'train.ema': expected KEY=VALUE"):
        parse_set(["train.ema"])


def test_bench_params_later_overrides_win_and_sources_take_entries(tmp_path):
    from bench.common import bench_params, source_entries

    sources = source_entries({"a": tmp_path, "b": {"path": str(tmp_path), "weight": 2.0}})
    assert sources == {"a": {"path": str(tmp_path)}, "b": {"path": str(tmp_path), "weight": 2.0}}
    params = bench_params(
        {"train": {"epochs": 3, "steps_per_epoch": 7}},
        None,
        {"data": {"sources": sources, "val": "b"}, "train": {"epochs": 5}},
    )
    assert (params.train.epochs, params.train.steps_per_epoch) == (5, 7)
    assert params.data.val == "b" and params.data.sources["b"].weight == 2.0


def test_print_table_means_and_ranges_over_seeds(capsys):
    from bench.common import print_table

    def result(label, si, ratio, minutes):
        return {
            "label": label,
            "minutes": minutes,
            "sources": {
                "hololens": {
                    "n_images": 10,
                    "si_rmse": si,
                    "baseline_si_rmse": 0.5,
                    "ratio_to_constant": ratio,
                }
            },
        }

    print_table(
        [
            result("tum->hololens", 0.4, 0.8, 1.0),
            result("tum->hololens", 0.6, 1.2, 3.0),
            result("once", 0.25, 0.5, 2.0),
        ]
    )
    header, first, second = capsys.readouterr().out.splitlines()
    assert header.split()[:4] == ["run", "held-out", "scene", "images"]
    assert first.split() == [
        "tum->hololens",
        "hololens",
        "10",
        "2",
        "0.5000",
        "0.5000",
        "1.00",
        "0.80..1.20",
        "2.0",
    ]
    assert second.split() == ["once", "hololens", "10", "1", "0.2500", "0.5000", "0.50", "2.0"]
