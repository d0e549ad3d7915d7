"""Facts about the machine a stage runs on: usable cores, CPU model and vector extensions,
the framework versions and a one-line hardware string.

Nothing here imports TensorFlow: the versions come from the installed distributions, so
the benchmark's calibration key and the dataset code stay light. The stand-alone device
runner (pipeline/device/tflite_runner.py) keeps its own copy of `usable_cpus`, because it
runs on devices that have no copy of the project.

Two machines with the same code, params and data can train different weights: TensorFlow's
oneDNN kernels pick their code path (AVX2, AVX-512, AMX) at run time, and the rounding
differs between paths. `vector_extensions` names what the CPU offers, `ONEDNN_ISA_ENV` what
oneDNN was capped to, and `cpu_id` / `cpu_flags_sha256` which CPU it is: two CPUs on the same
path still trained different weights (an AVX2 EPYC and an AVX-512 one capped at AVX2,
docs/reproducibility.md), so the path alone does not say two machines agree.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
from importlib import metadata

CPUINFO = "/proc/cpuinfo"
# oneDNN's ISA cap, e.g. ONEDNN_MAX_CPU_ISA=AVX2 runs an AVX-512 machine on the AVX2 path.
ONEDNN_ISA_ENV = "ONEDNN_MAX_CPU_ISA"
# TensorFlow's switch for its oneDNN kernels: 0 = Eigen's own, 1 = oneDNN's. Unset, TensorFlow
# turns them on by itself on x86-64 Linux only where the CPU has one of ONEDNN_DEFAULT_FLAGS
# (its "CPUs with neural-network-focused features" rule, since TF 2.9): an AVX2-only or
# AVX-512-without-VNNI CPU trains on Eigen's kernels unless the variable says otherwise.
ONEDNN_OPTS_ENV = "TF_ENABLE_ONEDNN_OPTS"
ONEDNN_OFF = ("0", "false")
ONEDNN_ON = ("1", "true")
ONEDNN_DEFAULT_FLAGS = (
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)
X86_64_MACHINES = ("x86_64", "amd64")
EIGEN_PATH = "Eigen (oneDNN off)"
# (label, flag) in the order they are reported: the x86 flags of /proc/cpuinfo (Linux) or of
# sysctl machdep.cpu (macOS, read in lower case), the Arm features of /proc/cpuinfo.
VECTOR_EXTENSIONS = (
    ("AVX2", "avx2"),
    ("FMA", "fma"),
    ("AVX-512", "avx512f"),
    ("AVX-512 VNNI", "avx512_vnni"),
    ("AVX-512 BF16", "avx512_bf16"),
    ("AMX", "amx_tile"),
    ("NEON", "asimd"),  # AArch64; 32-bit Arm kernels call it neon (NEON_FLAGS)
    ("SVE", "sve"),
)
NEON_FLAGS = ("asimd", "neon")
# The float32 code path a CPU gives TensorFlow's oneDNN kernels, widest first (AMX and the
# VNNI/BF16 additions serve int8 and bfloat16 only).
VECTOR_PATHS = ("AVX-512", "AVX2", "SVE", "NEON")
ARM64_MACHINES = ("arm64", "aarch64")  # NEON is part of every ARMv8-A core
# CPU model keys of /proc/cpuinfo, best first: x86 `model name`, Raspberry Pi `Model`, `Hardware`.
MODEL_KEYS = ("model name", "Model", "Hardware")
FLAG_KEYS = ("flags", "Features")
# Which CPU it is, beyond its marketing name (a VM often says only `AMD EPYC`): the fields of
# /proc/cpuinfo as (label, key), x86 first, then Arm's (implementer, part, variant, revision).
X86_ID_KEYS = (
    ("", "vendor_id"),
    ("family", "cpu family"),
    ("model", "model"),
    ("stepping", "stepping"),
)
ARM_ID_KEYS = (
    ("implementer", "CPU implementer"),
    ("part", "CPU part"),
    ("variant", "CPU variant"),
    ("revision", "CPU revision"),
)
# The same on macOS with an Intel CPU (sysctl machdep.cpu.*); Apple silicon has none of them.
MACOS_ID_SYSCTLS = (
    ("", "machdep.cpu.vendor"),
    ("family", "machdep.cpu.family"),
    ("model", "machdep.cpu.model"),
    ("stepping", "machdep.cpu.stepping"),
)
UNKNOWN = "unknown"
FLAGS_DIGEST_CHARS = 12
# The distributions that provide each framework, in the order they are looked up.
FRAMEWORKS = {"tensorflow": ("tensorflow", "tensorflow-cpu"), "keras": ("keras",)}
NONE = "none"  # an absent version, extension list or cap


def usable_cpus() -> int:
    """Cores this process may run on (respects taskset and container limits); the machine's
    count where the affinity call does not exist (macOS, Windows)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _fields(text: str) -> dict[str, str]:
    """`key: value` lines of /proc/cpuinfo text, the first core's (like every core's)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip():
            fields.setdefault(key.strip(), value.strip())
    return fields


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """(CPU model, lower-case flags) of /proc/cpuinfo text; ("", {}) for what is missing.
    The model is the first of MODEL_KEYS present (a Pi lists `Hardware` before `Model`)."""
    fields = _fields(text)
    model = next((fields[key] for key in MODEL_KEYS if key in fields), "")
    flags = next((fields[key] for key in FLAG_KEYS if key in fields), "")
    return model, frozenset(flags.lower().split())


def _identity(values: dict[str, str], keys: tuple[tuple[str, str], ...]) -> str:
    """`AuthenticAMD family 25 model 17 stepping 1` of the `keys` found in `values`; "" unless
    at least one is there."""
    found = [(label, values[key]) for label, key in keys if values.get(key, "").strip()]
    return " ".join(f"{label} {value}".strip() for label, value in found) if found else ""


def parse_cpu_id(text: str) -> str:
    """The CPU's identity in /proc/cpuinfo text: vendor, family, model, stepping on x86;
    implementer, part, variant, revision on Arm; UNKNOWN where the text has none."""
    fields = _fields(text)
    return _identity(fields, X86_ID_KEYS) or _identity(fields, ARM_ID_KEYS) or UNKNOWN


def flags_digest(flags: frozenset[str]) -> str:
    """A short sha256 of the sorted flags (or features): equal exactly when the kernel reports
    the same set; NONE without flags."""
    if not flags:
        return NONE
    text = " ".join(sorted(flags)).encode()
    return hashlib.sha256(text).hexdigest()[:FLAGS_DIGEST_CHARS]


def _sysctl(*names: str) -> str:
    """macOS: the values of sysctl names joined by spaces; "" where the call fails."""
    try:
        proc = subprocess.run(["sysctl", "-n", *names], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return " ".join(proc.stdout.split()) if proc.returncode == 0 else ""


@functools.lru_cache(maxsize=1)
def _cpu() -> tuple[str, frozenset[str], str]:
    try:
        with open(CPUINFO) as f:
            text = f.read()
    except OSError:
        text = ""
    model, flags = parse_cpuinfo(text)
    cpu_id = parse_cpu_id(text)
    if platform.system() == "Darwin":
        model = model or _sysctl("machdep.cpu.brand_string")
        features = _sysctl("machdep.cpu.features", "machdep.cpu.leaf7_features")
        flags = flags or frozenset(features.lower().split())
        if cpu_id == UNKNOWN:
            values = {name: _sysctl(name) for _, name in MACOS_ID_SYSCTLS}
            cpu_id = _identity(values, MACOS_ID_SYSCTLS) or UNKNOWN
    return model or platform.processor() or platform.machine() or UNKNOWN, flags, cpu_id


def cpu_model() -> str:
    """`AMD EPYC 9454`, `Intel(R) Xeon(R) Processor`, `Raspberry Pi 4 Model B Rev 1.4`, ..."""
    return _cpu()[0]


def cpu_id() -> str:
    """`AuthenticAMD family 25 model 17 stepping 1`, `implementer 0x41 part 0xd08 ...`, or
    UNKNOWN: which CPU this is, where the model name is as vague as `AMD EPYC`."""
    return _cpu()[2]


def cpu_flags_sha256() -> str:
    """flags_digest of this CPU's flags: two machines whose digests differ offer different
    instructions (docs/reproducibility.md)."""
    return flags_digest(_cpu()[1])


def extensions_from_flags(flags: frozenset[str], machine: str) -> tuple[str, ...]:
    """The VECTOR_EXTENSIONS labels that `flags` (or the architecture itself) provide."""
    neon = bool(flags & set(NEON_FLAGS)) or machine in ARM64_MACHINES
    return tuple(
        label for label, flag in VECTOR_EXTENSIONS if flag in flags or (flag == "asimd" and neon)
    )


def vector_extensions() -> tuple[str, ...]:
    """The CPU's vector extensions among VECTOR_EXTENSIONS, e.g. ("AVX2", "FMA", "AVX-512")."""
    return extensions_from_flags(_cpu()[1], platform.machine().lower())


def vector_path(extensions: tuple[str, ...], cap: str = "", onednn: bool = True) -> str:
    """`AVX-512`, `AVX2`, `NEON`...: the widest of VECTOR_PATHS the CPU has, or the oneDNN cap
    in force (`AVX2 (capped)`), after EIGEN_PATH when oneDNN's kernels are off (the cap still
    counts then: the remaining matrix kernels dispatch on the CPU too, measured in
    docs/reproducibility.md); what tells two machines' float32 training apart."""
    path = f"{cap} (capped)" if cap else next((p for p in VECTOR_PATHS if p in extensions), NONE)
    return path if onednn else f"{EIGEN_PATH}, {path}"


def onednn_by_default(flags: frozenset[str], system: str, machine: str) -> bool:
    """Whether TensorFlow runs its oneDNN kernels with TF_ENABLE_ONEDNN_OPTS unset: on x86-64
    Linux with one of ONEDNN_DEFAULT_FLAGS, nowhere else (aarch64 wheels as well: not measured
    here, taken as off, the variable decides where it is set)."""
    on_x86_linux = system == "Linux" and machine.lower() in X86_64_MACHINES
    return on_x86_linux and bool(flags & set(ONEDNN_DEFAULT_FLAGS))


def onednn_enabled() -> bool:
    """Whether TensorFlow's oneDNN kernels run: as TF_ENABLE_ONEDNN_OPTS says, else by
    onednn_by_default for this CPU."""
    setting = os.environ.get(ONEDNN_OPTS_ENV, "").strip().lower()
    if setting in ONEDNN_OFF or setting in ONEDNN_ON:
        return setting in ONEDNN_ON
    return onednn_by_default(_cpu()[1], platform.system(), platform.machine())


def isa_cap() -> str:
    """The oneDNN ISA cap in force (ONEDNN_MAX_CPU_ISA), "" when oneDNN may use every extension."""
    return os.environ.get(ONEDNN_ISA_ENV, "").strip()


def installed(*distributions: str) -> str:
    """`name version` of the first installed distribution of `distributions`, else NONE."""
    for name in distributions:
        try:
            return f"{name} {metadata.version(name)}"
        except metadata.PackageNotFoundError:
            continue
    return NONE


def framework_versions() -> dict[str, str]:
    """{"tensorflow": "2.21.0", "keras": "3.15.1"}, read without importing either."""
    return {name: installed(*dists).rpartition(" ")[2] for name, dists in FRAMEWORKS.items()}


def hardware(gpus: tuple[str, ...] | list[str] = ()) -> str:
    """`2 x GPU (NVIDIA H100 ...)` for the given GPU names, else `CPU (<model>), 2 cores`."""
    if gpus:
        return f"{len(gpus)} x GPU ({', '.join(sorted(set(gpus)))})"
    return f"CPU ({cpu_model()}), {usable_cpus()} cores"


def facts() -> dict:
    """What a result records about where it was made (metrics/train.json `host`): the CPU (its
    name, identity and a digest of its flags), its vector extensions, the oneDNN cap and the
    path they leave, cores, architecture, framework versions."""
    extensions = vector_extensions()
    return {
        "cpu": cpu_model(),
        "cpu_id": cpu_id(),
        "cpu_flags_sha256": cpu_flags_sha256(),
        "cpu_extensions": ", ".join(extensions) or NONE,
        "onednn_max_cpu_isa": isa_cap() or NONE,
        "tf_enable_onednn_opts": os.environ.get(ONEDNN_OPTS_ENV, "").strip() or NONE,
        "vector_path": vector_path(extensions, isa_cap(), onednn_enabled()),
        "cores": usable_cpus(),
        "machine": platform.machine(),
        **framework_versions(),
    }
