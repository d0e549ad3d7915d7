"""Host facts: usable cores (also where the affinity call is missing), the CPU model and its
vector extensions from /proc/cpuinfo text of three kinds of machine, the oneDNN cap, the
framework versions, and what a training run records about them."""

from __future__ import annotations

import os

import pytest

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
    capped = host.facts()
    assert capped["onednn_max_cpu_isa"] == "AVX2" and capped["vector_path"] == "AVX2 (capped)"
    monkeypatch.setenv(host.ONEDNN_OPTS_ENV, "0")
    eigen = host.facts()
    assert eigen["tf_enable_onednn_opts"] == "0"
    assert eigen["vector_path"] == f"{host.EIGEN_PATH}, AVX2 (capped)"
    assert host.hardware(["NVIDIA H200", "NVIDIA H200"]) == "2 x GPU (NVIDIA H200)"
