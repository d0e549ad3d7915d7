"""Stage benchmark: time models/model.tflite like the AI Benchmark app.

Locally in a fresh process (TensorFlow is not loaded there) or on `benchmark.device:
ssh://user@host[:port]` (key-based ssh; MAI_SSH_IDENTITY / MAI_SSH_CONFIG pick the key
or an ssh config). Writes metrics/benchmark.json; `runtime_s` (median) is the value
that goes into the submission readme. Always measures: never restore it from a cache.
A local timing also gets `est_rpi4_ms` (with est_rpi4_ms_lo/hi and the four ratios): an
estimate of the Raspberry Pi 4 latency, calibrated on four MobileNets (pipeline/device/rpi4.py);
a device timed over SSH is measured itself and gets none.
"""

from __future__ import annotations

import platform
import sys

from pipeline.core.cli import run_stage, stage_parser, timed
from pipeline.core.config import load_params
from pipeline.core.files import write_json
from pipeline.core.paths import TFLITE_MODEL, metrics_json
from pipeline.device import remote, rpi4

METRICS = metrics_json("benchmark")
KEYS = (
    "threads_requested",
    "threads",
    "threads_capped",
    "init_ms",
    "first_run_ms",
    "mean_ms",
    "median_ms",
    "p90_ms",
    "min_ms",
    "max_ms",
    "times_ms",
    "peak_rss_mb",
    "baseline_rss_mb",
    "model_rss_mb",
    "runs",
    "warmup",
    "runtime",
    "runtime_version",
    "delegate",
    "delegate_partitions",
    "python",
    "machine",
    "platform",
    "hostname",
    "cpu_count",
    "cpus_usable",
    "input_shape",
    "model_bytes",
    *rpi4.ESTIMATE_KEYS,
)


def main(argv: list[str] | None = None) -> None:
    args = stage_parser("benchmark", __doc__).parse_args(argv)
    params = load_params(args.params)
    cfg = params.benchmark  # load_params has checked that device is local or ssh://...
    if remote.is_remote(cfg.device):
        result = remote.time_remote(
            cfg.device,
            TFLITE_MODEL,
            python=cfg.ssh_python,
            threads=cfg.threads,
            warmup=cfg.warmup,
            runs=cfg.runs,
            **remote.ssh_settings_from_env(),
        )
        device = result["device"]
        result.update(rpi4.not_estimated(f"timed on {device} itself; no estimate needed"))
    else:
        result = rpi4.time_local(
            TFLITE_MODEL, threads=cfg.threads, warmup=cfg.warmup, runs=cfg.runs
        )
        device = f"local:{platform.node()} {platform.machine()}"
    if not result.get("output_finite", True):
        print(
            f"warning: {TFLITE_MODEL} produced non-finite outputs on random input", file=sys.stderr
        )
    out = {
        "device": device,
        "model": TFLITE_MODEL,
        **{k: result.get(k) for k in KEYS},
        "runtime_s": round(result["median_ms"] / 1000.0, 6),
    }
    write_json(METRICS, timed(out))
    capped = f" (capped from {cfg.threads})" if out["threads_capped"] else ""
    print(
        f"benchmark: {device}, {out['threads']} threads{capped}: median {out['median_ms']:.1f} ms, "
        f"p90 {out['p90_ms']:.1f} ms, init {out['init_ms']:.1f} ms, peak RAM "
        f"{out['peak_rss_mb']:.0f} MB -> {METRICS}"
    )
    if out["est_rpi4_ms"] is None:
        print(f"benchmark: {rpi4.describe(out)}")
    else:
        print(
            f"benchmark: {rpi4.LABEL} {out['est_rpi4_ms']:.0f} (range {out['est_rpi4_ms_lo']:.0f}.."
            f"{out['est_rpi4_ms_hi']:.0f}), {rpi4.describe(out)}"
        )


if __name__ == "__main__":
    sys.exit(run_stage(main))
