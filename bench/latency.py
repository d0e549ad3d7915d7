"""Latency at 480x640 of every architecture in fp32 and int8, the int8/fp32 ratio, the XNNPACK
partitions of each model, and the oldest TFLite runtime each runs on next to export.target_runtime.

    .venv/bin/python -m bench.latency [--threads N] [--runs N] [--output-resize separable]
        [--params params.yaml]

Random weights (timing does not depend on them; batch norms fitted to random images so that
int8 calibrates like a trained model). Each model runs in a fresh process; the int8 speed-up
is measured apart, fp32 and int8 in one process (`--pairs` times, taking turns, median), since
on shared cores the load changes between processes. Targets (issue #17): every model one
XNNPACK partition, int8 at least MIN_SPEEDUP x faster than fp32 at the same thread count; a
model that misses one is marked MISS and listed at the end.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

from bench.common import PARAMS

MIN_SPEEDUP = 1.3


def main() -> int:
    from pipeline.core.config import OUTPUT_RESIZES, load_params
    from pipeline.device import rpi4
    from pipeline.device.probe import describe_ops, format_table, paired_ratio, probe
    from pipeline.device.tflite import version_key
    from pipeline.model.archs import ARCHS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--threads", type=int, default=None, help="default: benchmark.threads, capped"
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument(
        "--pairs", type=int, default=2, help="fp32+int8 processes per arch for the speed-up"
    )
    parser.add_argument(
        "--output-resize", choices=OUTPUT_RESIZES, help="default: export.output_resize"
    )
    parser.add_argument("--arch", action="append", choices=ARCHS, help="repeatable; default: all")
    parser.add_argument("--params", default=str(PARAMS))
    args = parser.parse_args()
    params = load_params(args.params)
    threads = args.threads or params.benchmark.threads
    output_resize = args.output_resize or params.export.output_resize
    archs = args.arch or ARCHS
    rows, speedup = [], {}
    with tempfile.TemporaryDirectory(prefix="latency-") as tmp:
        for arch in archs:
            train = load_params(
                args.params, overrides={"train": {"arch": arch}}
            ).train  # its own `auto` values
            for precision in ("fp32", "int8"):
                print(f"{arch} {precision} ...", file=sys.stderr, flush=True)
                rows.append(
                    probe(
                        train,
                        precision=precision,
                        threads=threads,
                        warmup=args.warmup,
                        runs=args.runs,
                        output_resize=output_resize,
                        keep_dir=tmp,
                    )
                )
            print(f"{arch} fp32 vs int8 in one process ...", file=sys.stderr, flush=True)
            speedup[arch] = 1 / paired_ratio(
                rows[-2]["tflite"],
                rows[-1]["tflite"],
                threads=threads,
                warmup=args.warmup,
                runs=args.runs,
                repeats=args.pairs,
            )
    print(
        f"# 480x640 input, output_resize {output_resize}, {rows[0]['threads']} threads, median of "
        f"{args.runs} runs"
    )
    print(format_table(rows))
    for line in rpi4.describe_rows(rows):
        print(f"# {line}")
    print("# (int8 models: rougher still, the references are fp32)")
    print()
    misses = []
    print(
        f"# speed-up: fp32 / int8 median timed in one process ({args.pairs} processes, median); "
        "apart: the two rows above"
    )
    print(
        f"{'arch':<18}  {'fp32 ms':>8}  {'int8 ms':>8}  {'apart':>6}  {'speed-up':>8}  "
        f"{'parts fp32':>10}  {'parts int8':>10}  target"
    )
    for arch in archs:
        fp32, int8 = (
            next(r for r in rows if r["arch"] == arch and r["precision"] == p)
            for p in ("fp32", "int8")
        )
        missed = [f"int8 only {speedup[arch]:.2f}x faster"] if speedup[arch] < MIN_SPEEDUP else []
        missed += [
            f"{r['precision']}: {r['delegate_partitions']} XNNPACK partitions, not delegated "
            f"{describe_ops(r['not_delegated'])}"
            for r in (fp32, int8)
            if r["delegate_partitions"] != 1
        ]
        misses += [f"{arch}: {m}" for m in missed]
        print(
            f"{arch:<18}  {fp32['median_ms']:8.2f}  {int8['median_ms']:8.2f}  "
            f"{fp32['median_ms'] / int8['median_ms']:5.2f}x  {speedup[arch]:7.2f}x  "
            f"{fp32['delegate_partitions']!s:>10}  {int8['delegate_partitions']!s:>10}  "
            f"{'MISS' if missed else 'ok'}"
        )
    target = params.export.target_runtime
    print()
    print(f"# oldest TFLite runtime that runs each model; export.target_runtime is {target}")
    print(f"{'arch':<18}  {'precision':<9}  {'min runtime':>11}  runs on {target}")
    for row in rows:
        ok = version_key(row["min_runtime"]) <= version_key(target)
        print(
            f"{row['arch']:<18}  {row['precision']:<9}  {row['min_runtime']:>11}  "
            f"{'yes' if ok else 'NO'}"
        )
    print()
    print(
        f"# targets: one XNNPACK partition, int8 >= {MIN_SPEEDUP}x faster than fp32 (same threads, "
        "this run)"
    )
    for line in misses or ["all met"]:
        print(f"# {'MISS ' if misses else ''}{line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
