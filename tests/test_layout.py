"""How the code is laid out: one stage shape, no import loops, complete DVC deps, one
source of defaults. These hold the house rules that a reader relies on."""

from __future__ import annotations

import ast
import dataclasses
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from pipeline import LAYERS
from pipeline.core.cli import run_stage
from pipeline.core.config import Params, as_flat_dict, flatten_overrides, load_params
from pipeline.core.errors import ConfigError, DataError, ExportError, ReportError, TimingError, TrackingError

PACKAGES = ("pipeline", "stages")
DOC_ONLY_PACKAGES = (Path("pipeline"), *(Path("pipeline") / group for group in LAYERS))


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages."""
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules `path` imports anywhere (top level or inside functions), plus the
    project scripts it runs by file name (`tflite_runner.py`, started in a subprocess)."""
    by_file = {p.name: name for name, p in modules.items() if name.startswith("pipeline.") and p.name != "__init__.py"}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:  # `import a.b.c`: the longest prefix that is a module
                parts = alias.name.split(".")
                found.update(next(([".".join(parts[:i])] for i in range(len(parts), 0, -1)
                                   if ".".join(parts[:i]) in modules), []))
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:  # `from pipeline import tflite` names a module, `from x import f` x
                sub = f"{node.module}.{alias.name}"
                found.update([sub] if sub in modules else [node.module] if node.module in modules else [])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in by_file:
            found.add(by_file[node.value])
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def group_of(module: str) -> str | None:
    """pipeline.GROUP.x -> GROUP; None for stages and the top-level package."""
    parts = module.split(".")
    return parts[1] if parts[0] == "pipeline" and len(parts) > 1 else None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports against the groups' order (pipeline.LAYERS): a group uses only itself and those before it."""
    rank = {group: i for i, group in enumerate(LAYERS)}
    return [f"{module} imports {dep} ({group_of(module)} may not use {group_of(dep)})"
            for module, deps in sorted(graph.items()) for dep in sorted(deps)
            if group_of(module) and group_of(dep) and rank[group_of(dep)] > rank[group_of(module)]]


def test_every_pipeline_module_lives_in_a_group():
    stray = [name for name, path in module_files().items()
             if name.startswith("pipeline.") and group_of(name) not in LAYERS]
    assert stray == [], f"modules outside pipeline.LAYERS' groups: {stray}"


def test_groups_import_only_themselves_and_groups_before_them():
    assert upward_imports(import_graph()) == []


def test_an_upward_import_is_caught():
    graph = import_graph()
    graph["pipeline.core.files"] = graph["pipeline.core.files"] | {"pipeline.results.submission"}
    assert upward_imports(graph) == [
        "pipeline.core.files imports pipeline.results.submission (core may not use results)"]


def test_group_packages_only_document():
    for package in DOC_ONLY_PACKAGES:
        body = ast.parse((REPO / package / "__init__.py").read_text()).body
        code = [n for n in body[1:] if not (isinstance(n, ast.Assign) and package == Path("pipeline"))]
        assert isinstance(body[0], ast.Expr) and not code, f"{package}/__init__.py: a docstring only"


def test_no_module_imports_another_that_imports_it_back():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()))


def test_the_cycle_finder_sees_a_loop_around_three_modules():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def stage_modules() -> list[Path]:
    return sorted(p for p in (REPO / "stages").glob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("path", stage_modules(), ids=lambda p: p.stem)
def test_every_stage_has_the_same_entry_shape(path):
    tree = ast.parse(path.read_text())
    mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    assert len(mains) == 1, f"{path.name}: one top-level main()"
    args = mains[0].args
    assert [a.arg for a in args.args] == ["argv"] and len(args.defaults) == 1, \
        f"{path.name}: main(argv: list[str] | None = None)"
    assert ast.unparse(args.defaults[0]) == "None"
    assert ast.unparse(mains[0].returns) == "None", f"{path.name}: main returns None; errors are raised"
    last = tree.body[-1]
    assert ast.unparse(last) == "if __name__ == '__main__':\n    sys.exit(run_stage(main))", path.name
    body = ast.unparse(mains[0])
    assert f'stage_parser({path.stem!r}, __doc__)' in body.replace('"', "'"), \
        f"{path.name}: the command line comes from stage_parser"


# ------------------------------------------------------------- run_stage: exit codes
@pytest.mark.parametrize("error, code", [
    (ConfigError("params: train.epochs=0 is out of range"), 2),
    (DataError("data/x/rgb/a.png: cannot decode image"), 2),
    (ReportError("no MLflow store at x.db"), 2),
    (ExportError("models/model.keras: TFLite conversion (int8) failed: boom", log="long\nlog"), 1),
    (TimingError("models/model.tflite: model file not found"), 1),
    (TrackingError("MLflow tracking server http://x is unreachable"), 1),
])
def test_run_stage_turns_errors_into_one_line_and_the_exit_code(error, code, capsys):
    def main(argv):
        raise error

    assert run_stage(main, []) == code
    assert capsys.readouterr().err == f"error: {error}\n"


def test_run_stage_returns_0_and_130(capsys):
    seen = []
    assert run_stage(seen.append, ["--x"]) == 0 and seen == [["--x"]]

    def interrupted(argv):
        raise KeyboardInterrupt

    assert run_stage(interrupted) == 130
    assert capsys.readouterr().err.startswith("error: interrupted;")


def test_other_exceptions_are_not_swallowed():
    def main(argv):
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        run_stage(main)


# ------------------------------------------------------------- dvc.yaml deps
def code_closure(module: str, graph: dict[str, set[str]]) -> set[str]:
    """`module` and every project module it imports, directly or not, with their packages."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += graph.get(name, ())
        parent = name.rsplit(".", 1)[0]
        if "." in name and parent not in PACKAGES:  # a subpackage's __init__ runs first
            todo.append(parent)
    return seen


def missing_and_stale_deps(dvc_yaml: dict) -> list[str]:
    graph, files = import_graph(), module_files()
    problems = []
    for stage, spec in dvc_yaml["stages"].items():
        spec = spec.get("do", spec)  # a foreach stage's template
        deps = [Path(d) for d in spec.get("deps", []) if "${" not in d]
        needed = {files[m].relative_to(REPO) for m in code_closure(f"stages.{stage}", graph)}
        # A package's __init__ that only documents (the top level, each group) is no code dep.
        needed = {p for p in needed if p.parts[-1] != "__init__.py" or p.parent not in DOC_ONLY_PACKAGES}

        def covered(path, deps=deps):
            return any(path == d or d in path.parents for d in deps)

        problems += [f"{stage}: imports {p} but dvc.yaml does not list it" for p in sorted(needed) if not covered(p)]
        problems += [f"{stage}: lists {d} but never imports it" for d in deps
                     if d.suffix == ".py" and d not in needed]
        problems += [f"{stage}: lists {d} but imports nothing under it" for d in deps
                     if d.parts[0] in PACKAGES and (REPO / d).is_dir() and not any(d in p.parents for p in needed)]
    return problems


def test_every_stage_lists_the_code_it_imports_in_dvc_yaml():
    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert missing_and_stale_deps(dvc_yaml) == []


def test_a_dep_removed_from_dvc_yaml_is_caught():
    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())
    dvc_yaml["stages"]["train"]["deps"].remove("pipeline/core/config.py")
    dvc_yaml["stages"]["evaluate"]["deps"].append("pipeline/model/training.py")
    assert missing_and_stale_deps(dvc_yaml) == [
        "train: imports pipeline/core/config.py but dvc.yaml does not list it",
        "evaluate: lists pipeline/model/training.py but never imports it",
    ]


# ------------------------------------------------------------- one source of defaults
def default_drift(params_file: Path, defaults: Params | None = None) -> list[str]:
    """Keys whose code default differs from the file, and keys the file leaves out."""
    code = as_flat_dict(defaults or Params())
    filed = as_flat_dict(load_params(params_file))
    listed = set(flatten_overrides(yaml.safe_load(params_file.read_text())))
    return ([f"{k}: code default {code[k]!r}, {params_file.name} {filed[k]!r}" for k in code if code[k] != filed[k]]
            + [f"{k}: not in {params_file.name}" for k in code if k not in listed])


def test_code_defaults_equal_params_yaml():
    assert default_drift(REPO / "params.yaml") == []


def test_a_default_changed_on_one_side_alone_is_caught(tmp_path):
    changed = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", changed)
    changed.write_text(changed.read_text().replace("epochs: 20", "epochs: 21"))
    assert default_drift(changed) == ["train.epochs: code default 20, params.yaml 21"]
    # the code side alone: a dataclass default that params.yaml does not follow
    code = Params(train=dataclasses.replace(Params().train, batch_size=9))
    assert default_drift(REPO / "params.yaml", code) == ["train.batch_size: code default 9, params.yaml 8"]


def test_a_key_missing_from_params_yaml_is_caught(tmp_path):
    lean = tmp_path / "params.yaml"
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    del raw["train"]["augment"]["hue"]
    lean.write_text(yaml.safe_dump(raw))
    assert default_drift(lean) == ["train.augment.hue: not in params.yaml"]


def test_precisions_and_archs_have_one_source():
    import pipeline.device.tflite
    from pipeline.core import config

    assert pipeline.device.tflite.PRECISIONS is config.PRECISIONS
    fields = {f.name: f for f in dataclasses.fields(config.ExportConfig)}
    assert fields["precision"].metadata["check"]["choices"] is config.PRECISIONS
    for path in (REPO / "pipeline").rglob("*.py"):
        assert '"dynamic_int8", "int8")' not in path.read_text() or path.name == "config.py", path
    assert '"dynamic_int8", "int8")' not in (REPO / "stages" / "probe.py").read_text()
    assert sys.modules["pipeline.core.config"].ARCHS == tuple(config.ARCH_STRIDES)
