"""The organizers' hint in one command: random weights -> TFLite -> timing, no DVC.

    python -m stages.probe --arch fastdepth [--precision int8] [--threads 4] [--runs 10]
    python -m stages.probe --arch all

Builds each architecture as `-S train.arch=NAME` would (params.yaml's train section, its
`auto` values resolved for that arch; encoder weights none), wraps it for the 480x640
device input (export.output_resize), converts it and times it in a fresh process; prints one
table row per architecture, with how many XNNPACK partitions it runs in and the ops XNNPACK
leaves to the builtin kernels, with the calibrated Raspberry Pi 4 estimate (an estimate, not a
measurement; see pipeline/device/rpi4.py) and the four ratios it rests on. Writes nothing but
the calibration cache.
"""

from __future__ import annotations

import sys

from pipeline.core.cli import run_stage, stage_parser
from pipeline.core.config import PRECISIONS, load_params
from pipeline.core.errors import PipelineError
from pipeline.device import rpi4
from pipeline.device.probe import format_table, probe
from pipeline.model.archs import ARCHS


class ProbeFailed(PipelineError):
    """Some architectures failed (each already reported on its own line)."""


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser("probe", __doc__)
    parser.add_argument("--arch", required=True, choices=(*ARCHS, "all"))
    parser.add_argument("--precision", choices=PRECISIONS, help="default: export.precision")
    parser.add_argument(
        "--threads", type=int, help="default: benchmark.threads (capped at local cores)"
    )
    parser.add_argument("--warmup", type=int, help="default: benchmark.warmup")
    parser.add_argument("--runs", type=int, help="default: benchmark.runs")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    b, e = params.benchmark, params.export
    threads, warmup, runs = (
        b.threads if args.threads is None else args.threads,
        b.warmup if args.warmup is None else args.warmup,  # 0 is valid
        b.runs if args.runs is None else args.runs,
    )
    if threads < 1 or warmup < 0 or runs < 1:
        parser.error("need --threads >= 1, --warmup >= 0, --runs >= 1")

    archs = ARCHS if args.arch == "all" else (args.arch,)
    precision = args.precision or e.precision
    rows, failed = [], []
    for arch in archs:
        print(f"probe: {arch} {precision} ...", file=sys.stderr, flush=True)
        try:
            train = load_params(args.params, overrides={"train": {"arch": arch}}).train
            rows.append(
                probe(
                    train,
                    precision=precision,
                    threads=threads,
                    warmup=warmup,
                    runs=runs,
                    height=e.height,
                    width=e.width,
                    output_resize=e.output_resize,
                )
            )
        except (
            PipelineError,
            ValueError,
        ) as err:  # one architecture failing does not stop the rest
            failed.append(arch)
            print(f"error: {arch}: {err}", file=sys.stderr)
    if rows:
        print(f"# random weights, each working size inside a {e.height}x{e.width} graph")
        print(format_table(rows))
        for line in rpi4.describe_rows(rows):
            print(f"# {line}")
    if failed:
        raise ProbeFailed(f"probe failed for {', '.join(failed)} (see above)")


if __name__ == "__main__":
    sys.exit(run_stage(main))
