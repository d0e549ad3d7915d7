"""Host facts: usable cores (also where the affinity call is missing), the CPU model and its
vector extensions from /proc/cpuinfo text of three kinds of machine, the oneDNN cap, the
framework versions, and what a training run records about them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO
from pipeline.core import host

EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9454 48-Core Processor
flags\t\t: fpu vme sse sse2 avx fma avx2 avx512f avx512dq avx512_vnni avx512_bf16

processor\t: 1
model name\t: AMD EPYC 9454 48-Core Processor
flags\t\t: fpu vme sse sse2 avx fma avx2 avx512f avx512dq avx512_vnni avx512_bf16
"""
# An AVX2 machine without AVX-512 (Haswell).
HASWELL = """processor\t: 0
model name\t: Intel(R) Xeon(R) CPU E5-2680 v3 @ 2.50GHz
flags\t\t: fpu sse sse2 avx fma avx2 bmi2
"""
# A Raspberry Pi 4, 64-bit OS: Arm features, the board after the cores.
PI4 = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41

Hardware\t: BCM2835
Revision\t: c03114
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""


@pytest.mark.parametrize(
    "text, machine, model, extensions",
    [
        (
            EPYC,
            "x86_64",
            "AMD EPYC 9454 48-Core Processor",
            ("AVX2", "FMA", "AVX-512", "AVX-512 VNNI", "AVX-512 BF16"),
        ),
        (HASWELL, "x86_64", "Intel(R) Xeon(R) CPU E5-2680 v3 @ 2.50GHz", ("AVX2", "FMA")),
        (PI4, "aarch64", "Raspberry Pi 4 Model B Rev 1.4", ("NEON",)),
        ("Features\t: half thumb vfp neon\n", "armv7l", "", ("NEON",)),  # 32-bit Arm says neon
        ("", "arm64", "", ("NEON",)),  # Apple silicon: no cpuinfo, NEON in every ARMv8 core
        ("", "x86_64", "", ()),
    ],
)
def test_model_and_vector_extensions_from_cpuinfo(text, machine, model, extensions):
    found_model, flags = host.parse_cpuinfo(text)
    assert found_model == model
    assert host.extensions_from_flags(flags, machine) == extensions


# Two cloud VMs that both call themselves `AMD EPYC` (issue #35): an AVX-512 one (Zen 4,
# family 25 model 17) and an AVX2 one without AVX-512 (Zen 2, family 23 model 49). The first
# capped at AVX2 and the second trained different models on "the AVX2 path".
EPYC_AVX512 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
stepping\t: 1
flags\t\t: fpu sse sse2 avx fma avx2 avx512f avx512dq avx512_vnni avx512_bf16
"""
EPYC_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 23
model\t\t: 49
model name\t: AMD EPYC
stepping\t: 0
flags\t\t: fpu sse sse2 avx fma avx2
"""


@pytest.mark.parametrize(
    "text, cpu_id",
    [
        (EPYC_AVX512, "AuthenticAMD family 25 model 17 stepping 1"),
        (EPYC_AVX2, "AuthenticAMD family 23 model 49 stepping 0"),
        (PI4, "implementer 0x41"),  # PI4 above lists only the implementer
        (
            "CPU implementer\t: 0x41\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n",
            "implementer 0x41 part 0xd08 variant 0x0 revision 3",
        ),
        (HASWELL, host.UNKNOWN),  # a VM that hides the fields
        ("", host.UNKNOWN),
    ],
)
def test_cpu_identity_from_cpuinfo(text, cpu_id):
    assert host.parse_cpu_id(text) == cpu_id


def test_flags_digest_follows_the_set_of_flags_not_their_order():
    _, flags = host.parse_cpuinfo(EPYC_AVX2)
    digest = host.flags_digest(flags)
    assert len(digest) == host.FLAGS_DIGEST_CHARS and digest != host.NONE
    assert host.flags_digest(frozenset(reversed(sorted(flags)))) == digest
    assert host.flags_digest(flags | {"avx512f"}) != digest
    assert host.flags_digest(frozenset()) == host.NONE


@pytest.fixture
def cpuinfo(tmp_path, monkeypatch):
    """facts() of a machine whose /proc/cpuinfo says `text` (on any OS the test runs on)."""
    monkeypatch.setattr(host.platform, "system", lambda: "Linux")
    monkeypatch.setattr(host.platform, "machine", lambda: "x86_64")  # these texts are x86's

    def facts_of(text: str, cap: str = "") -> dict:
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        monkeypatch.setattr(host, "CPUINFO", str(path))
        if cap:
            monkeypatch.setenv(host.ONEDNN_ISA_ENV, cap)
        else:
            monkeypatch.delenv(host.ONEDNN_ISA_ENV, raising=False)
        monkeypatch.delenv(host.ONEDNN_OPTS_ENV, raising=False)
        host._cpu.cache_clear()
        return host.facts()

    yield facts_of
    host._cpu.cache_clear()  # the real machine's again


def test_two_cpus_on_the_avx2_path_are_told_apart(cpuinfo):
    """The issue's two `AMD EPYC` machines: same name, both on AVX2 float32 kernels, different
    models. Their records differ in what tells them apart: the CPU's identity and its flags,
    the cap, which says the AVX-512 one was held back, and the kernels: without VNNI the AVX2
    one runs Eigen's, as TensorFlow leaves oneDNN off there by default."""
    capped, plain = cpuinfo(EPYC_AVX512, cap="AVX2"), cpuinfo(EPYC_AVX2)
    assert capped["cpu"] == plain["cpu"] == "AMD EPYC"
    assert capped["vector_path"] == "AVX2 (capped)"
    assert plain["vector_path"] == f"{host.EIGEN_PATH}, AVX2"
    assert capped["cpu_id"] == "AuthenticAMD family 25 model 17 stepping 1"
    assert plain["cpu_id"] == "AuthenticAMD family 23 model 49 stepping 0"
    assert capped["cpu_flags_sha256"] != plain["cpu_flags_sha256"]
    assert cpuinfo(EPYC_AVX2)["cpu_flags_sha256"] == plain["cpu_flags_sha256"]  # same machine
    unknown = cpuinfo("")
    assert unknown["cpu_id"] == host.UNKNOWN and unknown["cpu_flags_sha256"] == host.NONE


@pytest.mark.parametrize(
    "extensions, cap, onednn, path",
    [
        (("AVX2", "FMA", "AVX-512", "AVX-512 VNNI", "AMX"), "", True, "AVX-512"),
        (("AVX2", "FMA", "AVX-512"), "AVX2", True, "AVX2 (capped)"),
        (("AVX2", "FMA", "AVX-512"), "AVX2", False, f"{host.EIGEN_PATH}, AVX2 (capped)"),
        (("AVX2", "FMA", "AVX-512"), "", False, f"{host.EIGEN_PATH}, AVX-512"),
        (("AVX2", "FMA"), "", True, "AVX2"),
        (("NEON",), "", True, "NEON"),
        ((), "", True, host.NONE),
    ],
)
def test_vector_path_is_the_widest_float32_path_the_cap_or_eigen(extensions, cap, onednn, path):
    assert host.vector_path(extensions, cap, onednn) == path


@pytest.mark.parametrize(
    "flags, system, machine, on",
    [
        ({"avx2", "fma", "avx512f", "avx512_vnni"}, "Linux", "x86_64", True),  # Cascade Lake on
        ({"avx2", "fma", "avx_vnni"}, "Linux", "x86_64", True),  # Alder Lake
        ({"avx2", "fma", "avx512f", "amx_tile"}, "Linux", "x86_64", True),
        ({"avx2", "fma", "avx512f"}, "Linux", "x86_64", False),  # Skylake-SP: AVX-512, no VNNI
        ({"avx2", "fma"}, "Linux", "x86_64", False),  # AVX2 only (Zen 2/3)
        ({"avx2", "fma", "avx512_vnni"}, "Darwin", "x86_64", False),
        ({"asimd", "sve"}, "Linux", "aarch64", False),
    ],
)
def test_onednn_default_is_tensorflows_rule(flags, system, machine, on):
    assert host.onednn_by_default(frozenset(flags), system, machine) is on


@pytest.mark.parametrize("setting", [None, "0", "1"])
def test_onednn_enabled_says_what_tensorflow_does_on_this_cpu(setting):
    """TensorFlow itself logs `oneDNN custom operations are on` when it runs them: with the
    variable unset, that is this CPU's default, which the suite meets on every machine."""
    unset = (host.ONEDNN_OPTS_ENV, "TF_CPP_MIN_LOG_LEVEL")  # the log line is at INFO
    env = {k: v for k, v in os.environ.items() if k not in unset}
    if setting is not None:
        env[host.ONEDNN_OPTS_ENV] = setting
    code = "from pipeline.core import host; import tensorflow; print(host.onednn_enabled())"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    said_on = "oneDNN custom operations are on" in proc.stderr
    assert proc.stdout.split()[-1] == str(said_on), proc.stderr[-2000:]


def test_usable_cpus_falls_back_to_the_core_count_without_affinity(monkeypatch):
    """macOS has no os.sched_getaffinity: the machine's count, never an AttributeError."""
    if hasattr(os, "sched_getaffinity"):
        assert host.usable_cpus() == len(os.sched_getaffinity(0))
        monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 7)
    assert host.usable_cpus() == 7


def test_facts_name_this_machine_the_cap_and_the_installed_frameworks(monkeypatch):
    import keras
    import tensorflow as tf

    monkeypatch.delenv(host.ONEDNN_ISA_ENV, raising=False)
    monkeypatch.delenv(host.ONEDNN_OPTS_ENV, raising=False)
    facts = host.facts()
    assert facts["tensorflow"] == tf.__version__ and facts["keras"] == keras.__version__
    assert facts["cores"] == host.usable_cpus() and facts["onednn_max_cpu_isa"] == host.NONE
    assert facts["cpu"] == host.cpu_model() and facts["cpu"] in host.hardware()
    if os.path.isfile(host.CPUINFO):  # Linux: the same model and extensions as the file says
        with open(host.CPUINFO) as f:
            model, flags = host.parse_cpuinfo(f.read())
        assert facts["cpu"] == model
        assert ("AVX-512" in facts["cpu_extensions"].split(", ")) == ("avx512f" in flags)
    monkeypatch.setenv(host.ONEDNN_ISA_ENV, "AVX2")
    monkeypatch.setenv(host.ONEDNN_OPTS_ENV, "1")  # on, whatever this CPU's default
    capped = host.facts()
    assert capped["onednn_max_cpu_isa"] == "AVX2" and capped["vector_path"] == "AVX2 (capped)"
    monkeypatch.setenv(host.ONEDNN_OPTS_ENV, "0")
    eigen = host.facts()
    assert eigen["tf_enable_onednn_opts"] == "0"
    assert eigen["vector_path"] == f"{host.EIGEN_PATH}, AVX2 (capped)"
    assert host.hardware(["NVIDIA H200", "NVIDIA H200"]) == "2 x GPU (NVIDIA H200)"
