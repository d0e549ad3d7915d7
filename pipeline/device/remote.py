"""Timing on a device over SSH: `benchmark.device: ssh://user@host[:port]`.

The model and the self-contained `tflite_runner.py` are copied into a fresh temp dir on
the host, run there with `benchmark.ssh_python`, and the dir is removed afterwards.
Every value that reaches a command line is validated against a strict pattern and
commands are argument lists (never a local shell); the one string the remote shell
does see is built from validated, shlex-quoted parts.

Key-based auth only (BatchMode=yes: a password prompt would hang a pipeline). To pick
a key or an ssh config, pass `identity=` / `ssh_config=` / extra `-o` options, or set
MAI_SSH_IDENTITY / MAI_SSH_CONFIG in the environment (read by `ssh_settings_from_env`).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path

from pipeline.core.config import (  # noqa: F401  (re-exported)
    SshTarget,
    is_remote,
    parse_device,
    validate_python,
)
from pipeline.core.errors import ConfigError, RemoteError
from pipeline.device.timing import RUNNER, parse_runner_output, runner_error

RUNTIME_MISSING_EXIT = 3  # tflite_runner.py's exit status when no TFLite runtime imports

_REMOTE_DIR_RE = re.compile(r"/[A-Za-z0-9_./-]*mai-bench\.[A-Za-z0-9.]+")
_OPTION_RE = re.compile(r"[A-Za-z]+=[^\s].*")


def ssh_settings_from_env(env=None) -> dict:
    """identity / ssh_config from MAI_SSH_IDENTITY / MAI_SSH_CONFIG (unset = ssh defaults)."""
    env = os.environ if env is None else env
    return {
        "identity": env.get("MAI_SSH_IDENTITY") or None,
        "ssh_config": env.get("MAI_SSH_CONFIG") or None,
    }


class _Ssh:
    """Builds ssh/scp argument lists for one target and classifies their failures."""

    def __init__(self, target, *, identity, ssh_config, options, connect_timeout):
        common = [
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=accept-new",
            "-o",
            f"ConnectTimeout={int(connect_timeout)}",
        ]
        if ssh_config:
            common += ["-F", str(_existing(ssh_config, "ssh config"))]
        if identity:
            common += ["-i", str(_existing(identity, "ssh identity")), "-o", "IdentitiesOnly=yes"]
        for option in options:
            if not _OPTION_RE.fullmatch(option):
                raise ConfigError(f"ssh option {option!r} must look like Key=value")
            common += ["-o", option]
        self.target = target
        self.ssh = ["ssh", *common, "-T"] + (["-p", str(target.port)] if target.port else [])
        self.scp = ["scp", "-q", *common] + (["-P", str(target.port)] if target.port else [])

    def run(self, remote_cmd: str, *, timeout: float, what: str) -> subprocess.CompletedProcess:
        argv = [*self.ssh, "--", self.target.destination, remote_cmd]
        return self._call(argv, timeout=timeout, what=what)

    def copy(self, files: Sequence[Path], remote_dir: str, *, timeout: float) -> None:
        host = self.target.host  # scp wants [v6] brackets kept
        argv = [*self.scp, "--", *map(str, files), f"{self.target.user}@{host}:{remote_dir}/"]
        proc = self._call(argv, timeout=timeout, what="copying the model")
        if proc.returncode != 0:
            raise RemoteError(self.failure(proc, "copying the model"))

    def _call(self, argv, *, timeout, what):
        try:
            return subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
            )
        except FileNotFoundError:
            raise RemoteError(
                f"{argv[0]} not found on this machine; install openssh-client"
            ) from None
        except subprocess.TimeoutExpired:
            raise RemoteError(f"{self.target}: {what} timed out after {timeout:.0f} s") from None

    def failure(self, proc: subprocess.CompletedProcess, what: str) -> str:
        err = proc.stderr
        if "Permission denied" in err or "Too many authentication failures" in err:
            return (
                f"{self.target}: ssh authentication failed (key-based only; add your public key to "
                "the host's authorized_keys or pass an identity via MAI_SSH_IDENTITY)"
            )
        if "Host key verification failed" in err or "IDENTIFICATION HAS CHANGED" in err:
            return (
                f"{self.target}: host key verification failed "
                "(the host's key changed? check known_hosts)"
            )
        if "Could not resolve hostname" in err:
            return f"{self.target}: host unreachable (cannot resolve the host name)"
        for text in (
            "Connection refused",
            "timed out",
            "No route to host",
            "Network is unreachable",
            "Connection closed",
            "Connection reset",
        ):
            if text in err:
                return f"{self.target}: host unreachable ({text.lower()})"
        lines = [line for line in err.splitlines() if line.strip()]
        last = lines[-1].strip()[:200] if lines else f"exit status {proc.returncode}"
        return f"{self.target}: {what} failed ({last})"


def _existing(path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{path}: {what} file not found")
    return path


def time_remote(
    device: str,
    model_path,
    *,
    python: str,
    threads: int,
    warmup: int,
    runs: int,
    identity=None,
    ssh_config=None,
    options: Sequence[str] = (),
    connect_timeout: int = 10,
    timeout_s: float = 900,
) -> dict:
    """Time `model_path` on the ssh device; the runner's JSON dict plus `device`/`host`."""
    target = parse_device(device)
    python = validate_python(python)
    model_path = Path(model_path)
    if not model_path.is_file():
        raise RemoteError(f"{model_path}: model file not found")
    ssh = _Ssh(
        target,
        identity=identity,
        ssh_config=ssh_config,
        options=options,
        connect_timeout=connect_timeout,
    )
    step_timeout = connect_timeout + 60

    proc = ssh.run(
        "mktemp -d -t mai-bench.XXXXXXXX", timeout=step_timeout, what="creating a temp dir"
    )
    if proc.returncode != 0:
        raise RemoteError(ssh.failure(proc, "creating a temp dir"))
    remote_dir = proc.stdout.strip()
    if not _REMOTE_DIR_RE.fullmatch(remote_dir):
        raise RemoteError(f"{target}: unexpected temp dir name from mktemp: {remote_dir[:100]!r}")
    try:
        ssh.copy([model_path, RUNNER], remote_dir, timeout=step_timeout + 300)
        model_remote = f"{remote_dir}/{model_path.name}"
        cmd = " ".join(
            shlex.quote(part)
            for part in (
                python,
                f"{remote_dir}/{RUNNER.name}",
                model_remote,
                "--threads",
                str(int(threads)),
                "--warmup",
                str(int(warmup)),
                "--runs",
                str(int(runs)),
            )
        )
        proc = ssh.run(cmd, timeout=timeout_s, what="running the benchmark")
    finally:
        # Best effort: a failed cleanup must not hide the real result or error.
        ssh.run(f"rm -rf -- {shlex.quote(remote_dir)}", timeout=step_timeout, what="cleaning up")

    if proc.returncode == RUNTIME_MISSING_EXIT or "no TFLite runtime" in proc.stderr:
        raise RemoteError(
            f"{target}: no TFLite runtime for {python} on the host; there run "
            f"`{python} -m pip install ai-edge-litert` (or tflite-runtime)"
        )
    if proc.returncode == 127 or (
        proc.returncode != 0
        and "No such file or directory" in proc.stderr
        and python in proc.stderr
    ):
        raise RemoteError(f"{target}: {python} not found on the host (set benchmark.ssh_python)")
    if proc.returncode == 255:
        raise RemoteError(ssh.failure(proc, "running the benchmark"))
    if proc.returncode != 0:
        raise RemoteError(runner_error(proc.stderr, proc.returncode, where=str(target)))
    result = parse_runner_output(proc.stdout, where=str(target))
    result["device"] = str(target)
    return result
