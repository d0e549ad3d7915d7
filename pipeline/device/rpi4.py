"""An estimate of the Raspberry Pi 4 latency from a local timing, calibrated on four MobileNets.

XNNPACK publishes multi-threaded fp32 latencies of MobileNet v1, v2, v3-Large and v3-Small
(224x224) on a Raspberry Pi 4 (PUBLISHED_RPI4_MS). Timing the same four models here, with
the same runtime and thread count as the model, gives four Pi/local ratios:

    est_rpi4_ms = local median x median(ratios), range local median x min..max(ratios)

It is an estimate, never a measurement: the submission's runtime stays the measured one.
The calibration is measured once per machine (CPU model, identity and flags, usable cores),
runtime and converter version, reference models and thread count (calibration_key): the
four references run in the same fresh process, right after the model, and the result is
cached as JSON (with the reference .tflite files) under `cache_dir()`. Later timings add
only the smallest reference (ANCHOR, milliseconds), which tells whether the machine still
runs as fast as when it was calibrated.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import re
import statistics
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from pipeline.core import host
from pipeline.core.errors import TimingError
from pipeline.core.files import atomic_path, write_json
from pipeline.device import timing

# XNNPACK README, multi-threaded, Raspberry Pi 4 (BCM2711), random weights, fp32, 224x224
# (Feb 2020; ../shared/CHALLENGE.md).
PUBLISHED_RPI4_MS = {
    "mobilenet_v1": 75.0,
    "mobilenet_v2": 44.0,
    "mobilenet_v3_large": 41.0,
    "mobilenet_v3_small": 14.0,
}
REFERENCE_SIZE = 224
# Part of the cache key: bump it when the reference models or what is timed change.
CALIBRATION_VERSION = 1
CACHE_ENV = "MAI_CACHE_DIR"
LABEL = "est. Pi 4 ms"
# The cheapest reference, timed with every model to check that a cached calibration still
# holds: slower or faster by more than MAX_DRIFT times, it is measured again.
ANCHOR = "mobilenet_v3_small"
MAX_DRIFT = 1.25
ESTIMATE_KEYS = (
    "est_rpi4_ms",
    "est_rpi4_ms_lo",
    "est_rpi4_ms_hi",
    "est_rpi4_ratio",
    "est_rpi4_ratios",
    "est_rpi4_note",
)
NOTE = (
    "estimate, not a measurement: local median x the median of published Pi 4 / local latency of "
    "4 fp32 MobileNets (XNNPACK figures); lo..hi from the ratios' min..max"
)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cache_dir() -> Path:
    """$MAI_CACHE_DIR, else $XDG_CACHE_HOME/mai-depth, else ~/.cache/mai-depth."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mai-depth"


def calibration_key(threads: int) -> dict:
    """What a calibration holds for; read without importing the runtime or TensorFlow.

    The machine is its CPU (name, identity and flags: a VM's name may be no more than
    `AMD EPYC`, docs/reproducibility.md), architecture and usable cores, not its host name:
    a cache shared by identical machines holds for all of them, and the anchor check catches
    one that runs slower. The model timed, warmup and runs are not in it: the ratios are the
    references'.
    """
    return {
        "version": CALIBRATION_VERSION,
        "reference_size": REFERENCE_SIZE,
        "cpu": host.cpu_model(),
        "cpu_id": host.cpu_id(),
        "cpu_flags_sha256": host.cpu_flags_sha256(),
        "machine": platform.machine(),
        "cores": host.usable_cpus(),
        "threads": timing.capped_threads(threads),
        "runtime": host.installed(
            "ai-edge-litert", "tflite-runtime"
        ),  # the runner's preference order
        "converter": host.installed(
            *host.FRAMEWORKS["tensorflow"]
        ),  # made the reference .tflite files
    }


def calibration_path(key: Mapping, directory: Path | None = None) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(directory or cache_dir()) / f"rpi4-calibration-{digest}.json"


def calibration_from_times(local_ms: Mapping[str, float]) -> dict:
    """Published / local for each reference, their median (the scale) and min..max (its spread)."""
    missing = [name for name in PUBLISHED_RPI4_MS if not local_ms.get(name, 0) > 0]
    if missing:
        raise TimingError(f"Pi 4 calibration: no local time for {', '.join(missing)}")
    ratios = {name: PUBLISHED_RPI4_MS[name] / float(local_ms[name]) for name in PUBLISHED_RPI4_MS}
    return {
        "local_ms": {name: float(local_ms[name]) for name in PUBLISHED_RPI4_MS},
        "ratios": ratios,
        "ratio": statistics.median(ratios.values()),
        "ratio_lo": min(ratios.values()),
        "ratio_hi": max(ratios.values()),
    }


def estimate(local_ms: float, calibration: Mapping) -> dict:
    """The est_rpi4_* figures of one local median."""
    return {
        "est_rpi4_ms": round(local_ms * calibration["ratio"], 1),
        "est_rpi4_ms_lo": round(local_ms * calibration["ratio_lo"], 1),
        "est_rpi4_ms_hi": round(local_ms * calibration["ratio_hi"], 1),
        "est_rpi4_ratio": round(calibration["ratio"], 4),
        "est_rpi4_ratios": {name: round(r, 4) for name, r in calibration["ratios"].items()},
        "est_rpi4_note": NOTE,
    }


def not_estimated(reason: str) -> dict:
    return {**{key: None for key in ESTIMATE_KEYS}, "est_rpi4_note": reason}


def describe(row: Mapping) -> str:
    """One line on how the estimate of a timed row was made, for tables and logs."""
    ratios = row.get("est_rpi4_ratios")
    if not ratios:
        return f"no {LABEL}: {row.get('est_rpi4_note') or 'not calibrated'}"
    listed = ", ".join(f"{name} {ratio:.2f}" for name, ratio in ratios.items())
    return (
        f"an estimate, not a measurement: local median x {row['est_rpi4_ratio']:.2f}, the median "
        "of published Pi 4 / local latency of 4 fp32 MobileNets at "
        f"{REFERENCE_SIZE}x{REFERENCE_SIZE} ({listed}); its range uses their min..max"
    )


def describe_rows(rows: list[Mapping]) -> list[str]:
    """`describe` once per calibration that timed rows used (one calibrated again between
    rows, when the machine's speed changed, gets its own line naming its rows)."""
    groups: dict[str, list[Mapping]] = {}
    for row in rows:
        groups.setdefault(json.dumps(row.get("est_rpi4_ratios"), sort_keys=True), []).append(row)
    if len(groups) == 1:
        return [f"{LABEL}: {describe(rows[0])}"]
    return [
        f"{LABEL} of {', '.join(str(r['arch']) + ' ' + str(r['precision']) for r in group)}: "
        f"{describe(group[0])}"
        for group in groups.values()
    ]


def read_calibration(path: Path, key: Mapping) -> dict | None:
    """The cached calibration for `key`, or None (absent, unreadable or another key)."""
    try:
        stored = json.loads(Path(path).read_text())
        if stored.get("key") != dict(key):
            return None
        return calibration_from_times(stored["local_ms"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, TimingError):
        return None  # measured again and overwritten


def reference_paths(directory: Path) -> dict[str, Path]:
    """Where the four reference .tflite files live: one set per converter version."""
    folder = (
        Path(directory)
        / "references"
        / re.sub(r"[^A-Za-z0-9_.-]+", "-", host.installed(*host.FRAMEWORKS["tensorflow"]))
    )
    return {name: folder / f"{name}.tflite" for name in PUBLISHED_RPI4_MS}


def build_references(paths: Mapping[str, Path]) -> None:
    """Write the named references as fp32 .tflite files: keras.applications at 224x224, random
    weights, classifier included, batch 1 (about a minute for all four; done once)."""
    import keras

    from pipeline.device import tflite

    builders = {
        "mobilenet_v1": keras.applications.MobileNet,
        "mobilenet_v2": keras.applications.MobileNetV2,
        "mobilenet_v3_large": keras.applications.MobileNetV3Large,
        "mobilenet_v3_small": keras.applications.MobileNetV3Small,
    }
    for name, path in paths.items():
        keras.utils.set_random_seed(0)
        model = builders[name](input_shape=(REFERENCE_SIZE, REFERENCE_SIZE, 3), weights=None)
        with atomic_path(path) as tmp:
            tmp.write_bytes(tflite.convert(model, precision="fp32"))


def _reference_medians(result: Mapping) -> dict[str, float]:
    return {
        name: timed.get("median_ms", 0) for name, timed in (result.get("references") or {}).items()
    }


def time_local(
    model_path,
    *,
    threads: int,
    warmup: int,
    runs: int,
    directory: Path | None = None,
    timer: Callable[..., dict] = timing.time_local,
    build: Callable[[Mapping[str, Path]], None] = build_references,
    log: Callable[[str], None] = _stderr,
) -> dict:
    """`timing.time_local` plus the est_rpi4_* figures.

    Without a cached calibration for this machine, runtime and thread count, the four
    references are timed in the same fresh process right after the model, and the
    calibration is cached. With one, only the model and ANCHOR are timed: while ANCHOR runs
    within MAX_DRIFT of its calibrated time the machine is as it was (on shared cores a
    calibration measured under load is off by 2-3x), else it is calibrated again.
    """
    directory = Path(directory or cache_dir())
    key = calibration_key(threads)
    path = calibration_path(key, directory)
    refs = reference_paths(directory)
    calibration = read_calibration(path, key)

    def timed(names):
        return timer(
            model_path,
            threads=threads,
            warmup=warmup,
            runs=runs,
            **({"references": {name: refs[name] for name in names}} if names else {}),
        )

    if calibration is not None:
        anchored = refs[
            ANCHOR
        ].is_file()  # a cache hit never builds models; without the file, trust it
        result = timed([ANCHOR] if anchored else [])
        drift = (
            _reference_medians(result).get(ANCHOR, 0) / calibration["local_ms"][ANCHOR]
            if anchored
            else 1.0
        )
        if not 1 / MAX_DRIFT <= drift <= MAX_DRIFT:
            log(
                f"the Pi 4 calibration does not hold now: {ANCHOR} runs at {drift:.2f}x its "
                "calibrated time (another load on the cores?); calibrating again"
            )
            calibration = None
    if calibration is None:
        log(
            "calibrating the Pi 4 estimate: timing 4 reference MobileNets after the model for "
            f"this machine, runtime and {key['threads']} threads (cached in {path})"
        )
        missing = {name: ref for name, ref in refs.items() if not ref.is_file()}
        if missing:
            build(missing)
        result = timed(list(refs))
        calibration = calibration_from_times(_reference_medians(result))
        write_json(
            path,
            {
                "key": key,
                "local_ms": calibration["local_ms"],
                "published_ms": PUBLISHED_RPI4_MS,
                "measured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            },
        )
    result.pop("references", None)
    return {**result, **estimate(result["median_ms"], calibration)}
