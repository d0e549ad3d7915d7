"""TF_CONFIG, the environment variable that tells a multi-worker training process its cluster.

    {"cluster": {"worker": ["hosta:23456", "hostb:23456"]}, "task": {"type": "worker", "index": 0}}

TensorFlow parses it itself when the strategy starts, and answers a mistake with a traceback
(JSONDecodeError, or an error from deep in the strategy): here it is read and checked first,
and a mistake is one line naming what is wrong (exit 2). No TensorFlow here, so the train
stage checks it before TensorFlow loads.
"""

from __future__ import annotations

import json
import os

from pipeline.core.errors import ConfigError

ENV = "TF_CONFIG"
EXAMPLE = (
    '{"cluster": {"worker": ["hosta:23456", "hostb:23456"]}, '
    '"task": {"type": "worker", "index": 0}}'
)


def _error(problem: str) -> ConfigError:
    return ConfigError(f"{ENV}: {problem} (expected e.g. {EXAMPLE}; docs/scale-out.md)")


def _check_address(role: str, i: int, address) -> None:
    host, _, port = address.rpartition(":") if isinstance(address, str) else ("", "", "")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise _error(f"cluster.{role}[{i}]={address!r} is not HOST:PORT")


def read_tf_config() -> dict:
    """TF_CONFIG parsed and checked ({} when unset or empty): a JSON object whose `cluster`
    maps each role to its HOST:PORT addresses (each address once) and whose `task` is this
    process's role and index in it. A ConfigError naming the problem otherwise."""
    text = os.environ.get(ENV, "")
    if not text.strip():
        return {}
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        raise _error(
            f"not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})"
        ) from None
    if not isinstance(config, dict):
        raise _error(f"must be a JSON object, got {type(config).__name__}")
    cluster, task = config.get("cluster"), config.get("task")
    if cluster is None and task is None:
        return config  # nothing about a cluster: one process
    if not isinstance(cluster, dict) or not cluster:
        raise _error(f"cluster must map roles to lists of addresses, got {cluster!r}")
    seen = {}
    for role, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses:
            raise _error(f"cluster.{role} must be a non-empty list of HOST:PORT, got {addresses!r}")
        for i, address in enumerate(addresses):
            _check_address(role, i, address)
            if address in seen:
                raise _error(f"{address} is in the cluster twice ({seen[address]} and {role}[{i}])")
            seen[address] = f"{role}[{i}]"
    if not isinstance(task, dict):
        raise _error(f'task must be this process\'s {{"type": ROLE, "index": N}}, got {task!r}')
    role, index = task.get("type"), task.get("index", 0)
    if role not in cluster:
        raise _error(f"task.type={role!r} is not a role of the cluster ({', '.join(cluster)})")
    if isinstance(index, bool) or not isinstance(index, int):
        raise _error(f"task.index must be an int, got {index!r}")
    if not 0 <= index < len(cluster[role]):
        raise _error(
            f"task.index={index} is out of range: cluster.{role} has {len(cluster[role])} "
            f"address(es), so 0..{len(cluster[role]) - 1}"
        )
    return config
