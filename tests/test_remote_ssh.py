"""Remote timing over SSH against a real sshd started by the test on 127.0.0.1.

Needs openssh-server + openssh-client (`apt-get install -y openssh-server openssh-client`).
Without them the tests that need sshd skip with one line, except where system tests are
required (CI=true or MAI_REQUIRE_SYSTEM_TESTS=1; .ci/run installs both): there they fail,
since a skip would hide a broken remote path.
"""

from __future__ import annotations

import getpass
import glob
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import free_port, require_program
from pipeline.core.config import ConfigError
from pipeline.device import remote

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/bin/sshd", "/usr/local/sbin/sshd")
SFTP_CANDIDATES = (
    "/usr/lib/openssh/sftp-server",
    "/usr/libexec/openssh/sftp-server",
    "/usr/libexec/sftp-server",
)


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    import keras

    from pipeline.device import tflite

    inp = keras.Input((16, 20, 3), batch_size=1)
    out = keras.layers.Conv2D(1, 3, padding="same", activation="relu")(inp)
    path = tmp_path_factory.mktemp("model") / "model.tflite"
    path.write_bytes(tflite.convert(keras.Model(inp, out), precision="fp32"))
    return path


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    hint = "apt-get install -y openssh-server openssh-client"
    sshd_bin = require_program("sshd", hint, SSHD_CANDIDATES)
    require_program("ssh", hint)
    require_program("ssh-keygen", hint)
    d = tmp_path_factory.mktemp("sshd")
    _keygen(d / "host_key")
    _keygen(d / "client_key")
    shutil.copy(d / "client_key.pub", d / "authorized_keys")
    port = free_port()
    sftp = next((p for p in SFTP_CANDIDATES if os.path.exists(p)), "internal-sftp")
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n"
        f"AuthorizedKeysFile {d}/authorized_keys\nPubkeyAuthentication yes\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "PermitRootLogin prohibit-password\nStrictModes no\n"
        f"Subsystem sftp {sftp}\nLogLevel INFO\n"
    )
    # The client side as a user would write it in ~/.ssh/config; -F keeps ours isolated.
    (d / "ssh_config").write_text(
        f"Host *\n  IdentityFile {d}/client_key\n  IdentitiesOnly yes\n  UserKnownHostsFile "
        f"{d}/known_hosts\n  GlobalKnownHostsFile /dev/null\n  LogLevel ERROR\n"
    )
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
    log = open(d / "sshd.log", "w")
    proc = subprocess.Popen(
        [sshd_bin, "-D", "-e", "-f", str(d / "sshd_config")], stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 15
    while True:
        if proc.poll() is not None:
            pytest.fail(
                f"sshd exited with {proc.returncode}: {(d / 'sshd.log').read_text()[-500:]}"
            )
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail("sshd did not start listening within 15 s")
            time.sleep(0.1)
    # As root (CI) this is root@; an unprivileged sshd can only log in its own user.
    yield {
        "port": port,
        "dir": d,
        "config": d / "ssh_config",
        "key": d / "client_key",
        "device": f"ssh://{getpass.getuser()}@127.0.0.1:{port}",
    }
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _bench_dirs() -> set[str]:
    return set(glob.glob("/tmp/mai-bench.*"))


def test_remote_benchmark_end_to_end(sshd, tiny_model):
    before = _bench_dirs()
    result = remote.time_remote(
        sshd["device"],
        tiny_model,
        python=sys.executable,
        threads=64,
        warmup=1,
        runs=3,
        ssh_config=sshd["config"],
    )
    assert result["device"] == sshd["device"]
    assert result["runtime"] == "ai_edge_litert"
    assert result["runs"] == 3 and len(result["times_ms"]) == 3
    assert 0 < result["min_ms"] <= result["median_ms"] <= result["p90_ms"]
    assert result["input_shape"] == [1, 16, 20, 3] and result["output_finite"]
    assert result["threads_requested"] == 64 and result["threads_capped"] and result["threads"] < 64
    assert result["peak_rss_mb"] > result["baseline_rss_mb"] > 0
    assert _bench_dirs() == before  # the remote temp dir (here: local /tmp) was removed


def test_identity_option_and_missing_runtime(sshd, tiny_model, tmp_path):
    # A python on the host whose ai_edge_litert/tflite_runtime imports fail, like a fresh Pi.
    fake = tmp_path / "fakepkgs"
    for pkg in ("ai_edge_litert", "tflite_runtime"):
        (fake / pkg).mkdir(parents=True)
        (fake / pkg / "__init__.py").write_text(
            f"raise ImportError('simulated: {pkg} not installed')\n"
        )
    python = tmp_path / "python-without-litert"
    python.write_text(f'#!/bin/sh\nPYTHONPATH={fake} exec {sys.executable} "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    with pytest.raises(remote.RemoteError, match=r"no TFLite runtime .*pip install ai-edge-litert"):
        remote.time_remote(
            sshd["device"],
            tiny_model,
            python=str(python),
            threads=1,
            warmup=0,
            runs=1,
            identity=sshd["key"],
            options=[
                f"UserKnownHostsFile={sshd['dir']}/known_hosts",
                "GlobalKnownHostsFile=/dev/null",
            ],
        )


def test_missing_python_on_host(sshd, tiny_model):
    with pytest.raises(remote.RemoteError, match=r"/no/such/python3 not found on the host"):
        remote.time_remote(
            sshd["device"],
            tiny_model,
            python="/no/such/python3",
            threads=1,
            warmup=0,
            runs=1,
            ssh_config=sshd["config"],
        )


def test_auth_failure_is_one_clear_line(sshd, tiny_model, tmp_path):
    _keygen(tmp_path / "stranger")  # a key the host does not know
    with pytest.raises(remote.RemoteError, match="ssh authentication failed") as err:
        remote.time_remote(
            sshd["device"],
            tiny_model,
            python=sys.executable,
            threads=1,
            warmup=0,
            runs=1,
            identity=tmp_path / "stranger",
            options=[
                f"UserKnownHostsFile={sshd['dir']}/known_hosts",
                "GlobalKnownHostsFile=/dev/null",
            ],
        )
    assert "\n" not in str(err.value)


def test_unreachable_host(tiny_model, tmp_path):
    port = free_port()  # nothing listens there
    with pytest.raises(remote.RemoteError, match=r"host unreachable \(connection refused\)"):
        remote.time_remote(
            f"ssh://root@127.0.0.1:{port}",
            tiny_model,
            python="python3",
            threads=1,
            warmup=0,
            runs=1,
            connect_timeout=5,
            options=[f"UserKnownHostsFile={tmp_path}/kh"],
        )


@pytest.mark.parametrize(
    "device",
    [
        "ssh://root@host;rm -rf /",
        "ssh://-oProxyCommand=x@h",
        "ssh://root@-oProxyCommand=x",
        "ssh://root@host:22;id",
        "ssh://root@host:99999",
        "ssh://root@host$(id)",
        "ssh://root@ho st",
        "ssh://host",
        "ssh://root@host/path",
        "root@host",
        "ssh://ro`id`ot@host",
    ],
)
def test_bad_device_strings_rejected_before_any_command(device, monkeypatch):
    def no_subprocess(*a, **k):
        raise AssertionError("a command was started for an invalid device string")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    with pytest.raises(ConfigError, match="benchmark.device"):
        remote.time_remote(device, "missing.tflite", python="python3", threads=1, warmup=0, runs=1)


@pytest.mark.parametrize(
    "python", ["python3; rm -rf /", "-c", "python 3", "$(id)", "py`id`", "", "~/py"]
)
def test_bad_ssh_python_rejected(python):
    with pytest.raises(ConfigError, match="benchmark.ssh_python"):
        remote.validate_python(python)


def test_good_device_strings_parse():
    assert remote.parse_device("ssh://pi@raspberrypi.local") == remote.SshTarget(
        "pi", "raspberrypi.local"
    )
    t = remote.parse_device("ssh://pi@192.168.1.7:2222")
    assert (t.destination, t.port) == ("pi@192.168.1.7", 2222)
    assert remote.parse_device("ssh://u@[::1]:22").destination == "u@::1"
    assert remote.validate_python("/usr/bin/python3.11") == "/usr/bin/python3.11"


def test_benchmark_stage_over_ssh_with_env_config(sshd, tiny_model, tmp_path):
    import json

    import yaml

    root = Path(__file__).resolve().parents[1]
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["benchmark"].update(device=sshd["device"], ssh_python=sys.executable, warmup=0, runs=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "models").mkdir()
    shutil.copy(tiny_model, tmp_path / "models" / "model.tflite")
    env = dict(os.environ, PYTHONPATH=str(root), MAI_SSH_CONFIG=str(sshd["config"]))
    proc = subprocess.run(
        [sys.executable, "-m", "stages.benchmark"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads((tmp_path / "metrics" / "benchmark.json").read_text())
    assert out["device"] == sshd["device"] and out["runs"] == 2
    assert out["runtime_s"] == pytest.approx(out["median_ms"] / 1000.0, rel=1e-6)
    # measured on the device itself: no Pi 4 estimate, and the output says why
    assert (
        out["est_rpi4_ms"] is None
        and "itself" in out["est_rpi4_note"]
        and "no est. Pi 4 ms" in proc.stdout
    )
