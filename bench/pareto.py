"""The organizers' baseline against our models at the same wall-clock training budget.

    .venv/bin/python -m bench.pareto [--minutes 3] [--source NAME=PATH ...] [--val blocks|NAME]

Each model trains on the same split (default: TUM fr1_xyz + HoloLens office mixed, validated
on the last block of each), for `--minutes` of wall-clock in its training steps, the first
one's graph tracing included (validation passes and the step-time probe are not counted;
pipeline.model.training.StepBudget stops before a step that would not fit), is exported to
TFLite by the export stage's code, scored with the official metrics by the evaluate stage's
code, and timed at 480x640 with the same threads, one model after another at the end, with
the calibrated Pi 4 estimate (pipeline.device.rpi4). Learning-rate schedules are sized to
the budget: the number of steps comes from a step time measured on random batches before
training.

  baseline-organizers   mai_baseline_unet at its own size (the organizers' U-Net) with their
                        recipe: presets/organizers.yaml (RMSE loss, Adam 2e-5, batch 32)
  baseline-ours         the same network with our recipe (params.yaml)
  default               params.yaml as it is (mobile_unet)
  fastdepth, litedepth  params.yaml with that train.arch, at its own (auto) size

Ratios are to the stronger baseline (the lower si-RMSE of the two that did not fail). A model
whose outputs are all 0, not finite or constant is reported as collapsed, one whose outputs
are far beyond any indoor depth as diverged: said, never hidden.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import REAL, REPO, bench_params, source_entries, split_rows, train_and_score
from pipeline.core.config import VAL_BLOCKS
from pipeline.data.dataset import write_split

ORGANIZERS = REPO / "presets" / "organizers.yaml"
BASELINE = "mai_baseline_unet"
# label -> (preset files, train overrides); trained in this order, the heaviest first, while
# the process holds the least memory (batch 32 of the baseline takes ~10 GB)
MODELS = {
    "baseline-organizers": ((ORGANIZERS,), {}),
    "baseline-ours": ((), {"arch": BASELINE}),
    "default": ((), {}),
    "fastdepth": ((), {"arch": "fastdepth"}),
    "litedepth": ((), {"arch": "litedepth"}),
}
DEFAULT = "default"
PLAN_SHARE = 0.9  # of the budget planned for steps: random batches leave out the input pipeline
MAX_EPOCHS = 3  # validation passes per model (one per epoch); the baseline's cost a minute each
MIN_STEPS_PER_EPOCH = 50
FASTEST_STEP_S = 0.01  # a constant learning rate needs no plan: enough steps for any budget
DIVERGED_M = 1000.0  # a median prediction past this is no indoor depth
RESULT = (
    "result.json"  # a finished model's row, reused by a later run with the same --keep and setup
)
# The targets for the default model (#17)
TARGET_RPI4_MS, TARGET_RPI4_RATIO, TARGET_SCORE_RATIO = 37.0, 0.05, 10.0


def parse_source(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=PATH")
    return name, str(Path(path).resolve())


def constant_lr(train) -> bool:
    return train.warmup_epochs == 0 and train.min_lr_ratio == 1.0


def measure_step_s(params) -> tuple[float, float]:
    """(seconds per optimizer step of this model, batch and loss on random batches, seconds
    more that the first step takes: tracing the graph); up to 3 steps timed, fewer when slow."""
    import keras
    import numpy as np

    from pipeline.model.losses import make_loss
    from pipeline.model.networks import build_model

    cfg = params.train
    keras.backend.clear_session()
    model = build_model(cfg)
    model.compile(
        optimizer=keras.optimizers.AdamW(cfg.learning_rate, weight_decay=cfg.weight_decay),
        loss=make_loss(cfg.loss),
    )
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (cfg.batch_size, cfg.height, cfg.width, 3)).astype(np.float32)
    y = rng.uniform(0.5, 5.0, (cfg.batch_size, cfg.height, cfg.width, 1)).astype(np.float32)
    start = time.perf_counter()
    model.train_on_batch(x, y)
    first = time.perf_counter() - start
    times: list[float] = []
    while len(times) < 3 and sum(times) < 20:
        start = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    del model
    keras.backend.clear_session()
    gc.collect()
    step_s = statistics.median(times)
    return step_s, max(first - step_s, 0.0)


def plan(params, budget_s: float) -> tuple[dict, float | None]:
    """(train overrides: epochs and steps per epoch that fill the budget, measured step s).
    The budget counts every step, the first one's graph tracing too: planned without it."""
    if constant_lr(params.train):
        return {"epochs": 1, "steps_per_epoch": math.ceil(budget_s / FASTEST_STEP_S)}, None
    step_s, trace_s = measure_step_s(params)
    steps = max(int((budget_s - trace_s) * PLAN_SHARE / step_s), 1)
    epochs = min(MAX_EPOCHS, max(steps // MIN_STEPS_PER_EPOCH, 1))
    return {"epochs": epochs, "steps_per_epoch": math.ceil(steps / epochs)}, step_s


def outputs(model, rows, n: int = 4):
    """The TFLite model's depth maps of n val images spread over the split (small size)."""
    import numpy as np

    from pipeline.core.files import read_rgb

    picks = [rows[int(i * len(rows) / n)] for i in range(min(n, len(rows)))]
    return np.stack([model.predict(read_rgb(r["rgb"]), out_size=(120, 160)) for r in picks])


def failure(preds) -> str:
    """'' when depth maps look like depth, else what is wrong: collapsed (all 0, not finite,
    constant) or diverged (far beyond any indoor depth)."""
    import numpy as np

    if not np.isfinite(preds).all():
        return f"collapsed: {np.mean(~np.isfinite(preds)):.0%} of outputs not finite"
    if not (preds > 0).any():
        return "collapsed: every output is 0"
    if float(preds.std()) < 1e-6 * max(float(np.abs(preds).max()), 1e-12):
        return f"collapsed: every output is {float(preds.mean()):.3g} m"
    if float(np.median(preds)) > DIVERGED_M:
        return f"diverged: median output {float(np.median(preds)):.3g} m"
    return ""


def run(label: str, presets, overrides: dict, work: Path, split_csv: Path, args) -> dict:
    """One model: its steps planned for the budget, then the shared chain (train within the
    budget, TFLite, official metrics), then a look at its outputs; its row of the table."""
    from pipeline.core.host import usable_cpus
    from pipeline.device.predict import TFLiteDepthModel

    base = {
        "base": {"deterministic": False},  # many trainings in one process
        "data": {"sources": source_entries(args.sources), "val": args.val},
    }
    params = bench_params(base, {"train": overrides}, presets=presets)
    budget_s = args.minutes * 60
    sizing, step_s = plan(params, budget_s)
    params = bench_params(base, {"train": {**overrides, **sizing}}, presets=presets)
    t = params.train
    folder = work / label
    shutil.rmtree(folder, ignore_errors=True)  # what a killed run left
    print(
        f"\n== {label}: {t.arch} x{t.width_multiplier} at {t.height}x{t.width}, batch "
        f"{t.batch_size}, lr {t.learning_rate:g}"
        + (
            f", {step_s:.2f} s/step measured -> {t.epochs} x {t.steps_per_epoch} steps"
            if step_s
            else ", constant lr: steps until the budget"
        ),
        flush=True,
    )
    done = train_and_score(
        label,
        folder,
        params,
        split_csv=split_csv,
        step_budget_s=budget_s,
        log=print,
        announce=False,
    )
    summary, result = done["summary"], done["result"]
    preds = outputs(
        TFLiteDepthModel(done["tflite"], num_threads=usable_cpus()),
        [r for r in done["rows"] if r["split"] == "val"],
    )
    note = failure(preds)
    if not math.isfinite(summary.get("final_loss") or math.nan):
        note = "; ".join(filter(None, [note, "training loss not finite"]))
    zeros = float((preds <= 0).mean())  # a ReLU head's dead pixels: scored as 1 mm
    print(
        f"{label}: {summary['steps']} steps x batch {summary['batch_size']} in "
        f"{done['minutes']:.1f} min (with validation), si-RMSE {result['si_rmse']:.4f} vs constant "
        f"{result['baseline_si_rmse']:.4f}" + (f"; {note}" if note else ""),
        flush=True,
    )
    row = {
        "label": label,
        "arch": t.arch,
        "size": f"{t.height}x{t.width}",
        "width": t.width_multiplier,
        "batch": summary["batch_size"],
        "lr": t.learning_rate,
        "steps": summary["steps"],
        "step_s": step_s,
        "train_min": done["minutes"],
        "params": summary["params"],
        "gmacs": done["export"]["macs"] / 1e9,
        "tflite": str(done["tflite"]),
        "si_rmse": result["si_rmse"],
        "constant": result["baseline_si_rmse"],
        "ratio_const": result["ratio_to_constant"],
        "sources": result["sources"],
        "note": note,
        "zeros": zeros,
        "setup": setup(args),
    }
    (folder / RESULT).write_text(json.dumps(row))
    return row


def setup(args) -> dict:
    return {"sources": args.sources, "val": args.val, "minutes": args.minutes}


def finished(folder: Path, args) -> dict | None:
    """The row of a model an earlier run with the same setup finished in `folder` (--keep)."""
    try:
        row = json.loads((folder / RESULT).read_text())
    except (OSError, ValueError):
        return None
    if row.get("setup") != setup(args) or not Path(row["tflite"]).is_file():
        return None
    print(f"{row['label']}: finished by an earlier run in {folder.parent}; reused", flush=True)
    return row


def time_all(rows: list[dict], params, rounds: int) -> None:
    """Local median and est. Pi 4 ms of every model, after all training: `rounds` passes over
    all models, each keeping its fastest pass (other jobs on shared cores only slow a timing)."""
    from pipeline.core.metrics import challenge_score
    from pipeline.device import rpi4

    b = params.benchmark
    for _ in range(rounds):
        for row in rows:
            timed = rpi4.time_local(row["tflite"], threads=b.threads, warmup=b.warmup, runs=b.runs)
            if timed["median_ms"] < row.get("median_ms", math.inf):
                row.update(
                    median_ms=timed["median_ms"],
                    threads=timed["threads"],
                    **{k: timed[k] for k in rpi4.ESTIMATE_KEYS},
                )
    for row in rows:
        row["score"] = (
            challenge_score(si_rmse=row["si_rmse"], runtime_s=row["est_rpi4_ms"] / 1000)
            if row["est_rpi4_ms"] and math.isfinite(row["si_rmse"])
            else math.nan
        )
        row["score_local"] = (
            challenge_score(si_rmse=row["si_rmse"], runtime_s=row["median_ms"] / 1000)
            if math.isfinite(row["si_rmse"])
            else math.nan
        )


def reference(rows: list[dict]) -> dict | None:
    """The stronger baseline: the lower si-RMSE of the baseline rows that did not fail."""
    baselines = [r for r in rows if r["arch"] == BASELINE]
    healthy = [r for r in baselines if not r["note"] and math.isfinite(r["si_rmse"])]
    return min(
        healthy or baselines,
        key=lambda r: r["si_rmse"] if math.isfinite(r["si_rmse"]) else math.inf,
        default=None,
    )


ROWS = (  # (title, key, format, compare to the reference)
    ("params", "params", "{:,.0f}", True),
    ("GMACs (480x640 model)", "gmacs", "{:.2f}", True),
    ("working size", "size", "{}", False),
    ("batch, learning rate", None, lambda r: f"{r['batch']}, {r['lr']:g}", False),
    ("optimizer steps in budget", "steps", "{:,}", True),
    ("local median ms", "median_ms", "{:.1f}", True),
    ("est. Pi 4 ms", "est_rpi4_ms", "{:.0f}", True),
    (
        "est. Pi 4 range",
        None,
        lambda r: f"{r['est_rpi4_ms_lo']:.0f}..{r['est_rpi4_ms_hi']:.0f}",
        False,
    ),
    ("si-RMSE", "si_rmse", "{:.4f}", True),
    ("constant si-RMSE", "constant", "{:.4f}", False),
    ("si-RMSE / constant", "ratio_const", "{:.2f}", True),
    ("score (est. Pi 4)", "score", "{:.3g}", True),
    ("score (local median)", "score_local", "{:.3g}", True),
)


def cell(row: dict, key, fmt, ref: dict | None, compare: bool) -> str:
    if key is None:
        return fmt(row)
    value = row.get(key)
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    text = fmt.format(value)
    if (
        compare
        and ref is not None
        and row is not ref
        and isinstance(ref.get(key), (int, float))
        and ref[key]
    ):
        text += f" (x{value / ref[key]:.3g})"
    return text


def print_comparison(rows: list[dict], ref: dict | None) -> None:
    """One column per model, one line per figure (ROWS), each with its ratio to `ref`."""
    titles = [title for title, *_ in ROWS]
    columns = [
        [r["label"], *(cell(r, key, fmt, ref, cmp) for _, key, fmt, cmp in ROWS)] for r in rows
    ]
    first = max(map(len, ["", *titles]))
    widths = [max(map(len, col)) for col in columns]
    print("  ".join([" " * first, *(c[0].rjust(w) for c, w in zip(columns, widths))]))
    for i, title in enumerate(titles, 1):
        print("  ".join([title.ljust(first), *(c[i].rjust(w) for c, w in zip(columns, widths))]))


def print_targets(rows: list[dict], ref: dict | None) -> None:
    default = next((r for r in rows if r["label"] == DEFAULT), None)
    if default is None or ref is None:
        print("targets: need both the default model and a baseline (--only)")
        return

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    ms, ref_ms = default["est_rpi4_ms"], ref["est_rpi4_ms"]
    print(f"targets (#17), default model vs {ref['label']}:")
    print(f"- est. Pi 4 {ms:.1f} ms <= {TARGET_RPI4_MS:.0f} ms: {verdict(ms <= TARGET_RPI4_MS)}")
    print(
        f"- est. Pi 4 x{ms / ref_ms:.4f} of the baseline's <= x{TARGET_RPI4_RATIO}: "
        f"{verdict(ms <= TARGET_RPI4_RATIO * ref_ms)}"
    )
    print(
        f"- si-RMSE {default['si_rmse']:.4f} no worse than the baseline's {ref['si_rmse']:.4f} at "
        f"the same budget: {verdict(default['si_rmse'] <= ref['si_rmse'])}"
    )
    ratio = default["score"] / ref["score"]
    print(
        f"- score x{ratio:.1f} of the baseline's >= x{TARGET_SCORE_RATIO:g}: "
        f"{verdict(ratio >= TARGET_SCORE_RATIO)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--minutes", type=float, default=3.0, help="training budget per model (steps only)"
    )
    parser.add_argument(
        "--source",
        dest="sources",
        type=parse_source,
        action="append",
        help="NAME=PATH, repeatable (default: tum and hololens from ../shared/data)",
    )
    parser.add_argument(
        "--val",
        default=VAL_BLOCKS,
        help="blocks (the last block of every source) or a source name held out whole",
    )
    parser.add_argument("--only", nargs="*", choices=list(MODELS), help="train only these")
    parser.add_argument(
        "--keep",
        type=Path,
        help="keep models and results in this folder; a later run with the "
        "same folder and setup reuses the models finished there (a killed run goes on)",
    )
    parser.add_argument(
        "--timing-rounds",
        type=int,
        default=2,
        help="passes over all models; each keeps its fastest",
    )
    args = parser.parse_args()
    args.sources = dict(args.sources or REAL)
    params = bench_params({"data": {"sources": source_entries(args.sources), "val": args.val}})
    rows = split_rows(params)
    n_train = sum(r["split"] == "train" for r in rows)
    with tempfile.TemporaryDirectory(prefix="pareto_") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        split_csv = work / "split.csv"
        write_split(split_csv, rows)
        results = [
            finished(work / label, args) or run(label, presets, overrides, work, split_csv, args)
            for label, (presets, overrides) in MODELS.items()
            if not args.only or label in args.only
        ]
        print(
            f"\ntiming every model, one after another, {args.timing_rounds} rounds ...", flush=True
        )
        time_all(results, params, args.timing_rounds)

    from pipeline.device import rpi4

    ref = reference(results)
    print(
        f"\ndata: {', '.join(f'{n} ({p})' for n, p in args.sources.items())}; val {args.val}: "
        f"{n_train} train / {len(rows) - n_train} val images; official metrics of the fp32 TFLite "
        f"model at 480x640 (aspect {params.data.aspect})"
    )
    print(
        f"budget: {args.minutes:g} min of training steps per model; timing at 480x640, "
        f"{results[0]['threads']} threads, median of {params.benchmark.runs} (fastest of "
        f"{args.timing_rounds} rounds); score = 2^(-20 si-RMSE) / (100 s), ratios (xN) to "
        f"{ref['label'] if ref else 'no baseline'}"
    )
    print_comparison(results, ref)
    for line in rpi4.describe_rows([{**r, "precision": "fp32"} for r in results]):
        print(f"# {line}")
    for r in results:
        warnings = [
            r["note"],
            f"worse than a constant prediction (si-RMSE x{r['ratio_const']:.2f})"
            if r["ratio_const"] > 1
            else "",
            f"{r['zeros']:.0%} of its outputs are 0 m (scored as 1 mm)"
            if r["zeros"] > 0.01
            else "",
        ]
        if any(warnings):
            print(f"! {r['label']}: {'; '.join(filter(None, warnings))}")
        per_source = ", ".join(
            f"{name} {m['si_rmse']:.4f} (x{m['ratio_to_constant']:.2f} const)"
            for name, m in r["sources"].items()
        )
        print(f"  {r['label']}: per source {per_source}")
    print_targets(results, ref)


if __name__ == "__main__":
    main()
