"""A grid of DVC experiments: one `dvc exp run --queue` per valid combination of a grid file.

A grid file (sweeps/default.yaml) names params by their dotted keys, each with a list of
values; every combination is one experiment, the first key varying slowest (as DVC's own
`-S 'a=1,2'` sweeps do). Keys joined by commas take their values together, so a working
resolution is one axis rather than every height against every width:

    jobs: 1                                   # dvc queue start -j; more skews the timings
    grid:
      train.arch: [mobile_unet, fastdepth]
      train.height,train.width: [[auto, auto], [192, 256]]
      export.precision: [fp32, int8]

Every combination is checked with `load_params` on top of params.yaml before anything is
queued (no training): a combination that is invalid only as a whole (a resolution that one
architecture's stride does not divide) is skipped with one line; a value that is invalid in
every combination it is in (a typo) stops the sweep with one line, as does an empty grid.
Queued experiments run in DVC's copy of the project (docs/scale-out.md), where a relative path
outside the project (`../shared/data/x`) would point into .dvc/tmp/: every path param given
that way, in the grid or in params.yaml, is queued absolute (`pin_paths`, the rule of
pipeline.core.paths.resolve_user_path).

A preset (presets/*.yaml, a partial params file) is one experiment: `preset_command` is the
`dvc exp run` that applies it to params.yaml (`make exp`), checked the same way first, its
paths pinned the same way when it is queued or run with --temp.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.config import AUTO, DEFAULT_PARAMS, Params, load_params, read_yaml, user_paths
from pipeline.core.errors import ConfigError, PipelineError
from pipeline.core.overrides import diff_args, format_arg, format_value, merge
from pipeline.core.paths import leaves_project, resolve_user_path
from pipeline.model import archs  # noqa: F401  (registers train.arch's choices)

DEFAULT_GRID = "sweeps/default.yaml"
DEFAULT_JOBS = 1
QUEUE_LOG = Path(".dvc/tmp/sweep_queue_start.log")
ACTIVE = ("Queued", "Running")


@dataclass(frozen=True)
class Axis:
    keys: tuple[str, ...]  # one key, or several that take their values together
    values: tuple[tuple, ...]  # one tuple per choice, as long as keys


@dataclass(frozen=True)
class Sweep:
    name: str  # the grid file's stem: the experiments' name prefix
    axes: tuple[Axis, ...]
    jobs: int
    points: tuple[dict, ...] = ()  # valid combinations: dotted key -> value, as in the grid
    pins: tuple[dict, ...] = ()  # per point: the path params it is queued with absolute
    skipped: tuple[tuple[dict, str], ...] = ()  # (combination, why)


def _axis(grid_path: str, key, values) -> Axis:
    where = f"{grid_path}: grid.{key}"
    keys = tuple(k.strip() for k in str(key).split(","))
    if not all(keys):
        raise ConfigError(f"{where}: empty key")
    values = values if isinstance(values, list) else [values]  # a single value is a fixed setting
    if not values:
        raise ConfigError(f"{where}: no values")
    if len(keys) == 1:
        return Axis(keys, tuple((v,) for v in values))
    for value in values:
        if not isinstance(value, list) or len(value) != len(keys):
            raise ConfigError(
                f"{where}: each value must be a list of {len(keys)} (one per key), got {value!r}"
            )
    return Axis(keys, tuple(tuple(v) for v in values))


def read_grid(path: str | os.PathLike) -> Sweep:
    """The grid file as a Sweep (not yet checked against the params)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: grid file not found")
    raw = read_yaml(path)  # as params files are read: 1e-05 is a number, a duplicate key an error
    if not isinstance(raw, dict) or not isinstance(raw.get("grid"), dict) or not raw["grid"]:
        raise ConfigError(
            f"{path}: expected `grid:`, a mapping of dotted params to lists of values"
        )
    unknown = sorted(set(raw) - {"grid", "jobs"})
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]} (known: grid, jobs)")
    jobs = raw.get("jobs", DEFAULT_JOBS)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"{path}: jobs must be an int >= 1, got {jobs!r}")
    axes = tuple(_axis(str(path), key, values) for key, values in raw["grid"].items())
    seen = [k for axis in axes for k in axis.keys]
    if len(seen) != len(set(seen)):
        raise ConfigError(
            f"{path}: a key is in the grid twice: "
            f"{sorted(k for k in set(seen) if seen.count(k) > 1)[0]}"
        )
    return Sweep(name=path.stem, axes=axes, jobs=jobs)


def _combinations(axes) -> list[tuple[tuple[int, ...], dict]]:
    """(choice index per axis, {dotted key: value}) of every combination, first axis slowest."""
    return [
        (combo, {k: v for axis, i in zip(axes, combo) for k, v in zip(axis.keys, axis.values[i])})
        for combo in itertools.product(*(range(len(axis.values)) for axis in axes))
    ]


def expand(axes) -> list[dict]:
    """Every combination, the first axis varying slowest: [{dotted key: value}, ...]."""
    return [point for _, point in _combinations(axes)]


def point_args(point: dict) -> list[str]:
    """One combination as the `-S` arguments it is queued with (and checked with)."""
    return [format_arg(key, value) for key, value in point.items()]


def pin_paths(params: Params, root: Path) -> dict[str, str]:
    """{dotted key: absolute path} of every path param that leaves the project (`../x`),
    anchored at the project `root`: the `-S` values with which an experiment that runs in
    DVC's copy of the project finds them (resolve_user_path's rule, applied before DVC
    hashes the data folders in the copy, which no stage could do)."""
    return {
        key: resolve_user_path(path, root)
        for key, path in user_paths(params).items()
        if leaves_project(path)
    }


def check(
    sweep: Sweep, *, params: str | os.PathLike = DEFAULT_PARAMS, root: Path | None = None
) -> Sweep:
    """`sweep` with its valid points and the skipped ones; a ConfigError when a value is
    invalid in every combination it is in, or when nothing is left."""
    root = Path(root or Path(params).resolve().parent)
    load_params(params)  # params.yaml itself first: its mistake is no combination's
    points, pins, skipped, failed = [], [], [], {}  # failed: (axis, choice) -> first error
    combos = _combinations(sweep.axes)
    for combo, point in combos:
        try:
            loaded = load_params(params, args=point_args(point))  # as DVC will apply them
        except ConfigError as err:
            skipped.append((point, str(err)))
            for axis_choice in enumerate(combo):
                failed.setdefault(axis_choice, []).append(str(err))
            continue
        points.append(point)
        pins.append(pin_paths(loaded, root))
    if not points:
        raise ConfigError(f"grid {sweep.name}: no valid combination: {skipped[0][1]}")
    for (
        a,
        i,
    ), errors in failed.items():  # a value no combination accepts is a mistake, not a combination
        axis = sweep.axes[a]
        if len(errors) == len(combos) // len(axis.values):
            shown = ", ".join(format_arg(k, v) for k, v in zip(axis.keys, axis.values[i]))
            raise ConfigError(
                f"grid {sweep.name}: {shown} is invalid in every combination: {errors[0]}"
            )
    return dataclasses.replace(
        sweep, points=tuple(points), pins=tuple(pins), skipped=tuple(skipped)
    )


def exp_name(sweep: Sweep, point: dict) -> str:
    """The grid's name and the value of every axis with more than one choice (of a path, its
    last part). E.g. default-fastdepth-192x256-int8."""
    parts = [sweep.name]
    for axis in sweep.axes:
        if len(axis.values) > 1:
            values = [point[k] for k in axis.keys]
            values = [os.path.basename(v.rstrip("/")) if _is_path(v) else v for v in values]
            text = "x".join(format_value(v) for v in values)
            parts.append(AUTO if all(v == AUTO for v in values) else text)
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(parts))
    return re.sub(r"\.{2,}", ".", name).strip("._-")  # git refuses '..' in a ref name


def _is_path(value) -> bool:
    return isinstance(value, str) and "/" in value.rstrip("/")


def queue_commands(sweep: Sweep, dvc: str = "dvc", force: bool = False) -> list[list[str]]:
    """One `dvc exp run --queue` per point: its values, the path params pinned absolute."""
    pins = sweep.pins or [{}] * len(sweep.points)
    return [
        [
            dvc,
            "exp",
            "run",
            "--queue",
            *(["-f"] if force else []),
            "-n",
            exp_name(sweep, point),
            *(arg for item in point_args({**point, **pinned}) for arg in ("-S", item)),
        ]
        for point, pinned in zip(sweep.points, pins)
    ]


SET_PARAM = ("-S", "--set-param")  # dvc exp run's flag for one override
IN_A_COPY = ("--queue", "--temp")  # dvc exp run's flags that run the experiment in a copy


def preset_args(preset: str | os.PathLike, params: str | os.PathLike = DEFAULT_PARAMS) -> list[str]:
    """The preset as `-S` arguments on top of `params`: only what it changes, `~` for a
    source it drops (it replaces data.sources whole) and `+` for one it adds."""
    base = read_yaml(Path(params)) or {}
    return diff_args(base, merge(base, read_yaml(Path(preset)) or {}))


def preset_command(
    preset: str | os.PathLike,
    *,
    params: str | os.PathLike = DEFAULT_PARAMS,
    extra: list[str] = (),
    dvc: str = "dvc",
) -> list[str]:
    """`dvc exp run` with the preset's `-S` arguments, then `extra` (more `dvc exp run`
    arguments: a later -S wins), as an argument list: no shell ever splits a value. The
    params that result are checked first, so a mistake costs no DVC run. With --queue or
    --temp in `extra`, a last `-S` per path param that leaves the project pins it absolute
    (`pin_paths`); in the workspace it stays as written."""
    args = preset_args(preset, params)
    given = [extra[i + 1] for i, arg in enumerate(extra[:-1]) if arg in SET_PARAM]
    given += [arg.split("=", 1)[1] for arg in extra if arg.startswith("--set-param=")]
    loaded = load_params(params, args=[*args, *given])
    pins = []
    if any(arg in IN_A_COPY for arg in extra):
        root = Path(params).resolve().parent
        pins = [format_arg(key, path) for key, path in pin_paths(loaded, root).items()]
    sets = [item for arg in [*args, *pins] for item in ("-S", arg)]
    return [dvc, "exp", "run", *sets[: 2 * len(args)], *extra, *sets[2 * len(args) :]]


def run_command(cmd: list[str], *, root: Path) -> None:
    """Run a dvc command in the foreground, its output straight to the terminal."""
    try:
        code = subprocess.run(cmd, cwd=root, env=dvc_env()).returncode
    except FileNotFoundError:
        raise PipelineError(
            f"{cmd[0]}: not found (run through make, or with the venv's bin first on PATH)"
        ) from None
    if code != 0:
        raise PipelineError(f"`{' '.join(cmd[:3])}` failed (exit {code}; its error is above)")


def start_command(jobs: int, dvc: str = "dvc") -> list[str]:
    return [dvc, "queue", "start", "-j", str(jobs)]


def dvc_env() -> dict[str, str]:
    """This venv's bin on PATH (first, unless it is there already): DVC's queue workers start
    `dvc`, and the stages `python`, from PATH."""
    venv, path = str(Path(sys.executable).parent), os.environ.get("PATH", "")
    return dict(
        os.environ, PATH=path if venv in path.split(os.pathsep) else f"{venv}{os.pathsep}{path}"
    )


def describe(sweep: Sweep) -> list[str]:
    lines = [
        f"grid {sweep.name}: {len(sweep.points) + len(sweep.skipped)} combinations, "
        f"{len(sweep.points)} to queue, {len(sweep.skipped)} skipped; dvc queue start -j "
        f"{sweep.jobs}"
    ]
    lines += [f"skip {' '.join(point_args(point))}: {why}" for point, why in sweep.skipped]
    if sweep.jobs > 1:
        lines.append(
            f"note: {sweep.jobs} experiments at a time share the cores: their benchmark timings "
            "are not comparable (docs/scale-out.md); time the front again alone"
        )
    return lines


def _run(cmd: list[str], *, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=dvc_env(), text=True, **kwargs)
    except FileNotFoundError:
        raise PipelineError(
            f"{cmd[0]}: not found (run through make, or with the venv's bin first on PATH)"
        ) from None
    if proc.returncode != 0:
        out = [
            line
            for line in ((proc.stderr or "") + (proc.stdout or "")).splitlines()
            if line.strip()
        ]
        why = next(
            (line for line in out if line.startswith("ERROR")),
            out[-1] if out else f"exit {proc.returncode}",
        )
        raise PipelineError(f"`{shlex.join(cmd)}` failed: {why}")
    return proc


def taken_names(*, root: Path, dvc: str = "dvc") -> set[str]:
    """Experiments of this commit and tasks in the queue: a second one of a name would fail or
    clash."""
    listed = _run([dvc, "exp", "list", "--name-only"], cwd=root, capture_output=True).stdout.split()
    return set(listed) | set(statuses(None, root=root, dvc=dvc))


def queue(
    sweep: Sweep, *, root: Path, dvc: str = "dvc", force: bool = False, log=print
) -> list[str]:
    """Queue every point and start the workers; returns the experiment names. Names already
    taken stop it before anything is queued, unless `force` (dvc exp run -f) replaces them."""
    commands = queue_commands(sweep, dvc, force)
    names = [cmd[cmd.index("-n") + 1] for cmd in commands]
    taken = sorted(set(names) & taken_names(root=root, dvc=dvc))
    if taken and not force:
        raise PipelineError(
            f"{len(taken)} experiment name(s) of grid {sweep.name} exist already: "
            f"{', '.join(taken[:3])}{' ...' if len(taken) > 3 else ''}; --force (FORCE=1) "
            "replaces them, or copy the grid to a file of another name"
        )
    for cmd, name in zip(commands, names):
        _run(cmd, cwd=root, capture_output=True)
        log(f"queued {name}")
    (root / QUEUE_LOG).parent.mkdir(parents=True, exist_ok=True)
    # To a file, not a pipe: the detached workers inherit it and a pipe would block until they exit.
    with open(root / QUEUE_LOG, "w") as out:
        _run(start_command(sweep.jobs, dvc), cwd=root, stdout=out, stderr=subprocess.STDOUT)
    return names


def statuses(names, *, root: Path, dvc: str = "dvc") -> dict[str, str]:
    """{name: Queued | Running | Success | Failed} from `dvc queue status` (names None: all)."""
    out = _run([dvc, "queue", "status"], cwd=root, capture_output=True).stdout
    found = {}
    for line in out.splitlines():
        parts = line.split()  # Task  Name  Created (two words)  Status
        if len(parts) >= 4 and parts[0] != "Task" and (names is None or parts[1] in names):
            found[parts[1]] = parts[-1]
    return found


def wait(names, *, root: Path, dvc: str = "dvc", poll_s: float = 30.0, log=print) -> dict[str, str]:
    """Poll until none of `names` is queued or running; a line whenever the counts change."""
    last = None
    while True:
        found = statuses(names, root=root, dvc=dvc)
        counts = {s: sum(v == s for v in found.values()) for s in sorted(set(found.values()))}
        if counts != last:
            log(f"{time.strftime('%H:%M:%S')} " + ", ".join(f"{n} {s}" for s, n in counts.items()))
            last = counts
        if not any(s in ACTIVE for s in found.values()):
            return found
        time.sleep(poll_s)
