"""Peak RAM of the train stage on real data, with the in-RAM cache on and forced off.

    .venv/bin/python -m bench.train_memory [--data ../shared/data/tum_fr1_xyz] [--epochs 1]

Runs `python -m stages.index` and `stages.prepare` once and then `python -m stages.train` in a
throw-away copy of the project (params.yaml + presets/tum.yaml, epochs reduced), each train run a
fresh process whose peak RSS is read from outside with os.wait4 (the kernel's maxrss of
exactly that child). Once with train.cache_max_mb from the params (decoded tensors kept
in RAM when they fit) and once with 0 (decoded from disk every epoch). Prints both and
the decoded size of the data set.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from PIL import Image

from bench.common import PARAMS, REPO, TUM
from pipeline.core.config import merge


def make_workspace(root: Path, params: dict) -> None:
    """The code and `params` in `root`, with the data indexed and split (ready to train)."""
    for name in ("pipeline", "stages"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("index", "prepare"):
        run_measured([sys.executable, "-m", f"stages.{stage}"], root)


def env() -> dict[str, str]:
    return dict(
        os.environ, TF_CPP_MIN_LOG_LEVEL="2", MLFLOW_DISABLE_TELEMETRY="true", PYTHONUNBUFFERED="1"
    )


def run_measured(cmd: list[str], cwd: Path) -> tuple[float, float, str]:
    """(peak RSS MB of that process, wall seconds, stdout+stderr)."""
    start = time.time()
    with tempfile.TemporaryFile(mode="w+") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env(), stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        text = log.read()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{text[-3000:]}")
    return usage.ru_maxrss / 1024, time.time() - start, text  # ru_maxrss is KiB on Linux


def train_once(root: Path, params: dict, **train_overrides) -> tuple[float, float, str, list[dict]]:
    """Train from scratch (checkpoints removed, so no resume) with the given overrides."""
    shutil.rmtree(root / "models", ignore_errors=True)
    run_params = merge(params, train_overrides)
    (root / "params.yaml").write_text(yaml.safe_dump(run_params, sort_keys=False))
    rss, wall, text = run_measured([sys.executable, "-m", "stages.train"], root)
    with open(root / "reports" / "history.csv", newline="") as f:
        history = list(csv.DictReader(f))
    return rss, wall, text, history


def decoded_mb(split_csv: Path) -> dict[str, float]:
    """Decoded size (uint8 RGB + uint16 depth at source resolution) per split, in MiB."""
    sizes: dict[str, float] = {"train": 0.0, "val": 0.0}
    with open(split_csv, newline="") as f:
        for row in csv.DictReader(f):
            with Image.open(row["rgb"]) as img:  # header only
                w, h = img.size
            sizes[row["split"]] += h * w * (3 + 2) / 2**20
    return sizes


def epoch_seconds(history: list[dict]) -> float:
    later = [float(r["seconds"]) for r in history[1:]] or [float(history[0]["seconds"])]
    return sum(later) / len(later)


def bench_arg_parser(description: str, *, epochs: int) -> argparse.ArgumentParser:
    """--data, --preset and --epochs, shared by the training benches."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", default=str(TUM), help="a folder in the challenge layout")
    parser.add_argument("--preset", default=str(REPO / "presets" / "tum.yaml"))
    parser.add_argument("--epochs", type=int, default=epochs)
    return parser


def workspace_params(args: argparse.Namespace) -> dict:
    """params.yaml + the preset, on the given data, with the given number of epochs."""
    params = merge(
        yaml.safe_load(PARAMS.read_text()), yaml.safe_load(Path(args.preset).read_text())
    )
    return merge(
        params,
        {
            "data": {"sources": {"data": {"path": str(Path(args.data).resolve())}}},
            "train": {"epochs": args.epochs},
        },
    )


def main() -> int:
    parser = bench_arg_parser(__doc__.split("\n")[0], epochs=1)
    parser.add_argument("--keep", action="store_true", help="keep the temp workspace")
    args = parser.parse_args()

    params = workspace_params(args)
    root = Path(tempfile.mkdtemp(prefix="train_memory."))
    try:
        make_workspace(root, params)
        sizes = decoded_mb(root / "data" / "prepared" / "split.csv")
        t = params["train"]
        print(f"data: {args.data}")
        print(
            f"train: {t['arch']} at {t['height']}x{t['width']}, batch {t['batch_size']}, "
            f"{args.epochs} epoch(s)"
        )
        print(
            f"decoded data set: train split {sizes['train']:.0f} MiB + val split "
            f"{sizes['val']:.0f} MiB = {sizes['train'] + sizes['val']:.0f} MiB (uint8 RGB + uint16 "
            "depth at source size)"
        )

        cache_mb = t["cache_max_mb"]
        results = []
        for label, value in (
            (f"cache on (cache_max_mb {cache_mb})", cache_mb),
            ("cache off (cache_max_mb 0)", 0),
        ):
            print(f"training, {label} ...", file=sys.stderr, flush=True)
            rss, wall, text, history = train_once(root, params, train={"cache_max_mb": value})
            mode = "in RAM" if "cache in RAM" in text else "off" if "cache off" in text else "train"
            results.append((label, mode, rss, wall, epoch_seconds(history)))
        print(f"{'run':<32} {'cache':>7} {'peak RSS MiB':>13} {'wall s':>8} {'s/epoch':>8}")
        for label, mode, rss, wall, sec in results:
            print(f"{label:<32} {mode:>7} {rss:13.0f} {wall:8.1f} {sec:8.1f}")
        print(f"peak RSS difference (on - off): {results[0][2] - results[1][2]:+.0f} MiB")
        return 0
    finally:
        if args.keep:
            print(f"workspace kept: {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
