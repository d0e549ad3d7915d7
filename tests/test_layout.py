"""How the code is laid out: one stage shape, no import loops, complete DVC deps, one
source of defaults. These hold the house rules that a reader relies on."""

from __future__ import annotations

import ast
import dataclasses
import re
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from pipeline import LAYERS
from pipeline.core.cli import run_stage
from pipeline.core.config import (
    AUTO,
    ExportConfig,
    Params,
    TeacherConfig,
    TrainConfig,
    as_flat_dict,
    load_params,
)
from pipeline.core.errors import (
    ConfigError,
    DataError,
    ExportError,
    ReportError,
    TimingError,
    TrackingError,
)
from pipeline.core.overrides import flatten
from pipeline.model import archs

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
    by_file = {
        p.name: name
        for name, p in modules.items()
        if name.startswith("pipeline.") and p.name != "__init__.py"
    }
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:  # `import a.b.c`: the longest prefix that is a module
                parts = alias.name.split(".")
                found.update(
                    next(
                        (
                            [".".join(parts[:i])]
                            for i in range(len(parts), 0, -1)
                            if ".".join(parts[:i]) in modules
                        ),
                        [],
                    )
                )
        elif isinstance(node, ast.ImportFrom) and node.module:
            for (
                alias
            ) in node.names:  # `from pipeline import tflite` names a module, `from x import f` x
                sub = f"{node.module}.{alias.name}"
                found.update(
                    [sub] if sub in modules else [node.module] if node.module in modules else []
                )
        elif (
            isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in by_file
        ):
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
                return path[path.index(nxt) :] + [nxt]
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
    """Imports against the groups' order (pipeline.LAYERS).

    A group uses only itself and those before it."""
    rank = {group: i for i, group in enumerate(LAYERS)}
    return [
        f"{module} imports {dep} ({group_of(module)} may not use {group_of(dep)})"
        for module, deps in sorted(graph.items())
        for dep in sorted(deps)
        if group_of(module) and group_of(dep) and rank[group_of(dep)] > rank[group_of(module)]
    ]


def test_every_pipeline_module_lives_in_a_group():
    stray = [
        name
        for name, path in module_files().items()
        if name.startswith("pipeline.") and group_of(name) not in LAYERS
    ]
    assert stray == [], f"modules outside pipeline.LAYERS' groups: {stray}"


def test_groups_import_only_themselves_and_groups_before_them():
    assert upward_imports(import_graph()) == []


def test_an_upward_import_is_caught():
    graph = import_graph()
    graph["pipeline.core.files"] = graph["pipeline.core.files"] | {"pipeline.results.submission"}
    assert upward_imports(graph) == [
        "pipeline.core.files imports pipeline.results.submission (core may not use results)"
    ]


def test_group_packages_only_document():
    for package in DOC_ONLY_PACKAGES:
        body = ast.parse((REPO / package / "__init__.py").read_text()).body
        code = [
            n for n in body[1:] if not (isinstance(n, ast.Assign) and package == Path("pipeline"))
        ]
        assert isinstance(body[0], ast.Expr) and not code, (
            f"{package}/__init__.py: a docstring only"
        )


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
    assert [a.arg for a in args.args] == ["argv"] and len(args.defaults) == 1, (
        f"{path.name}: main(argv: list[str] | None = None)"
    )
    assert ast.unparse(args.defaults[0]) == "None"
    assert ast.unparse(mains[0].returns) == "None", (
        f"{path.name}: main returns None; errors are raised"
    )
    last = tree.body[-1]
    assert ast.unparse(last) == "if __name__ == '__main__':\n    sys.exit(run_stage(main))", (
        path.name
    )
    body = ast.unparse(mains[0])
    assert f"stage_parser({path.stem!r}, __doc__)" in body.replace('"', "'"), (
        f"{path.name}: the command line comes from stage_parser"
    )


# ------------------------------------------------------------- run_stage: exit codes
@pytest.mark.parametrize(
    "error, code",
    [
        (ConfigError("params: train.epochs=0 is out of range"), 2),
        (DataError("data/x/rgb/a.png: cannot decode image"), 2),
        (ReportError("no MLflow store at x.db"), 2),
        (
            ExportError(
                "models/model.keras: TFLite conversion (int8) failed: boom", log="long\nlog"
            ),
            1,
        ),
        (TimingError("models/model.tflite: model file not found"), 1),
        (TrackingError("MLflow tracking server http://x is unreachable"), 1),
    ],
)
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
        if "." in name:  # a package's __init__ runs first (stages/ registers the architectures)
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
        needed = {
            p for p in needed if p.parts[-1] != "__init__.py" or p.parent not in DOC_ONLY_PACKAGES
        }

        def covered(path, deps=deps):
            return any(path == d or d in path.parents for d in deps)

        problems += [
            f"{stage}: imports {p} but dvc.yaml does not list it"
            for p in sorted(needed)
            if not covered(p)
        ]
        problems += [
            f"{stage}: lists {d} but never imports it"
            for d in deps
            if d.suffix == ".py" and d not in needed
        ]
        problems += [
            f"{stage}: lists {d} but imports nothing under it"
            for d in deps
            if d.parts[0] in PACKAGES
            and (REPO / d).is_dir()
            and not any(d in p.parents for p in needed)
        ]
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


# ------------------------------------------------------------- dvc.yaml params
# The params each stage reads, derived from the code like its code deps: a walk from the
# stage's main() along the calls it makes into pipeline/, following the params object and
# every section taken from it (a name bound to `params.export`, an argument `cfg=cfg` that a
# callee reads as `cfg.precision`, an attribute `self.cfg` set from one) down to the fields
# read. A section that leaves this view (formatted, compared, handed to code outside the
# project, read by reflection as as_flat_dict does) counts as read whole. Keys are dotted as
# in params.yaml; an entry of a name mapping (data.sources) is `*`, and `data.sources.*`
# alone stands for the entries' names (a renamed source is a changed param).
PARAMS_LOADER = "pipeline.core.config.load_params"  # returns the params; its checks read no setting
# params_hash hashes the sections its second argument names (by reflection, as as_flat_dict)
PARAMS_HASH = "pipeline.core.config.params_hash"
NAMES_ONLY = {"list", "sorted", "len", "set", "tuple", "bool", "iter", "enumerate", "join"}
MAPPING_METHODS = {"items", "values", "keys", "get"}


def params_schema(cls=Params, prefix: str = "") -> dict[str, str]:
    """Every key of the params -> 'section', 'mapping', 'entry' (NAME.* of a mapping) or 'leaf'."""
    kinds, hints = {}, typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, typ = prefix + f.name, hints[f.name]
        if dataclasses.is_dataclass(typ):
            kinds[key] = "section"
            kinds.update(params_schema(typ, key + "."))
        elif typing.get_origin(typ) is dict:
            kinds.update({key: "mapping", key + ".*": "entry"})
            kinds.update(params_schema(typing.get_args(typ)[1], key + ".*."))
        else:
            kinds[key] = "leaf"
    return kinds


class ParamReads:
    """The params keys that code reaches from a function, over the calls it makes (see above)."""

    def __init__(self):
        self.modules, self.trees, self.tables = module_files(), {}, {}
        self.kinds = {"": "section", **params_schema()}
        self.reads: set[str] = set()
        self.seen: set = set()

    # -- where names lead
    def tree(self, module: str) -> ast.Module:
        if module not in self.trees:
            self.trees[module] = ast.parse(self.modules[module].read_text())
        return self.trees[module]

    def table(self, module: str) -> dict:
        if module not in self.tables:
            table = {
                node.name: ("def", module, node)
                for node in self.tree(module).body
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            }
            for node in ast.walk(self.tree(module)):  # imports anywhere, as imports_of reads them
                if isinstance(node, ast.ImportFrom) and node.module:
                    for alias in node.names:
                        sub = f"{node.module}.{alias.name}"
                        entry = (
                            ("module", sub)
                            if sub in self.modules
                            else ("from", node.module, alias.name)
                            if node.module in self.modules
                            else None
                        )
                        if entry:
                            table.setdefault(alias.asname or alias.name, entry)
                elif isinstance(node, ast.Import):
                    for alias in node.names:
                        if alias.asname and alias.name in self.modules:
                            table.setdefault(alias.asname, ("module", alias.name))
            self.tables[module] = table
        return self.tables[module]

    def resolve(self, module: str, name: str, hops: int = 0):
        entry = self.table(module).get(name)
        if entry and entry[0] == "from" and hops < 5:  # a re-export: follow it
            return self.resolve(entry[1], entry[2], hops + 1)
        return entry if entry and entry[0] != "from" else None

    def callee(self, module: str, func: ast.expr, cls):
        """('def', module, node) or ('method', module, node, class) of a call, or None."""
        if isinstance(func, ast.Name):
            return self.resolve(module, func.id)
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            if func.value.id == "self" and cls is not None:
                method = _function_named(cls.body, func.attr)
                return ("method", module, method, cls) if method else None
            owner = self.resolve(module, func.value.id)
            if owner and owner[0] == "module":
                return self.resolve(owner[1], func.attr)
        return None

    # -- what a value is: ("path", KEY), ("items" | "names", MAPPING), ("method", MAPPING, NAME)
    # or ("tuple", (values, ...)); values are frozensets of these
    def read(self, key: str) -> None:
        if self.kinds[key] in ("leaf", "entry"):
            self.reads.add(key)
        else:
            self.read_whole(key)

    def read_whole(self, key: str) -> None:
        inside = [k for k in self.kinds if not key or k.startswith(key + ".")]
        self.reads.update(k for k in inside if self.kinds[k] in ("leaf", "entry"))
        if self.kinds[key] == "mapping":
            self.reads.add(key + ".*")

    def escape(self, values) -> None:
        for value in values:
            if value[0] == "path":
                self.read_whole(value[1])
            elif value[0] == "tuple":
                for part in value[1]:
                    self.escape(part)
            else:  # what a mapping's items or names became
                self.read_whole(value[1])

    def names(self, values) -> None:
        """`values` used for their truth, membership or names: a mapping's names are read."""
        for value in values:
            if value[0] in ("items", "names") or self.is_mapping(value):
                self.reads.add(value[1] + ".*")
            elif value[0] == "method":
                self.escape([value])

    # -- functions
    def function(self, module: str, node, env: dict, cls=None) -> dict:
        """Walk one function with `env` (name -> values) bound; returns its env at the end."""
        key = (id(node), frozenset(env.items()))
        if key in self.seen:
            return {}
        self.seen.add(key)
        scope = _ParamScope(self, module, cls, dict(env))
        scope.block(node.body)
        return scope.env

    def is_mapping(self, value) -> bool:
        return value[0] == "path" and self.kinds[value[1]] == "mapping"

    def call(self, module: str, target, args: list, kwargs: dict, env: dict) -> None:
        kind, where, fn = target[0], target[1], target[2]
        if isinstance(fn, ast.ClassDef):
            init = _function_named(fn.body, "__init__")
            selfs = {}
            if init is not None:
                end = self.function(where, init, self.bind(init, args, kwargs, method=True), fn)
                selfs = {k: v for k, v in end.items() if k.startswith("self.")}
            for method in fn.body:  # every method sees what __init__ stored on self
                if isinstance(method, ast.FunctionDef) and method is not init:
                    self.function(where, method, selfs, fn)
            return
        cls = target[3] if kind == "method" else None
        bound = self.bind(fn, args, kwargs, method=cls is not None)
        if cls is not None:  # self.method(...): the attributes of self come along
            bound.update({k: v for k, v in env.items() if k.startswith("self.")})
        self.function(where, fn, bound, cls)

    def bind(self, fn, args: list, kwargs: dict, *, method: bool) -> dict:
        names = [a.arg for a in fn.args.posonlyargs + fn.args.args][1 if method else 0 :]
        kwonly = {a.arg for a in fn.args.kwonlyargs}
        bound = {}
        for i, values in enumerate(args):
            if values is None or i >= len(names):  # *args, or more than it names: not followed
                self.escape(values or ())
            elif values:
                bound[names[i]] = values
        for name, values in kwargs.items():
            if name in names or name in kwonly:
                if values:
                    bound[name] = values
            else:  # **kwargs of the callee, or **mapping of the caller: not followed
                self.escape(values)
        return bound

    def of_stage(self, stage: str) -> set[str]:
        module = f"stages.{stage}"
        self.function(module, _function_named(self.tree(module).body, "main"), {})
        return self.reads


class _ParamScope:
    """One function body: statements in order, the params values that names hold."""

    def __init__(self, reads: ParamReads, module: str, cls, env: dict):
        self.r, self.module, self.cls, self.env = reads, module, cls, env

    def block(self, body) -> None:
        for stmt in body:
            self.stmt(stmt)

    def stmt(self, s) -> None:
        if isinstance(s, ast.Assign):
            values = self.ev(s.value)
            for target in s.targets:
                self.bind(target, values)
        elif isinstance(s, ast.AnnAssign) and s.value is not None:
            self.bind(s.target, self.ev(s.value))
        elif isinstance(s, (ast.For, ast.AsyncFor)):
            self.bind(s.target, self.iterate(self.ev(s.iter)))
            self.block(s.body + s.orelse)
        elif isinstance(s, (ast.If, ast.While)):
            self.r.names(self.ev(s.test))
            self.block(s.body + s.orelse)
        elif isinstance(s, (ast.With, ast.AsyncWith)):
            for item in s.items:
                values = self.ev(item.context_expr)
                if item.optional_vars is not None:
                    self.bind(item.optional_vars, values)
            self.block(s.body)
        elif isinstance(s, ast.Try):
            handlers = [h for handler in s.handlers for h in handler.body]
            self.block(s.body + handlers + s.orelse + s.finalbody)
        elif isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)):  # a closure sees this scope
            self.r.function(self.module, s, self.closure(s.args), self.cls)
        elif isinstance(s, ast.ClassDef):
            pass
        elif isinstance(s, ast.Assert):
            self.r.names(self.ev(s.test))
        else:  # return, expression, raise, augmented assignment, ...: what leaves here is read
            self.generic(s)

    def bind(self, target, values) -> None:
        values = frozenset(values)
        if isinstance(target, ast.Name):
            self.env[target.id] = values
        elif _on_self(target):
            self.env[f"self.{target.attr}"] = values
        elif isinstance(target, (ast.Tuple, ast.List)):
            fits = {v for v in values if v[0] == "tuple" and len(v[1]) == len(target.elts)}
            self.r.escape(values - fits)
            parts = [v[1] for v in fits]
            for i, elt in enumerate(target.elts):
                self.bind(elt, frozenset().union(*(p[i] for p in parts)))
        else:  # stored in a container or on another object: out of view
            self.generic(target)
            self.r.escape(values)

    def iterate(self, values) -> frozenset:
        """What a loop variable over `values` holds."""
        out = set()
        for value in values:
            kind = value[0] if value[0] != "path" else self.r.kinds[value[1]]
            if kind in ("mapping", "names"):
                self.r.names([value])
            elif kind == "items":
                self.r.names([value])
                out.add(("tuple", (frozenset(), frozenset({("path", value[1] + ".*")}))))
            elif kind == "tuple":
                out.update(*value[1])
            elif kind != "leaf":
                self.r.escape([value])
        return frozenset(out)

    def use(self, node) -> None:
        self.r.escape(self.ev(node))

    def closure(self, args: ast.arguments) -> dict:
        """This scope as an inner function or lambda sees it, less the names its args shadow."""
        shadowed = {a.arg for a in ast.walk(args) if isinstance(a, ast.arg)}
        return {k: v for k, v in self.env.items() if k not in shadowed}

    def generic(self, node) -> frozenset:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self.use(child)
            else:
                self.generic(child)
        return frozenset()

    def ev(self, node) -> frozenset:
        """The params values `node` evaluates to; reads what it touches on the way."""
        r = self.r
        if isinstance(node, ast.Name):
            return self.env.get(node.id, frozenset())
        if isinstance(node, ast.Attribute):
            if _on_self(node) and f"self.{node.attr}" in self.env:
                return self.env[f"self.{node.attr}"]
            out = set()
            for value in self.ev(node.value):
                kind = r.kinds.get(value[1]) if value[0] == "path" else None
                child = f"{value[1]}.{node.attr}".lstrip(".") if kind else None
                if kind in ("section", "entry") and child in r.kinds:
                    if r.kinds[child] == "leaf":
                        r.read(child)
                    out.add(("path", child))
                elif kind == "mapping" and node.attr in MAPPING_METHODS:
                    out.add(("method", value[1], node.attr))
                elif kind != "leaf":  # an unknown attribute of a section: it is used whole
                    r.escape([value])
            return frozenset(out)
        if isinstance(node, ast.Subscript):
            self.use(node.slice)
            out = set()
            for value in self.ev(node.value):
                if value[0] == "path" and r.kinds[value[1]] == "mapping":
                    r.names([value])
                    out.add(("path", value[1] + ".*"))
                else:
                    r.escape([value])
            return frozenset(out)
        if isinstance(node, ast.Call):
            return self.call(node)
        starred = any(isinstance(e, ast.Starred) for e in getattr(node, "elts", ()))
        if isinstance(node, (ast.Tuple, ast.List)) and not starred:
            parts = tuple(self.ev(e) for e in node.elts)
            return frozenset({("tuple", parts)}) if any(parts) else frozenset()
        if isinstance(node, ast.BoolOp):  # `a or b` is a or b; each but the last is tested
            parts = [self.ev(v) for v in node.values]
            for part in parts[:-1]:
                r.names(part)
            return frozenset().union(*parts)
        if isinstance(node, ast.IfExp):
            r.names(self.ev(node.test))
            return self.ev(node.body) | self.ev(node.orelse)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            r.names(self.ev(node.operand))
            return frozenset()
        if isinstance(node, ast.Compare):
            self.use(node.left)
            for op, comparator in zip(node.ops, node.comparators):
                values = self.ev(comparator)
                membership = [
                    v for v in values if isinstance(op, (ast.In, ast.NotIn)) and r.is_mapping(v)
                ]
                r.names(membership)
                r.escape(v for v in values if v not in membership)
            return frozenset()
        if isinstance(node, ast.Lambda):
            _ParamScope(r, self.module, self.cls, self.closure(node.args)).use(node.body)
            return frozenset()
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            inner = _ParamScope(r, self.module, self.cls, dict(self.env))
            for gen in node.generators:
                inner.bind(gen.target, inner.iterate(inner.ev(gen.iter)))
                for cond in gen.ifs:
                    r.names(inner.ev(cond))
            for part in (node.key, node.value) if isinstance(node, ast.DictComp) else (node.elt,):
                inner.use(part)
            return frozenset()
        return self.generic(node)

    def call(self, node: ast.Call) -> frozenset:
        r = self.r
        func = self.ev(node.func)
        args = [None if isinstance(a, ast.Starred) else self.ev(a) for a in node.args]
        kwargs = {k.arg: self.ev(k.value) for k in node.keywords if k.arg}
        for k in node.keywords:
            if not k.arg:  # f(**mapping)
                self.use(k.value)
        methods = [v for v in func if v[0] == "method"]
        r.escape(v for v in func if v[0] != "method")
        if methods:  # mapping.items() / .values() / .keys() / .get(name)
            out = set()
            for _, mapping, name in methods:
                if name != "items":
                    r.reads.add(mapping + ".*")
                out.add(
                    ("items", mapping)
                    if name == "items"
                    else ("names", mapping)
                    if name == "keys"
                    else ("path", mapping + ".*")
                )
            r.escape(v for a in args for v in (a or ()))
            return frozenset(out)
        target = r.callee(self.module, node.func, self.cls)
        is_function = bool(target) and target[0] in ("def", "method")
        name = f"{target[1]}.{target[2].name}" if is_function else None
        if name == PARAMS_LOADER:
            return frozenset({("path", "")})
        if name == PARAMS_HASH:
            sections = (
                node.args[1]
                if len(node.args) > 1
                else next((k.value for k in node.keywords if k.arg == "sections"), None)
            )
            if sections is None:
                r.escape(args[0] or ())
            for section in self.constant(sections) if sections is not None else ():
                r.read_whole(section)
            return frozenset()
        if is_function:
            r.call(self.module, target, args, kwargs, self.env)
            return frozenset()
        fname = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
        for values in [*args, *kwargs.values()]:
            if fname in NAMES_ONLY:
                r.names(values or ())
                r.escape(v for v in (values or ()) if v[0] == "path" and not r.is_mapping(v))
            else:  # code outside the project gets it: read whole
                r.escape(values or ())
        return frozenset()

    def constant(self, node):
        """A literal, or a module-level name bound to one (MODEL_SECTIONS)."""
        if isinstance(node, ast.Name):
            for stmt in self.r.tree(self.module).body:
                if isinstance(stmt, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == node.id for t in stmt.targets
                ):
                    return ast.literal_eval(stmt.value)
        return ast.literal_eval(node)


def _function_named(body, name: str):
    return next((n for n in body if isinstance(n, ast.FunctionDef) and n.name == name), None)


def _on_self(node) -> bool:
    """`self.NAME`."""
    return (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    )


def generic_key(key: str, kinds: dict[str, str]) -> str:
    """data.sources.tum.path -> data.sources.*.path: a named entry as the schema writes it."""
    parts = key.split(".")
    for i in range(1, len(parts)):
        if kinds.get(".".join(parts[:i])) == "mapping":
            parts[i] = "*"
    return ".".join(parts)


def missing_and_stale_params(dvc_yaml: dict) -> list[str]:
    problems = []
    kinds = params_schema()
    for stage, spec in dvc_yaml["stages"].items():
        template = spec.get("do", spec)
        reads = ParamReads().of_stage(stage)
        listed = [generic_key(p, kinds) for p in template.get("params", [])]
        covered = set(listed)
        if "foreach" in spec:  # index@NAME: each entry's name and its ${item.X} are in the stage
            mapping = spec["foreach"].removeprefix("${").removesuffix("}")
            fields = re.findall(r"\$\{item\.(\w+)\}", yaml.safe_dump(template))
            covered |= {f"{mapping}.*"} | {f"{mapping}.*.{x}" for x in fields}
        problems += [
            f"{stage}: lists {key}, which is no key of params.yaml"
            for key in listed
            if key not in kinds
        ]

        def is_covered(key, covered=covered):
            return any(key == c or key.startswith(c + ".") for c in covered)

        # An always_changed stage reruns on every repro, so a param it reads cannot go stale there.
        if not spec.get("always_changed"):
            problems += [
                f"{stage}: reads {key} but dvc.yaml does not list it"
                for key in sorted(reads)
                if not is_covered(key)
            ]
        for key in (k for k in listed if k in kinds):
            leaves = [
                k
                for k in kinds
                if (k == key or k.startswith(key + ".")) and kinds[k] in ("leaf", "entry")
            ]
            # DVC cannot name a field of every entry (data.sources.*.weight): a mapping is
            # listed whole, and counts as read when anything of it is.
            groups: dict[str, list[str]] = {}
            for leaf in leaves:
                inside = leaf.find(".*", len(key))
                groups.setdefault(leaf if inside < 0 else leaf[:inside], []).append(leaf)
            problems += [
                f"{stage}: lists {key} but never reads {'it' if group == key else group}"
                for group, members in groups.items()
                if not reads.intersection(members)
            ]
    return problems


def test_every_stage_lists_the_params_it_reads_and_no_other():
    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert missing_and_stale_params(dvc_yaml) == []


def test_a_param_removed_from_or_added_to_a_stage_is_caught():
    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())
    dvc_yaml["stages"]["train"]["params"].remove("data.val")
    dvc_yaml["stages"]["export"]["params"].append("evaluate.panels")
    dvc_yaml["stages"]["synthesize"]["params"].append("data.sources")
    assert missing_and_stale_params(dvc_yaml) == [
        "synthesize: lists data.sources but never reads it",
        "train: reads data.val but dvc.yaml does not list it",
        "export: lists evaluate.panels but never reads it",
    ]


def test_a_section_handed_to_a_callee_counts_by_the_fields_the_callee_reads():
    """export_file(cfg=params.export) reads every export field in pipeline/device/export.py
    (the stage itself reads four); run_teacher(cfg) reads every teacher field but the student's
    fill_invalid, which therefore stays out of the teacher stage."""
    export = ParamReads().of_stage("export")
    assert export == {f"export.{f.name}" for f in dataclasses.fields(ExportConfig)}
    teacher = {k for k in ParamReads().of_stage("teacher") if k.startswith("teacher.")}
    assert teacher == {f"teacher.{f.name}" for f in dataclasses.fields(TeacherConfig)} - {
        "teacher.fill_invalid"
    }


# ------------------------------------------------------------- one source of defaults
def default_drift(params_file: Path, defaults: Params | None = None) -> list[str]:
    """Keys whose code default differs from the file, and keys the file leaves out."""
    code = as_flat_dict(defaults or Params())
    filed = as_flat_dict(load_params(params_file))
    listed = set(flatten(yaml.safe_load(params_file.read_text())))
    return [
        f"{k}: code default {code[k]!r}, {params_file.name} {filed[k]!r}"
        for k in code
        if code[k] != filed[k]
    ] + [f"{k}: not in {params_file.name}" for k in code if k not in listed]


def test_code_defaults_equal_params_yaml():
    assert default_drift(REPO / "params.yaml") == []


def test_a_default_changed_on_one_side_alone_is_caught(tmp_path):
    changed = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", changed)
    changed.write_text(changed.read_text().replace("epochs: 20", "epochs: 21"))
    assert default_drift(changed) == ["train.epochs: code default 20, params.yaml 21"]
    # the code side alone: a dataclass default that params.yaml does not follow
    code = Params(train=dataclasses.replace(Params().train, batch_size=9))
    assert default_drift(REPO / "params.yaml", code) == [
        "train.batch_size: code default 9, params.yaml 8"
    ]


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
    # train.arch: the registry's names, read by the params check when it checks; no other list
    arch = {f.name: f for f in dataclasses.fields(config.TrainConfig)}["arch"]
    assert list(arch.metadata["check"]["choices"]) == list(archs.ARCHS)
    assert not {"ARCHS", "ARCH_STRIDES", "ARCH_DEFAULTS"} & set(vars(config))
    assert arch_name_lists(archs.ARCHS) == []


def arch_name_lists(archs, paths=None) -> list[str]:
    """Literal lists, tuples, sets and dict keys in the code naming every architecture: a
    second list of the choices, which adding one to pipeline/model/archs.py would miss."""
    found = []
    if paths is None:
        paths = [
            *(REPO / "pipeline").rglob("*.py"),
            *(REPO / "stages").glob("*.py"),
            *(REPO / "bench").glob("*.py"),
        ]
        paths.remove(REPO / "pipeline/model/archs.py")
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            items = (
                node.keys
                if isinstance(node, ast.Dict)
                else getattr(node, "elts", None)
                if isinstance(node, (ast.List, ast.Tuple, ast.Set))
                else None
            )
            names = [
                n.value for n in items or () if isinstance(n, ast.Constant) and n.value in archs
            ]
            if set(names) >= set(archs):
                found.append(f"{path.name}:{node.lineno}: {', '.join(names)}")
    return found


def test_a_second_list_of_architectures_is_caught(tmp_path):
    code = tmp_path / "x.py"
    names = list(archs.ARCHS)
    code.write_text(
        f"CHOICES = {tuple(names)}\nSTRIDES = {dict.fromkeys(reversed(names), 32)}\n"
        f"SOME = {names[1:]}\n"
    )  # a selection (a benchmark's default) is no copy
    assert arch_name_lists(archs.ARCHS, [code]) == [
        f"x.py:1: {', '.join(names)}",
        f"x.py:2: {', '.join(reversed(names))}",
    ]


def test_an_architecture_is_its_module_and_one_registry_line():
    """Every module of pipeline/model/networks/ with a build() is registered, every registered
    module has one, and each arch says what `auto` means for every auto-able train key."""
    folder = REPO / "pipeline/model/networks"
    builders = {
        path.stem
        for path in folder.glob("*.py")
        if any(
            isinstance(n, ast.FunctionDef) and n.name == "build"
            for n in ast.parse(path.read_text()).body
        )
    }
    assert builders == {arch.module for arch in archs.ARCHS.values()}
    auto = {f.name for f in dataclasses.fields(TrainConfig) if f.default == AUTO}
    assert auto == {"width_multiplier", "height", "width"}
    assert all(set(arch.auto) == auto for arch in archs.ARCHS.values())


def test_a_registry_line_is_all_the_params_checks_need(monkeypatch):
    from pipeline.core import config

    monkeypatch.setattr(config, "_ARCHS", dict(config.arch_facts()))  # restored after the test
    with pytest.raises(ConfigError, match=r"train.arch='tiny_net' is not one of \['mobile_unet', "):
        load_params(REPO / "params.yaml", overrides={"train": {"arch": "tiny_net"}})
    config.register_archs(
        {
            **archs.ARCHS,
            "tiny_net": config.ArchFacts(
                stride=8, auto={"width_multiplier": 0.5, "height": 72, "width": 96}
            ),
        }
    )
    train = load_params(REPO / "params.yaml", overrides={"train": {"arch": "tiny_net"}}).train
    assert (train.width_multiplier, train.height, train.width) == (0.5, 72, 96)
    with pytest.raises(ConfigError, match=r"train.height=100 must be divisible by 8 for tiny_net"):
        load_params(REPO / "params.yaml", overrides={"train": {"arch": "tiny_net", "height": 100}})


def test_params_import_no_tensorflow_and_need_the_registry():
    """Stages that need no TensorFlow import the params and the registry; without the registry
    (which stages/, bench/ and conftest import) loading params is a programmer's error."""
    code = (
        "import sys\nfrom pipeline.core import config\n"
        "try:\n    config.load_params()\nexcept RuntimeError as err:\n    print(err)\n"
        "import {package}\nconfig.load_params()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))\n"
    )
    for package in ("stages", "bench", "pipeline.model.networks"):
        out = subprocess.run(
            [sys.executable, "-c", code.format(package=package)],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert out == (
            "no architectures registered with pipeline.core.config: import "
            "pipeline.model.archs before loading params\n[]\n"
        ), package
