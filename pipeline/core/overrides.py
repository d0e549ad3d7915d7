"""The `-S key=VALUE` syntax of `dvc exp run`, in one place.

DVC hands each `-S` to Hydra's override grammar and writes the result into params.yaml:
`key=VALUE` changes a key that exists, `+key=VALUE` adds one, `~key` deletes one, and VALUE
is typed by Hydra (`1e-5` a float, `true` a bool, `[a, b]` a list, `'01'` a string).
Everything here speaks that grammar: parse an argument as DVC would (`parse`), write a
value so that DVC reads it back unchanged (`format_value`), apply arguments to a params
mapping the way DVC applies them to params.yaml (`apply`), and the arguments that turn one
params mapping into another (`diff_args`: a preset, a tracked run's params). Presets are
merged on top of params.yaml with `merge`.

No TensorFlow, no params schema: pipeline/core/config.py uses this module, not the reverse.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

from pipeline.core.errors import ConfigError

# Name mappings that a preset replaces whole: a preset that names its sources means those.
REPLACED_WHOLE = ("data.sources",)
SET, ADD, FORCE, DELETE = "", "+", "++", "~"  # FORCE: set or add
# A string Hydra reads back as the same string without quotes; anything else is quoted.
_BARE = re.compile(r"[A-Za-z0-9_./][A-Za-z0-9_./@:-]*")
# Bare words Hydra (or a reader who knows YAML) would take for a bool or null.
_WORDS = {"true", "false", "null", "none", "yes", "no", "on", "off"}
_KEY = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")


@dataclass(frozen=True)
class Override:
    op: str  # SET, ADD, FORCE or DELETE
    key: str  # dotted
    value: object = None  # typed as Hydra types it; None for DELETE


def format_value(value) -> str:
    """`value` as VALUE in `-S key=VALUE`, such that DVC writes exactly `value` back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"-S: {value!r} is not a finite number")
        return repr(value)  # shortest round trip: 0.35, 2e-05
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{_check_key(str(k))}: {format_value(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, str):
        return _format_text(value)
    raise ConfigError(f"-S: cannot write a {type(value).__name__} value ({value!r})")


def _format_text(text: str) -> str:
    if "${" in text:  # DVC would resolve it as an OmegaConf interpolation
        raise ConfigError(f"-S: {text!r} contains '${{', which DVC reads as an interpolation")
    if _BARE.fullmatch(text) and text.lower() not in _WORDS and not _is_number(text):
        return text
    # Hydra's quoted string: \' is a quote, and backslashes before a quote (or before the
    # closing one) are doubled; other backslashes stay as they are.
    body = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    body = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, body)
    return f"'{body}'"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_key(key: str) -> str:
    if not _KEY.fullmatch(key):
        raise ConfigError(f"-S: {key!r} is not a dotted params key")
    return key


def format_arg(key: str, value=None, op: str = SET) -> str:
    """One `-S` argument: `key=VALUE`, `+key=VALUE` or `~key`."""
    if op == DELETE:
        return f"~{_check_key(key)}"
    if op not in (SET, ADD, FORCE):
        raise ValueError(f"unknown override op {op!r}")
    return f"{op}{_check_key(key)}={format_value(value)}"


@functools.cache
def _parser():
    # DVC's own parser (dvc/utils/hydra.py): what DVC accepts, nothing more or less.
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def parse(arg: str) -> Override:
    """One `-S` argument as DVC reads it; a ConfigError naming it when DVC would refuse it
    or when it is a sweep (`a=1,2`, `range(...)`: `make sweep` takes grids)."""
    from hydra.core.override_parser.types import OverrideType, ValueType
    from hydra.errors import HydraException

    try:
        parsed = _parser().parse_override(arg)
    except HydraException as err:
        raise ConfigError(
            f"-S {arg!r}: not an override DVC accepts ({str(err).strip().splitlines()[0]})"
        ) from None
    key = parsed.key_or_group
    if parsed.package is not None or not _KEY.fullmatch(key):
        raise ConfigError(f"-S {arg!r}: {key!r} is not a dotted params key")
    if parsed.type == OverrideType.DEL:
        if parsed.value_type is not None:  # ~key=VALUE deletes only when the value matches
            raise ConfigError(f"-S {arg!r}: write ~{key} without a value")
        return Override(DELETE, key)
    if parsed.value_type != ValueType.ELEMENT:
        raise ConfigError(f"-S {arg!r} is a sweep; a grid of experiments is `make sweep`")
    ops = {OverrideType.CHANGE: SET, OverrideType.ADD: ADD, OverrideType.FORCE_ADD: FORCE}
    op = ops[parsed.type]
    return Override(op, key, parsed.value())


def apply(raw: dict, args) -> dict:
    """`raw` (nested params) with the `-S` arguments applied in order, as DVC applies them
    to params.yaml: setting a key that does not exist, adding one that does or deleting a
    missing one is a ConfigError, as it is an error in DVC. `raw` is not changed."""
    out = _copy(raw)
    for arg in args:
        item = parse(arg)
        *parents, last = item.key.split(".")
        node = out
        for depth, part in enumerate(parents):
            if not isinstance(node.get(part), dict):
                if item.op not in (ADD, FORCE) or part in node:
                    raise ConfigError(
                        f"-S {arg!r}: params have no {'.'.join(parents[: depth + 1])}"
                    )
                node[part] = {}
            node = node[part]
        if item.op == DELETE:
            if last not in node:
                raise ConfigError(f"-S {arg!r}: params have no {item.key} to delete")
            del node[last]
        elif item.op == ADD and last in node:
            raise ConfigError(f"-S {arg!r}: {item.key} exists already; set it without '+'")
        elif item.op == SET and last not in node:
            raise ConfigError(
                f"-S {arg!r}: params have no {item.key} to set "
                f"(+{item.key}=... adds a new entry, e.g. a source)"
            )
        else:
            node[last] = item.value
    return out


def _copy(raw):
    return {k: _copy(v) for k, v in raw.items()} if isinstance(raw, dict) else raw


def merge(base: dict, override: dict, _prefix: str = "") -> dict:
    """Nested dicts: `override` wins key by key (REPLACED_WHOLE keys as a whole); the
    inputs are not changed. How a preset file lands on params.yaml."""
    out = dict(base)
    for key, value in override.items():
        path = f"{_prefix}{key}"
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        if nested and path not in REPLACED_WHOLE:
            out[key] = merge(out[key], value, f"{path}.")
        else:
            out[key] = value
    return out


def flatten(raw: dict, prefix: str = "") -> dict[str, object]:
    """{'train': {'epochs': 3}} -> {'train.epochs': 3}: the keys `-S` takes."""
    flat = {}
    for key, value in raw.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def diff_args(base: dict, new: dict, _prefix: str = "") -> list[str]:
    """`-S` arguments that turn `base` into `new` (both nested params): deletions first,
    then changed keys, then added ones. A key whose value is equal on both sides is left
    out, so `diff_args(params, merge(params, preset))` is the preset as DVC arguments."""
    gone, changed, added = [], [], []
    for key in base:
        if key not in new:
            gone.append(format_arg(f"{_prefix}{key}", op=DELETE))
    for key, value in new.items():
        path = f"{_prefix}{key}"
        if key not in base:
            added += (
                [format_arg(k, v, ADD) for k, v in flatten({path: value}).items()]
                if isinstance(value, dict) and value
                else [format_arg(path, value, ADD)]
            )
        elif isinstance(value, dict) and isinstance(base[key], dict) and value:
            for arg in diff_args(base[key], value, f"{path}."):
                kind = gone if arg.startswith(DELETE) else added if arg.startswith(ADD) else changed
                kind.append(arg)
        elif value != base[key] or type(value) is not type(base[key]):
            changed.append(format_arg(path, value))
    return gone + changed + added
