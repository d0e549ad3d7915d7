"""Stage package: the challenge submission ZIP from models/model.tflite.

Predicts every input RGB (package.inputs, or the val split when empty) at its own size,
writes submission/submission.zip with model.tflite and readme.txt (runtime from
metrics/benchmark.json), validates it like the server would, and only then publishes it.
"""

from __future__ import annotations

import os
import sys

from pipeline.cli import Progress, run_stage, stage_parser
from pipeline.config import load_params
from pipeline.data import read_split
from pipeline.errors import DataError
from pipeline.files import read_json
from pipeline.metrics import BENCHMARK_RUNTIME_KEY, runtime_s_from_benchmark
from pipeline.submission import describe_run, list_input_images, package_submission

SPLIT_CSV = "data/prepared/split.csv"
MODEL = "models/model.tflite"
BENCHMARK_JSON = "metrics/benchmark.json"
OUT_ZIP = "submission/submission.zip"
CPU_FLAG = 1  # TFLite on the CPU, as timed by the organizers on the Raspberry Pi 4


def main(argv: list[str] | None = None) -> None:
    args = stage_parser("package", __doc__).parse_args(argv)
    params = load_params(args.params)
    if params.package.inputs:
        inputs = list_input_images(params.package.inputs)
        where = params.package.inputs
    else:
        inputs = [row["rgb"] for row in read_split(SPLIT_CSV, "val")]
        where = f"the val split of {SPLIT_CSV}"
        if not inputs:
            raise DataError(f"{SPLIT_CSV}: no val rows to package")
    benchmark = read_json(BENCHMARK_JSON)
    runtime_s = runtime_s_from_benchmark(benchmark)
    if runtime_s is None:
        raise DataError(f"{BENCHMARK_JSON}: no positive '{BENCHMARK_RUNTIME_KEY}' runtime")
    readme = {
        "runtime_s": runtime_s,
        "cpu": CPU_FLAG,
        "extra_data": params.package.extra_data,
        "description": describe_run(params, benchmark, extra=params.package.description),
    }
    print(f"package: {len(inputs)} images from {where}", flush=True)
    count = package_submission(OUT_ZIP, model_path=MODEL, input_files=inputs, readme=readme,
                               num_threads=len(os.sched_getaffinity(0)), progress=Progress("package: image"))

    size_mb = os.path.getsize(OUT_ZIP) / 1e6
    print(f"wrote {OUT_ZIP} ({count} depth PNGs, {size_mb:.1f} MB), validated OK")
    print(f"readme: runtime {runtime_s:.4g} s; {readme['description']}")


if __name__ == "__main__":
    sys.exit(run_stage(main))
