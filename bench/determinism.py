"""Reproducibility and cost of base.deterministic: two training runs from scratch per setting.

    .venv/bin/python -m bench.determinism [--data ../shared/data/tum_fr1_xyz] [--epochs 3]

In a throw-away copy of the project (params.yaml + presets/tum.yaml, epochs reduced) it runs
`python -m stages.index` and `stages.prepare` once, then `python -m stages.train` four
times, each a fresh process training from scratch: twice with base.deterministic true, twice
with false. For each setting it prints the seconds per epoch (epochs after the first, which
includes graph tracing), the epoch-1 and final losses and val si-RMSE of both runs, and the
largest weight difference between the two runs' final weights (0 = bit-identical training).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.train_memory import (
    bench_arg_parser,
    epoch_seconds,
    make_workspace,
    merge,
    train_once,
    workspace_params,
)
from tests.conftest import weight_arrays  # the weight-file reader


def max_weight_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    if a.keys() != b.keys():
        sys.exit("the two runs saved different weight sets")
    return max(
        float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)), initial=0.0))
        for k in a
    )


def main() -> int:
    args = bench_arg_parser(__doc__.split("\n")[0], epochs=3).parse_args()
    params = workspace_params(args)
    root = Path(tempfile.mkdtemp(prefix="determinism."))
    try:
        make_workspace(root, params)
        t = params["train"]
        print(f"data: {args.data}")
        print(
            f"train: {t['arch']} at {t['height']}x{t['width']}, batch {t['batch_size']}, "
            f"{args.epochs} epochs, seed {params['base']['seed']}"
        )
        rows = []
        for flag in (True, False):
            runs = []
            for attempt in (1, 2):
                print(
                    f"training with base.deterministic={flag}, run {attempt}/2 ...",
                    file=sys.stderr,
                    flush=True,
                )
                _, _, _, history = train_once(
                    root, merge(params, {"base": {"deterministic": flag}})
                )
                runs.append(
                    (history, weight_arrays(root / "models" / "checkpoints" / "last.weights.h5"))
                )
            (hist_a, w_a), (hist_b, w_b) = runs
            rows.append(
                {
                    "deterministic": flag,
                    "s_per_epoch": (epoch_seconds(hist_a) + epoch_seconds(hist_b)) / 2,
                    "loss1": (float(hist_a[0]["loss"]), float(hist_b[0]["loss"])),
                    "loss_end": (float(hist_a[-1]["loss"]), float(hist_b[-1]["loss"])),
                    "si_rmse_end": (
                        float(hist_a[-1]["val_si_rmse"]),
                        float(hist_b[-1]["val_si_rmse"]),
                    ),
                    "max_dw": max_weight_diff(w_a, w_b),
                }
            )
        print(
            f"{'deterministic':<14} {'s/epoch':>8} {'epoch-1 loss (run 1, run 2)':>30} "
            f"{'final loss (run 1, run 2)':>28} {'final val si-RMSE':>20} {'max |dw|':>9}"
        )
        for r in rows:
            print(
                f"{str(r['deterministic']):<14} {r['s_per_epoch']:8.2f} {r['loss1'][0]:14.7f} "
                f"{r['loss1'][1]:14.7f}  {r['loss_end'][0]:13.7f} {r['loss_end'][1]:13.7f}  "
                f"{r['si_rmse_end'][0]:9.5f} {r['si_rmse_end'][1]:9.5f} {r['max_dw']:9.2e}"
            )
        print(
            "deterministic / non-deterministic epoch time: "
            f"{rows[0]['s_per_epoch'] / rows[1]['s_per_epoch']:.3f}"
        )
        identical = rows[0]["max_dw"] == 0.0
        print(f"deterministic runs bit-identical: {'yes' if identical else 'NO'}")
        return 0 if identical else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
