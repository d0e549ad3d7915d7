"""Stage package: the challenge submission ZIP from models/model.tflite.

Predicts every input RGB (package.inputs, or the val split when empty) at its own size,
writes submission/submission.zip with model.tflite and readme.txt (runtime from
metrics/benchmark.json), validates it like the server would, and only then publishes it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pipeline.core import host
from pipeline.core.cli import Progress, run_stage, stage_parser
from pipeline.core.config import load_params
from pipeline.core.errors import DataError
from pipeline.core.files import read_json
from pipeline.core.metrics import BENCHMARK_RUNTIME_KEY, runtime_s_from_benchmark
from pipeline.core.paths import (
    SPLIT_CSV,
    SUBMISSION_ZIP,
    TFLITE_MODEL,
    metrics_json,
    resolve_user_path,
)
from pipeline.data.dataset import read_split
from pipeline.results.submission import (
    describe_run,
    extra_data_flag,
    list_input_images,
    model_min_runtime,
    package_submission,
)

BENCHMARK_JSON = metrics_json("benchmark")
CPU_FLAG = 1  # TFLite on the CPU, as timed by the organizers on the Raspberry Pi 4


def main(argv: list[str] | None = None) -> None:
    args = stage_parser("package", __doc__).parse_args(argv)
    params = load_params(args.params)
    if params.package.inputs:
        inputs = list_input_images(resolve_user_path(params.package.inputs))
        where = params.package.inputs
    else:
        rows = read_split(SPLIT_CSV, "val")
        where = f"the val split of {SPLIT_CSV}"
        if not rows:
            raise DataError(f"{SPLIT_CSV}: no val rows to package")
        # several sources may reuse file names: then each output is named SOURCE_NAME.png
        several = len({row["source"] for row in rows}) > 1
        inputs = {
            f"{row['source']}_{Path(row['rgb']).name}" if several else Path(row["rgb"]).name: row[
                "rgb"
            ]
            for row in rows
        }
    benchmark = read_json(BENCHMARK_JSON)
    runtime_s = runtime_s_from_benchmark(benchmark)
    if runtime_s is None:
        raise DataError(f"{BENCHMARK_JSON}: no positive '{BENCHMARK_RUNTIME_KEY}' runtime")
    readme = {
        "runtime_s": runtime_s,
        "cpu": CPU_FLAG,
        "extra_data": extra_data_flag(params),
        "description": describe_run(
            params,
            benchmark,
            extra=params.package.description,
            min_runtime=model_min_runtime(TFLITE_MODEL),
        ),
    }
    print(f"package: {len(inputs)} images from {where}", flush=True)
    count = package_submission(
        SUBMISSION_ZIP,
        model_path=TFLITE_MODEL,
        input_files=inputs,
        readme=readme,
        num_threads=host.usable_cpus(),
        progress=Progress("package: image"),
    )

    size_mb = os.path.getsize(SUBMISSION_ZIP) / 1e6
    print(f"wrote {SUBMISSION_ZIP} ({count} depth PNGs, {size_mb:.1f} MB), validated OK")
    print(f"readme: runtime {runtime_s:.4g} s; {readme['description']}")


if __name__ == "__main__":
    sys.exit(run_stage(main))
