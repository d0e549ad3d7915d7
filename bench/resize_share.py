"""Where the default model's time goes at 480x640: the in-graph resizes versus the network,
and what export.output_resize=separable buys, in latency and in accuracy.

    .venv/bin/python -m bench.resize_share [--precision fp32] [--threads N] [--repeats 3]
        [--model models/model.keras] [--data ../shared/data/tum_fr1_xyz]

Latency (random weights, `pipeline.device.probe.resize_share`): the device graph, its core alone at
the working size, the input resize (480x640x3 -> working size, bilinear) alone and the output
resize (working size -> 480x640) alone, as one RESIZE_BILINEAR and separable, and the device
graph with the separable resize; all in one fresh process per repeat, medians over repeats.

Accuracy (with --model and --data, both on by default when present): the trained model
exported with each output_resize, scored by the evaluate stage's code (official metrics,
centre crop) on the last 20% of the data folder's frames; skipped when either is missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

from bench.common import PARAMS, REPO, TUM

LABELS = {
    "device": "device graph (output_resize bilinear)",
    "core": "network alone at the working size",
    "input_resize": "input resize alone",
    "output_bilinear": "output resize alone, bilinear",
    "output_separable": "output resize alone, separable",
    "device_separable": "device graph (output_resize separable)",
}


def accuracy(model_path: Path, data: Path, export_cfg) -> list[tuple[str, dict, dict]]:
    """(output_resize, evaluate summary, export parity) of the trained model per output_resize,
    exported with export_cfg otherwise."""
    from pipeline.core.config import OUTPUT_RESIZES
    from pipeline.data.dataset import build_split, read_split, write_split
    from pipeline.device.export import export_model, write_tflite
    from pipeline.device.predict import TFLiteDepthModel
    from pipeline.model.networks import load_keras_model
    from pipeline.results.evaluation import evaluate_model

    core = load_keras_model(model_path)
    results = []
    with tempfile.TemporaryDirectory(prefix="resize-share-") as tmp:
        split = Path(tmp) / "split.csv"
        write_split(split, build_split({data.name: data}))
        val = read_split(split, "val")
        for output_resize in OUTPUT_RESIZES:
            cfg = dataclasses.replace(export_cfg, output_resize=output_resize)
            flatbuffer, report = export_model(core, split, cfg=cfg)
            path = Path(tmp) / f"{output_resize}.tflite"
            write_tflite(path, flatbuffer)
            summary, _ = evaluate_model(TFLiteDepthModel(path, num_threads=1), val, aspect="crop")
            results.append((output_resize, summary, report["parity"]))
    return results


def main() -> int:
    from pipeline.core.config import load_params
    from pipeline.device.probe import resize_share

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--precision", choices=("fp32", "int8"), default=None, help="default: export.precision"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="default: benchmark.threads, capped"
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default=str(REPO / "models" / "model.keras"))
    parser.add_argument("--data", default=str(TUM))
    parser.add_argument("--params", default=str(PARAMS))
    args = parser.parse_args()
    params = load_params(args.params)
    precision = args.precision or params.export.precision
    threads = args.threads or params.benchmark.threads
    e = params.export
    share = resize_share(
        params.train,
        precision=precision,
        threads=threads,
        warmup=args.warmup,
        runs=args.runs,
        repeats=args.repeats,
        height=e.height,
        width=e.width,
    )
    ms, part = share["ms"], share["share"]
    work = "x".join(map(str, share["working_size"]))
    print(
        f"# {share['arch']} {precision}, working size {work} in a {e.height}x{e.width} graph, "
        f"{share['threads']} threads, median of {args.runs} runs x {args.repeats} processes"
    )
    print(f"{'part':<42}  {'ms':>7}  {'of device':>9}")
    for name, label in LABELS.items():
        print(f"{label:<42}  {ms[name]:7.3f}  {part[name]:9.1%}")
    parts = ms["core"] + ms["input_resize"] + ms["output_bilinear"]
    print(
        f"# resizes: {part['input_resize'] + part['output_bilinear']:.1%} of the device graph "
        f"(input {part['input_resize']:.1%}, output {part['output_bilinear']:.1%}); network + "
        f"resizes timed apart = {parts:.3f} ms vs the graph {ms['device']:.3f} ms"
    )
    print(
        f"# separable output resize: {ms['output_bilinear'] / ms['output_separable']:.1f}x cheaper "
        f"alone; device graph {ms['device'] / ms['device_separable']:.2f}x faster "
        f"({ms['device'] - ms['device_separable']:+.3f} ms saved)"
    )

    model, data = Path(args.model), Path(args.data)
    if not (model.is_file() and (data / "rgb").is_dir()):
        print(f"# accuracy skipped: {model if not model.is_file() else data} not found")
        return 0
    print()
    print(
        f"# accuracy: {model.relative_to(REPO) if model.is_relative_to(REPO) else model} exported "
        f"{precision}, scored on the last 20% of {data.name} (official metrics, centre crop)"
    )
    print(
        f"{'output_resize':<14}  {'si-RMSE':>8}  {'RMSE m':>7}  {'rel':>6}  {'images':>6}  "
        f"{'parity drop':>11}"
    )
    export_cfg = dataclasses.replace(params.export, precision=precision)
    for output_resize, summary, parity in accuracy(model, data, export_cfg):
        print(
            f"{output_resize:<14}  {summary['si_rmse']:8.4f}  {summary['rmse']:7.3f}  "
            f"{summary['rel']:6.3f}  {summary['n_images']:>6}  {parity['si_rmse_diff']:11.5f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
