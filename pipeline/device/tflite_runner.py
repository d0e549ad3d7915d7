#!/usr/bin/env python3
"""Time one .tflite model the way the AI Benchmark app does; print ONE JSON line.

    python tflite_runner.py MODEL [--threads 4] [--warmup 2] [--runs 10]
        [--reference NAME=PATH ...] [--interleave]

Self-contained on purpose (stdlib + numpy + ai_edge_litert or tflite_runtime): it is
copied as-is to a device (e.g. a Raspberry Pi) and run there, so it must not import the
project. Keep it Python 3.7 compatible (old device images).

Reports: init time (interpreter construction + tensor allocation, where the default
XNNPACK delegate is applied), warm-up and N timed `invoke()` calls on a fixed random
input of the model's own shape, latency stats, the process's peak RSS (and the RSS
before the model was loaded, so the model's share is visible), runtime and machine.
`--reference` models are timed after MODEL, in this process, with the same runtime and
threads (`references`: median per name); MODEL's figures, RSS included, come first.
`--interleave` times the references round-robin with MODEL instead, one invoke of each per
round, so that all see the same load (shared cores): MODEL's median in those rounds is
`interleaved`, to compare the references with.
Exit codes: 0 ok, 2 bad arguments/model, 3 no TFLite runtime installed.
"""

import argparse
import json
import os
import platform
import resource
import sys
import time

RUNTIME_MISSING_EXIT = 3
RUNTIME_MISSING_TAG = "tflite_runner: no TFLite runtime"


def _rss_mb():
    """(peak, current) resident set size of this process in MB.

    Linux: VmHWM/VmRSS from /proc/self/status. Not ru_maxrss there: it survives
    fork+exec, so a runner started from a process holding TensorFlow (~700 MB) would
    report the parent's peak. Elsewhere (macOS) ru_maxrss, which is in bytes there.
    """
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return int(fields["VmHWM"].split()[0]) / 1024.0, int(fields["VmRSS"].split()[0]) / 1024.0
    except (OSError, KeyError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0), None


def _load_runtime():
    """Prefer ai_edge_litert (the maintained package), fall back to tflite_runtime."""
    errors = []
    try:
        import numpy  # noqa: F401  (both runtimes need it; a missing one is the same fix)
    except ImportError as err:
        errors.append(f"numpy: {err}")
        _runtime_missing(errors)
    try:
        from ai_edge_litert import interpreter as mod

        try:
            from importlib.metadata import version

            ver = version("ai-edge-litert")
        except Exception:
            ver = getattr(sys.modules.get("ai_edge_litert"), "__version__", "unknown")
        return mod, "ai_edge_litert", ver
    except ImportError as err:
        errors.append(f"ai_edge_litert: {err}")
    try:
        import tflite_runtime
        from tflite_runtime import interpreter as mod

        return mod, "tflite_runtime", getattr(tflite_runtime, "__version__", "unknown")
    except ImportError as err:
        errors.append(f"tflite_runtime: {err}")
    _runtime_missing(errors)


def _runtime_missing(errors):
    joined = "; ".join(errors)  # no quotes inside an f-string before Python 3.12
    sys.stderr.write(
        f"{RUNTIME_MISSING_TAG}: install ai-edge-litert or tflite-runtime for {sys.executable} "
        f"(ImportError: {joined})\n"
    )
    sys.exit(RUNTIME_MISSING_EXIT)


def _delegate_partitions(interp):
    """DELEGATE nodes after allocation: 1 = the whole graph runs in XNNPACK; more means
    ops it cannot run split the graph (each split costs time). None if not exposed."""
    try:
        return sum(1 for op in interp._get_ops_details() if op.get("op_name") == "DELEGATE")
    except Exception:  # private API; absent in some tflite_runtime versions
        return None


def _usable_cpus():
    try:
        return len(os.sched_getaffinity(0))  # respects containers / taskset
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _percentile(sorted_values, q):
    """Linear-interpolated percentile (numpy's default) without needing numpy for it."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _random_input(detail, np):
    shape = [int(d) if int(d) > 0 else 1 for d in detail["shape"]]
    rng = np.random.RandomState(0)
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return rng.uniform(0.0, 255.0, size=shape).astype(dtype)  # RGB 0..255 like real inputs
    info = np.iinfo(dtype)
    return rng.randint(info.min, info.max + 1, size=shape).astype(dtype)


# Reference models are small: more runs than MODEL's keep their medians steady at little cost.
REFERENCE_MIN_WARMUP = 3
REFERENCE_MIN_RUNS = 20


def _timed_invokes(interp, warmup, runs):
    """(first warm-up ms or None, [ms of each timed invoke()])."""
    first_ms = None
    for i in range(warmup):
        t = time.perf_counter()
        interp.invoke()
        if i == 0:
            first_ms = (time.perf_counter() - t) * 1000.0
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        interp.invoke()
        times.append((time.perf_counter() - t) * 1000.0)
    return first_ms, times


def _time_references(mod, np, references, threads, warmup, runs):
    """{name: {median_ms, min_ms, runs}} of each (name, path), one interpreter at a time."""
    warmup, runs = max(warmup, REFERENCE_MIN_WARMUP), max(runs, REFERENCE_MIN_RUNS)
    out = {}
    for name, path in references:
        interp = mod.Interpreter(model_path=path, num_threads=threads)
        interp.allocate_tensors()
        for detail in interp.get_input_details():
            interp.set_tensor(detail["index"], _random_input(detail, np))
        ordered = sorted(_timed_invokes(interp, warmup, runs)[1])
        out[name] = {
            "median_ms": round(_percentile(ordered, 50), 3),
            "min_ms": round(ordered[0], 3),
            "runs": runs,
        }
        del interp
    return out


def _time_interleaved(mod, np, model_interp, references, threads, warmup, runs):
    """({median_ms, min_ms, runs} of MODEL, {name: the same}) from round-robin invokes."""
    warmup, runs = max(warmup, REFERENCE_MIN_WARMUP), max(runs, REFERENCE_MIN_RUNS)
    interps = [("", model_interp)]
    for name, path in references:
        interp = mod.Interpreter(model_path=path, num_threads=threads)
        interp.allocate_tensors()
        for detail in interp.get_input_details():
            interp.set_tensor(detail["index"], _random_input(detail, np))
        interps.append((name, interp))
    for _ in range(warmup):
        for _, interp in interps:
            interp.invoke()
    times = dict((name, []) for name, _ in interps)
    for _ in range(runs):
        for name, interp in interps:
            t = time.perf_counter()
            interp.invoke()
            times[name].append((time.perf_counter() - t) * 1000.0)
    stats = {}
    for name, values in times.items():
        ordered = sorted(values)
        stats[name] = {
            "median_ms": round(_percentile(ordered, 50), 3),
            "min_ms": round(ordered[0], 3),
            "runs": runs,
        }
    model = stats.pop("")
    return model, stats


def run(model_path, threads, warmup, runs, references=(), interleave=False):
    baseline_peak_mb, baseline_now_mb = _rss_mb()
    baseline_mb = baseline_now_mb if baseline_now_mb is not None else baseline_peak_mb
    mod, runtime_name, runtime_version = _load_runtime()
    import numpy as np

    cpus = _usable_cpus()
    threads_used = max(1, min(threads, cpus))

    t0 = time.perf_counter()
    interp = mod.Interpreter(model_path=model_path, num_threads=threads_used)
    interp.allocate_tensors()  # the default XNNPACK delegate is applied here
    init_ms = (time.perf_counter() - t0) * 1000.0
    partitions = _delegate_partitions(interp)
    after_init_peak_mb, _ = _rss_mb()

    inputs = interp.get_input_details()
    for detail in inputs:
        if any(int(d) <= 0 for d in detail["shape"]):
            interp.resize_tensor_input(detail["index"], [max(int(d), 1) for d in detail["shape"]])
    if any(int(d) <= 0 for d in inputs[0]["shape"]):
        interp.allocate_tensors()
        inputs = interp.get_input_details()
    for detail in inputs:
        interp.set_tensor(detail["index"], _random_input(detail, np))

    first_ms, times = _timed_invokes(interp, warmup, runs)
    outputs = interp.get_output_details()
    out = interp.get_tensor(outputs[0]["index"])
    peak_mb, current_mb = _rss_mb()

    ordered = sorted(times)
    result = {
        "model": os.path.basename(model_path),
        "model_bytes": os.path.getsize(model_path),
        "input_shape": [int(d) for d in inputs[0]["shape"]],
        "input_dtype": np.dtype(inputs[0]["dtype"]).name,
        "output_shape": [int(d) for d in out.shape],
        "output_finite": bool(np.all(np.isfinite(out))),
        "init_ms": round(init_ms, 3),
        "first_run_ms": None if first_ms is None else round(first_ms, 3),
        "mean_ms": round(sum(times) / len(times), 3),
        "median_ms": round(_percentile(ordered, 50), 3),
        "p90_ms": round(_percentile(ordered, 90), 3),
        "min_ms": round(ordered[0], 3),
        "max_ms": round(ordered[-1], 3),
        "times_ms": [round(t, 3) for t in times],
        "runs": runs,
        "warmup": warmup,
        "threads_requested": threads,
        "threads": threads_used,
        "threads_capped": threads_used != threads,
        "peak_rss_mb": round(peak_mb, 1),
        "baseline_rss_mb": round(baseline_mb, 1),
        "model_rss_mb": round(peak_mb - baseline_mb, 1),
        "init_peak_rss_mb": round(after_init_peak_mb, 1),
        "current_rss_mb": None if current_mb is None else round(current_mb, 1),
        "rss_note": "peak_rss_mb is the whole process (Python+numpy+runtime+model); "
        "baseline_rss_mb was measured before numpy and the runtime were imported; "
        "model_rss_mb = peak - baseline",
        "runtime": runtime_name,
        "runtime_version": runtime_version,
        "delegate": "xnnpack (default)",
        "delegate_partitions": partitions,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": cpus,
    }
    if references and interleave:
        result["interleaved"], result["references"] = _time_interleaved(
            mod, np, interp, references, threads_used, warmup, runs
        )
    elif references:
        del interp  # its memory is measured above; the references need their own
        result["references"] = _time_references(mod, np, references, threads_used, warmup, runs)
    return result


def _reference(text):
    name, sep, path = text.partition("=")
    if not (name and sep and path):
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument(
        "--reference",
        type=_reference,
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="also time this model after MODEL, in this process (repeatable)",
    )
    ap.add_argument(
        "--interleave",
        action="store_true",
        help="time the references round-robin with MODEL (its median there: `interleaved`)",
    )
    args = ap.parse_args(argv)
    if args.threads < 1 or args.warmup < 0 or args.runs < 1:
        ap.error("need --threads >= 1, --warmup >= 0, --runs >= 1")
    for path in [args.model] + [path for _, path in args.reference]:
        if not os.path.isfile(path):
            sys.stderr.write(f"tflite_runner: {path}: model file not found\n")
            return 2
    try:
        result = run(
            args.model, args.threads, args.warmup, args.runs, args.reference, args.interleave
        )
    except (ValueError, RuntimeError) as err:
        msg = str(err).strip().splitlines()
        reason = msg[0] if msg else err
        sys.stderr.write(f"tflite_runner: {args.model}: cannot run model ({reason})\n")
        return 2
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
