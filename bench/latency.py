"""Latency at 480x640 of every architecture in fp32 and int8, the int8/fp32 ratio, and the
oldest TFLite runtime each model runs on next to export.target_runtime.

    .venv/bin/python bench/latency.py [--threads N] [--runs N] [--params params.yaml]

Random weights (timing does not depend on them); each model runs in a fresh process.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> int:
    from pipeline import rpi4
    from pipeline.config import ARCHS, load_params
    from pipeline.probe import format_table, probe
    from pipeline.tflite import version_key

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="default: benchmark.threads, capped")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--params", default=str(Path(__file__).resolve().parents[1] / "params.yaml"))
    args = parser.parse_args()
    params = load_params(args.params)
    threads = args.threads or params.benchmark.threads
    rows = []
    for arch in ARCHS:
        train = load_params(args.params, overrides={"train": {"arch": arch}}).train  # its own `auto` values
        for precision in ("fp32", "int8"):
            print(f"{arch} {precision} ...", file=sys.stderr, flush=True)
            rows.append(probe(train, precision=precision, threads=threads, warmup=args.warmup, runs=args.runs))
    print(f"# 480x640 input, {rows[0]['threads']} threads, median of {args.runs} runs")
    print(format_table(rows))
    for line in rpi4.describe_rows(rows):
        print(f"# {line}")
    print("# (int8 models: rougher still, the references are fp32)")
    print()
    print(f"{'arch':<18}  {'fp32 ms':>8}  {'int8 ms':>8}  {'int8/fp32':>9}  {'speed-up':>8}")
    for arch in ARCHS:
        fp32, int8 = (next(r for r in rows if r["arch"] == arch and r["precision"] == p) for p in ("fp32", "int8"))
        ratio = int8["median_ms"] / fp32["median_ms"]
        print(f"{arch:<18}  {fp32['median_ms']:8.2f}  {int8['median_ms']:8.2f}  {ratio:9.2f}  {1 / ratio:7.2f}x")
    target = params.export.target_runtime
    print()
    print(f"# oldest TFLite runtime that runs each model; export.target_runtime is {target}")
    print(f"{'arch':<18}  {'precision':<9}  {'min runtime':>11}  runs on {target}")
    for row in rows:
        ok = version_key(row["min_runtime"]) <= version_key(target)
        print(f"{row['arch']:<18}  {row['precision']:<9}  {row['min_runtime']:>11}  {'yes' if ok else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
