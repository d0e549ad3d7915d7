"""Which ops XNNPACK leaves out, per architecture and precision: converts each (random weights,
no timing) and prints its XNNPACK partitions and the ops that run on the builtin kernels.

    .venv/bin/python -m bench.delegation [--arch fastdepth] [--precision int8] [--size 480x640]
                                          [--output-resize separable] [--params params.yaml]

One partition and no op left out is the target (issue #17): each op XNNPACK does not take
splits the graph, and the builtin kernels it runs on are slower, often single-threaded.
"""

from __future__ import annotations

import argparse
import sys

from bench.common import PARAMS


def main() -> int:
    from pipeline.core.config import OUTPUT_RESIZES, load_params
    from pipeline.device import tflite
    from pipeline.device.probe import describe_ops, random_device_model
    from pipeline.model.archs import ARCHS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", action="append", choices=ARCHS, help="repeatable; default: all")
    parser.add_argument(
        "--precision",
        action="append",
        choices=("fp32", "fp16", "dynamic_int8", "int8"),
        help="repeatable; default: fp32 and int8",
    )
    parser.add_argument(
        "--size", default=None, help="device input HxW; default: export.height x export.width"
    )
    parser.add_argument(
        "--output-resize", choices=OUTPUT_RESIZES, help="default: export.output_resize"
    )
    parser.add_argument("--params", default=str(PARAMS))
    args = parser.parse_args()
    params = load_params(args.params)
    height, width = (
        (int(v) for v in args.size.lower().split("x"))
        if args.size
        else (params.export.height, params.export.width)
    )
    output_resize = args.output_resize or params.export.output_resize
    print(f"# {height}x{width} input, output_resize {output_resize}, random weights")
    print(f"{'arch':<18}  {'precision':<12}  {'nodes':>5}  {'parts':>5}  not delegated")
    missed = 0
    for arch in args.arch or ARCHS:
        train = load_params(args.params, overrides={"train": {"arch": arch}}).train
        _, device_model, images = random_device_model(
            train, height=height, width=width, output_resize=output_resize
        )
        for precision in args.precision or ("fp32", "int8"):
            flatbuffer = tflite.convert(
                device_model,
                precision=precision,
                representative=images if precision == "int8" else None,
            )
            report = tflite.delegation(flatbuffer)
            missed += report["partitions"] != 1 or bool(report["not_delegated"])
            print(
                f"{arch:<18}  {precision:<12}  {report['nodes']:>5}  {report['partitions']:>5}  "
                f"{describe_ops(report['not_delegated'])}",
                flush=True,
            )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
