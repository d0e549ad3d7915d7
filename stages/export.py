"""Stage export: models/model.keras -> models/model.tflite (device size, export.precision).

The core model is wrapped to take the challenge's 1x480x640x3 RGB 0..255 and return
1x480x640x1 metres (resizes inside the graph), converted with builtin ops only, checked to
run on export.target_runtime and against Keras on a few val images. Writes
models/model.tflite and metrics/export.json (size, op counts, minimum runtime, parity).
"""

from __future__ import annotations

import sys

from pipeline.core.cli import run_stage, stage_parser, timed
from pipeline.core.config import load_params
from pipeline.core.files import write_json
from pipeline.core.paths import KERAS_MODEL, SPLIT_CSV, TFLITE_MODEL, metrics_json
from pipeline.device.export import export_file, write_tflite

METRICS = metrics_json("export")


def main(argv: list[str] | None = None) -> None:
    args = stage_parser("export", __doc__).parse_args(argv)
    params = load_params(args.params)
    cfg = params.export
    print(
        f"export: {KERAS_MODEL} -> {cfg.precision} TFLite at {cfg.height}x{cfg.width}", flush=True
    )
    flatbuffer, report = export_file(KERAS_MODEL, SPLIT_CSV, cfg=cfg)
    write_tflite(TFLITE_MODEL, flatbuffer)
    write_json(METRICS, timed(report))
    par = report["parity"]
    print(
        f"export: {TFLITE_MODEL} {report['size_mb']:.2f} MB, {report['n_ops']} ops, "
        f"{report['macs'] / 1e9:.2f} GMACs; parity on {par['images']} val images: "
        f"max |diff| {par['max_abs_diff_m']:.4g} m, si-RMSE {par['si_rmse_keras']:.4f} (Keras) -> "
        f"{par['si_rmse_tflite']:.4f} (TFLite); runs on TFLite >= {report['min_runtime_version']} "
        f"(target {cfg.target_runtime})"
    )


if __name__ == "__main__":
    sys.exit(run_stage(main))
