"""Stage evaluate: official MAI metrics of models/model.tflite on the val split, per source.

The submitted artifact (the TFLite model, resizing inside its graph) is what gets
scored, not the Keras model: conversion or quantization errors show up here.
Writes metrics/evaluate.json, reports/eval_per_image.csv and reports/eval_panels/.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.core import host
from pipeline.core.cli import Progress, run_stage, stage_parser, timed
from pipeline.core.config import load_params
from pipeline.core.errors import DataError
from pipeline.core.files import read_json, write_json
from pipeline.core.metrics import BENCHMARK_RUNTIME_KEY, runtime_s_from_benchmark
from pipeline.core.paths import PANELS_DIR, PER_IMAGE_CSV, SPLIT_CSV, TFLITE_MODEL, metrics_json
from pipeline.data.dataset import read_split
from pipeline.device.predict import TFLiteDepthModel
from pipeline.results.evaluation import add_score, evaluate_model, write_panels, write_per_image_csv

BENCHMARK_JSON, METRICS = metrics_json("benchmark"), metrics_json("evaluate")


def main(argv: list[str] | None = None) -> None:
    args = stage_parser("evaluate", __doc__).parse_args(argv)
    params = load_params(args.params)
    rows = read_split(SPLIT_CSV, "val")
    if not rows:
        raise DataError(f"{SPLIT_CSV}: no val rows to evaluate")
    model = TFLiteDepthModel(TFLITE_MODEL, num_threads=host.usable_cpus())
    print(
        f"evaluate: {TFLITE_MODEL} (input {model.input_size[0]}x{model.input_size[1]}) "
        f"on {len(rows)} val images",
        flush=True,
    )
    aspect = params.data.aspect
    summary, per_image = evaluate_model(
        model, rows, aspect=aspect, progress=Progress("evaluate: image")
    )
    if summary["n_images"] == 0:
        raise DataError(f"{SPLIT_CSV}: none of the {len(rows)} val images has valid depth")

    runtime_s = None
    if Path(BENCHMARK_JSON).is_file():
        runtime_s = runtime_s_from_benchmark(read_json(BENCHMARK_JSON))
        if runtime_s is None:
            print(
                f"warning: {BENCHMARK_JSON} has no '{BENCHMARK_RUNTIME_KEY}'; no score",
                file=sys.stderr,
            )
    else:
        print(f"note: {BENCHMARK_JSON} not found; evaluate.json gets no score", file=sys.stderr)
    summary = add_score(summary, runtime_s)

    write_per_image_csv(PER_IMAGE_CSV, per_image)
    panels = write_panels(PANELS_DIR, model, rows, per_image, params.evaluate.panels, aspect)
    write_json(METRICS, timed(summary))

    if summary["n_skipped"]:
        print(
            f"warning: {summary['n_skipped']} val image(s) without valid depth were skipped",
            file=sys.stderr,
        )
    line = (
        f"si-RMSE {summary['si_rmse']:.4f} (constant baseline {summary['baseline_si_rmse']:.4f})  "
        f"RMSE {summary['rmse']:.3f} m  rel {summary['rel']:.3f}  delta1 {summary['delta1']:.3f}  "
        f"over {summary['n_images']} images"
    )
    if "score" in summary:
        line += f"  score {summary['score']:.4g} at {summary['runtime_s'] * 1000:.1f} ms"
    print(line)
    for name, src in summary["sources"].items():  # does it beat a constant on every scene?
        print(
            f"  {name}: si-RMSE {src['si_rmse']:.4f} vs constant {src['baseline_si_rmse']:.4f} "
            f"(ratio {src['ratio_to_constant']:.2f}) over {src['n_images']} images"
        )
    print(f"wrote {METRICS}, {PER_IMAGE_CSV}, {len(panels)} panels in {PANELS_DIR}/")


if __name__ == "__main__":
    sys.exit(run_stage(main))
