"""Does the default model beat a constant on a scene it never saw? Each lever at one budget.

    .venv/bin/python bench/generalization.py [--epochs 15] [--steps-per-epoch 20]

Every run trains the default model (params.yaml's train section) for the same number of
optimizer steps, exports it to TFLite and scores it with the official metrics through
the evaluate stage's code, per held-out source, next to the constant prediction's
si-RMSE (std of ln depth) and the ratio of the two:

  tum->hololens, hololens->tum    train on one real scene, validate on all of the other
  ... +synthetic                  the same, starting from a model pretrained on the
                                  procedural scenes (train.init_from; its budget is extra)
  ... +synthetic-mix              the same, with the procedural scenes as a second
                                  training source (same budget, nothing forgotten)
  synthetic-only                  the pretrained model alone, scored on each real scene
  ... +imagenet                   encoder_weights: imagenet, when keras has the weights
                                  cached (this machine is offline: otherwise skipped)
  tum+hololens                    both scenes mixed, validated on the last block of each

With a held-out source as validation, training ships the last epoch (never the best on
the scene it reports). Nothing here is tuned on the held-out scenes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pipeline.config import load_params  # noqa: E402
from pipeline.data import build_split, write_split  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
REAL = {"tum": str(SHARED / "tum_fr1_xyz"), "hololens": str(SHARED / "hololens2_office")}


def imagenet_weights_cached(alpha: float) -> bool:
    from keras.src.backend.config import keras_home

    return any((Path(keras_home()) / "models").glob(f"mobilenet_v2_weights_*_{float(alpha)}_*_no_top.h5"))


def train_and_score(label: str, work: Path, *, sources: dict[str, str], val: str, args, train=None) -> dict:
    """Train one configuration, export fp32 TFLite, evaluate per validation source."""
    import keras

    from pipeline.evaluation import evaluate_model
    from pipeline.export import export_model, write_tflite
    from pipeline.predict import TFLiteDepthModel
    from pipeline.training import train as fit

    folder = work / label.replace(">", "").replace("+", "_")
    folder.mkdir(parents=True)
    params = load_params(REPO / "params.yaml", overrides={
        "base": {"deterministic": False},  # many trainings in one process: op order cannot be pinned
        "data": {"sources": {name: {"path": path} for name, path in sources.items()}, "val": val},
        "train": {"epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch, **(train or {})},
    })
    rows = build_split({n: s.path for n, s in params.data.sources.items()}, val=params.data.val,
                       val_fraction=params.data.val_fraction)
    split_csv = folder / "split.csv"
    write_split(split_csv, rows)
    keras.backend.clear_session()
    start = time.time()
    summary = fit(params, split_csv=split_csv, model_out=folder / "model.keras", ckpt_dir=folder / "ckpt",
                  history_csv=folder / "history.csv", fingerprint=label, log=lambda *a: None)
    minutes = (time.time() - start) / 60
    core = keras.saving.load_model(folder / "model.keras", compile=False)
    flatbuffer, _ = export_model(core, split_csv, cfg=params.export)
    write_tflite(folder / "model.tflite", flatbuffer)
    model = TFLiteDepthModel(folder / "model.tflite", num_threads=len(os.sched_getaffinity(0)))
    val_rows = [r for r in rows if r["split"] == "val"]
    result, _ = evaluate_model(model, val_rows, aspect=params.data.aspect)
    print(f"{label}: {summary['epochs']} epochs x {params.train.steps_per_epoch} steps in {minutes:.1f} min, "
          f"epoch shipped {summary['best_epoch']}", flush=True)
    return {"label": label, "minutes": minutes, "model": folder / "model.keras", "tflite": folder / "model.tflite",
            "sources": result["sources"]}


def score_zero_shot(label: str, tflite: Path, held_out: str) -> dict:
    """A trained model scored on all of one real scene, with no training on real data at all."""
    from pipeline.evaluation import evaluate_model
    from pipeline.predict import TFLiteDepthModel

    rows = [r for r in build_split(REAL, val=held_out, val_fraction=0.2) if r["split"] == "val"]
    model = TFLiteDepthModel(tflite, num_threads=len(os.sched_getaffinity(0)))
    result, _ = evaluate_model(model, rows, aspect=load_params(REPO / "params.yaml").data.aspect)
    return {"label": label, "minutes": 0.0, "sources": result["sources"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--steps-per-epoch", type=int, default=20)
    parser.add_argument("--synthetic-count", type=int, default=400, help="procedural scenes to pretrain on")
    parser.add_argument("--synthetic-size", default="240x320", help="HxW the scenes are rendered at (the model "
                        "works at params.yaml's train size; rendering at 480x640 costs 4x the time)")
    parser.add_argument("--pretrain-epochs", type=int, default=30, help="epochs of the synthetic pretraining "
                        "(a one-off cost, not part of the per-run budget)")
    parser.add_argument("--only", nargs="*", help="run only these labels (and what they need)")
    args = parser.parse_args()
    from pipeline.synthetic import write_dataset

    default = load_params(REPO / "params.yaml")
    wanted = (lambda label: not args.only or label in args.only)
    results = []
    with tempfile.TemporaryDirectory(prefix="generalization_") as tmp:
        work = Path(tmp)
        directions = (("tum", "hololens"), ("hololens", "tum"))
        for train_on, held_out in directions:
            if wanted(f"{train_on}->{held_out}"):
                results.append(train_and_score(f"{train_on}->{held_out}", work, sources=REAL, val=held_out, args=args))
        if any(wanted(f"{a}->{b}+synthetic{kind}") for a, b in directions for kind in ("", "-mix")) \
                or wanted("synthetic-only"):
            start = time.time()
            height, width = (int(n) for n in args.synthetic_size.split("x"))
            write_dataset(work / "synthetic", count=args.synthetic_count, seed=default.base.seed, height=height,
                          width=width, invalid_fraction=default.data.synthetic.invalid_fraction)
            print(f"rendered {args.synthetic_count} synthetic scenes of {width}x{height} in "
                  f"{time.time() - start:.0f} s", flush=True)
        if any(wanted(f"{a}->{b}+synthetic") for a, b in directions) or wanted("synthetic-only"):
            pre = train_and_score("pretrain-synthetic", work, sources={"synthetic": str(work / "synthetic")},
                                  val="blocks", args=args, train={"epochs": args.pretrain_epochs})
            if wanted("synthetic-only"):  # what the procedural scenes alone teach about real ones
                results += [score_zero_shot("synthetic-only", pre["tflite"], held_out) for held_out in REAL]
        for train_on, held_out in directions:
            label = f"{train_on}->{held_out}+synthetic"
            if wanted(label):
                results.append(train_and_score(label, work, sources=REAL, val=held_out, args=args,
                                               train={"init_from": str(pre["model"])}))
            if wanted(label + "-mix"):
                mixed = {**REAL, "synthetic": str(work / "synthetic")}
                results.append(train_and_score(label + "-mix", work, sources=mixed, val=held_out, args=args))
        imagenet_ok = imagenet_weights_cached(default.train.width_multiplier)
        for train_on, held_out in directions:
            label = f"{train_on}->{held_out}+imagenet"
            if wanted(label) and imagenet_ok:
                results.append(train_and_score(label, work, sources=REAL, val=held_out, args=args,
                                               train={"encoder_weights": "imagenet"}))
        if wanted("tum+hololens"):
            results.append(train_and_score("tum+hololens", work, sources=REAL, val="blocks", args=args))

    print(f"\nmodel: {default.train.arch} x{default.train.width_multiplier} at {default.train.height}x"
          f"{default.train.width}; budget {args.epochs} x {args.steps_per_epoch} steps of batch "
          f"{default.train.batch_size} per run; official metrics of the fp32 TFLite model")
    if not imagenet_ok:
        print("imagenet: skipped, no cached keras.applications MobileNetV2 weights (they download from the internet)")
    print(f"{'run':<28} {'held-out scene':<15} {'images':>6} {'si-RMSE':>8} {'constant':>8} {'ratio':>6} {'min':>5}")
    for r in results:
        for source, m in r["sources"].items():
            print(f"{r['label']:<28} {source:<15} {m['n_images']:>6} {m['si_rmse']:>8.4f} "
                  f"{m['baseline_si_rmse']:>8.4f} {m['ratio_to_constant']:>6.2f} {r['minutes']:>5.1f}")


if __name__ == "__main__":
    main()
