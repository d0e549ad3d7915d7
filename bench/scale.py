"""Scale: what prepare, train, evaluate and package cost as the data grows from 1K to 8K pairs
(the challenge's training set is ~8,300 pairs of 640x480).

    .venv/bin/python -m bench.scale [--sizes 1000,2000,4000,8000] [--steps 40] [--batches 8,16]
                                     [--cache-mb 2048] [--eval-images 1000] [--keep]

Each data set of N pairs is built without copying a byte: hard links (symlinks across file
systems) to the shared TUM (640x480) and HoloLens (540x360) pairs under new names, the two
sizes interleaved, in a temp folder. Every figure comes from the real stages, each run in a
fresh process in a throw-away copy of the project, its peak RSS read from /proc (VmHWM):
- prepare: `stages.index` (decode and check every pair) + `stages.prepare` (the split), per size;
- train: one epoch of --steps steps (default model and params) with the RAM cache at --cache-mb
  and off (0): median step time after 5 warm-up steps, and the peak RSS of the whole stage
  (cache fill, steps, the validation pass over the size's val split, saving); the
  streaming/cached step-time ratio at each --batches size;
- evaluate and package: on --eval-images and a quarter of that (mixed sizes), with the
  model the largest train run saved, exported to TFLite (export is timed too).
This process imports no TensorFlow: the workers' figures are their own.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from bench.common import HOLOLENS, PARAMS, REPO, TUM
from pipeline.core import host

SOURCES = (TUM, HOLOLENS)
WARMUP_STEPS = 5  # the first steps trace the graph (15-20 s on 2 cores)
PREPARE_TARGET_S, RATIO_TARGET = 120.0, 1.2

# Runs one stage's main() in this (fresh) process and prints a JSON line: exit code, wall
# seconds, peak RSS (VmHWM; getrusage's ru_maxrss would include the parent's peak, kept
# across exec) and, for train, the time of every step (a callback slipped into fit).
WORKER = r"""
import importlib, json, os, sys, time
stage = sys.argv[1]
steps = []
if stage == "train":
    import keras
    from pipeline.model import training

    class StepTimer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            steps.append(time.perf_counter() - self.t0)

    original = training._train
    training._train = lambda params, **kw: original(params, extra_callbacks=[StepTimer()], **kw)
from pipeline.core.cli import run_stage
start = time.perf_counter()
code = run_stage(importlib.import_module("stages." + stage).main, sys.argv[2:])
wall = time.perf_counter() - start
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
result = {"code": code, "wall_s": wall, "peak_mb": int(hwm.split()[1]) / 1024, "steps": steps}
print("RESULT " + json.dumps(result))
"""


def shared_pairs() -> list[tuple[Path, str]]:
    """(source folder, name) of every shared pair, the sources interleaved."""
    lists = []
    for source in SOURCES:
        if not (source / "rgb").is_dir():
            sys.exit(f"error: {source}: shared data set not found")
        lists.append([(source, p.name) for p in sorted((source / "rgb").glob("*.png"))])
    mixed = []
    for i in range(max(map(len, lists))):
        mixed += [names[i] for names in lists if i < len(names)]
    return mixed


def link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system: a symlink still copies nothing
        os.symlink(src, dst)


def linked_set(folder: Path, pairs: list[tuple[Path, str]], n: int) -> Path:
    """A challenge-layout folder of n pairs: links to `pairs`, cycled, named 000000.png ..."""
    for sub in ("rgb", "depth"):
        (folder / sub).mkdir(parents=True)
    for k in range(n):
        source, name = pairs[k % len(pairs)]
        for sub in ("rgb", "depth"):
            link(source / sub / name, folder / sub / f"{k:06d}.png")
    return folder


def workspace(root: Path, data: Path) -> Path:
    """The code and params.yaml (the defaults, on `data`, one epoch) in `root`."""
    for name in ("pipeline", "stages"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load(PARAMS.read_text())
    params["data"]["sources"] = {"scale": {"path": str(data), "weight": 1.0}}
    params["train"]["epochs"] = 1
    write_params(root, params)
    return root


def write_params(root: Path, params: dict) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run(root: Path, stage: str, *args: str) -> dict:
    env = dict(
        os.environ, PYTHONPATH=str(root), TF_CPP_MIN_LOG_LEVEL="2", MLFLOW_DISABLE_TELEMETRY="true"
    )
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, stage, *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0 or "RESULT " not in proc.stdout:
        sys.exit(
            f"{stage} in {root} failed "
            f"({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        )
    result = json.loads(proc.stdout.rsplit("RESULT ", 1)[1])
    result["log"] = proc.stdout
    return result


def train(root: Path, *, steps: int, batch: int, cache_mb: int) -> dict:
    """One epoch from scratch (checkpoints removed: no resume)."""
    shutil.rmtree(root / "models", ignore_errors=True)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"].update(steps_per_epoch=steps, batch_size=batch, cache_max_mb=cache_mb)
    write_params(root, params)
    result = run(root, "train")
    timed = result["steps"][WARMUP_STEPS:]
    result["step_ms"] = statistics.median(timed) * 1000
    line = next(
        (ln for ln in result["log"].splitlines() if ln.startswith("train: ") and " cache " in ln),
        "",
    )
    result["cache"] = line.split(" cache ", 1)[1].split(",")[0] if line else "?"
    return result


def eval_subset(root: Path, n: int, folder: Path) -> None:
    """split.csv's first n rows as the val split (evaluate), and their RGB in `folder`
    (package.inputs)."""
    split, full = root / "data/prepared/split.csv", root / "data/prepared/split_all.csv"
    if not full.exists():
        shutil.copy(split, full)
    with open(full, newline="") as f:
        rows = list(csv.DictReader(f))
    if n > len(rows):
        sys.exit(f"error: --eval-images {n} is more than the {len(rows)} pairs of the largest size")
    folder.mkdir()
    for row in rows[:n]:
        row["split"] = "val"
        link(Path(row["rgb"]), folder / Path(row["rgb"]).name)
    with open(split, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows[:n])
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["package"]["inputs"] = str(folder)
    write_params(root, params)


def growth(values: dict[int, float], n: int) -> str:
    first = min(values)
    return f"x{values[n] / values[first]:.2f}" if values[first] else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes", default="1000,2000,4000,8000", help="pairs per data set, comma-separated"
    )
    parser.add_argument(
        "--steps", type=int, default=40, help="training steps timed per run (the epoch's length)"
    )
    parser.add_argument(
        "--batches", default="8,16", help="batch sizes of the streaming/cached ratio"
    )
    parser.add_argument(
        "--cache-mb", type=int, default=2048, help="train.cache_max_mb of the cache-on runs"
    )
    parser.add_argument("--eval-images", type=int, default=1000)
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    batches = [int(b) for b in args.batches.split(",")]
    if args.steps <= WARMUP_STEPS:
        sys.exit(f"error: --steps must be more than the {WARMUP_STEPS} warm-up steps")

    load = os.getloadavg()[0]
    cores = host.usable_cpus()
    gpu = "no GPU" if not shutil.which("nvidia-smi") else "an NVIDIA GPU (see nvidia-smi)"
    print(
        f"machine: {cores} cores, "
        f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB RAM, {gpu}; "
        f"load average {load:.1f} at the start (other jobs share the cores)"
    )
    tmp = Path(tempfile.mkdtemp(prefix="scale."))
    pairs = shared_pairs()
    print(
        f"data: {len(pairs)} shared pairs ({', '.join(s.name for s in SOURCES)}: 640x480 and "
        f"540x360 mixed), linked under new names in {tmp}; sizes {sizes}"
    )
    try:
        roots = {}
        prep = {}
        print("\n== prepare (index: decode + check every pair; prepare: the split) ==")
        print(
            f"{'pairs':>6} {'index s':>8} {'prepare s':>9} {'total s':>8} {'growth':>7} "
            f"{'ms/pair':>8} {'peak RSS MB':>12}"
        )
        for n in sizes:
            data = linked_set(tmp / f"data{n}", pairs, n)
            roots[n] = workspace(tmp / f"ws{n}", data)
            index, prepare = run(roots[n], "index"), run(roots[n], "prepare")
            prep[n] = {
                "s": index["wall_s"] + prepare["wall_s"],
                "peak": max(index["peak_mb"], prepare["peak_mb"]),
            }
            print(
                f"{n:6d} {index['wall_s']:8.1f} {prepare['wall_s']:9.1f} {prep[n]['s']:8.1f} "
                f"{growth({k: v['s'] for k, v in prep.items()}, n):>7} "
                f"{prep[n]['s'] / n * 1000:8.2f} {prep[n]['peak']:12.0f}",
                flush=True,
            )

        print(f"\n== train: one epoch of {args.steps} steps, default model, batch {batches[0]} ==")
        print(
            f"{'pairs':>6} {'cache_max_mb':>12} {'cache':>38} {'step ms':>8} {'peak RSS MB':>12} "
            f"{'stage s':>8}"
        )
        runs = {}
        plan = [(n, args.cache_mb) for n in sizes] + [
            (n, 0) for n in dict.fromkeys((sizes[0], sizes[-1]))
        ]
        for n, cache_mb in plan:
            r = train(roots[n], steps=args.steps, batch=batches[0], cache_mb=cache_mb)
            runs[n, cache_mb, batches[0]] = r
            print(
                f"{n:6d} {cache_mb:12d} {r['cache']:>38} {r['step_ms']:8.0f} {r['peak_mb']:12.0f} "
                f"{r['wall_s']:8.1f}",
                flush=True,
            )
        for batch in batches[1:]:
            for cache_mb in (args.cache_mb, 0):
                r = train(roots[sizes[0]], steps=args.steps, batch=batch, cache_mb=cache_mb)
                runs[sizes[0], cache_mb, batch] = r
                print(
                    f"{sizes[0]:6d} {cache_mb:12d} {r['cache']:>38} {r['step_ms']:8.0f} "
                    f"{r['peak_mb']:12.0f} {r['wall_s']:8.1f}  (batch {batch})",
                    flush=True,
                )

        print(
            f"\n== evaluate and package (the model of the {sizes[-1]}-pair train run, exported) =="
        )
        big = roots[sizes[-1]]
        bench_json = {
            "median_ms": 10.0,
            "threads": cores,
        }  # package's readme needs a runtime; not timed here
        (big / "metrics").mkdir(exist_ok=True)
        (big / "metrics/benchmark.json").write_text(json.dumps(bench_json))
        export = run(big, "export")
        print(f"export: {export['wall_s']:.1f} s, peak RSS {export['peak_mb']:.0f} MB")
        print(f"{'stage':>9} {'images':>7} {'s':>7} {'ms/image':>9} {'peak RSS MB':>12}")
        evals = {}
        for m in (args.eval_images // 4, args.eval_images):
            eval_subset(big, m, tmp / f"inputs{m}")
            for stage in ("evaluate", "package"):
                r = evals[stage, m] = run(big, stage)
                print(
                    f"{stage:>9} {m:7d} {r['wall_s']:7.1f} {r['wall_s'] / m * 1000:9.1f} "
                    f"{r['peak_mb']:12.0f}",
                    flush=True,
                )

        print("\n== against the targets ==")
        first, last = sizes[0], sizes[-1]
        ok = prep[last]["s"] <= PREPARE_TARGET_S
        print(
            f"prepare of {last} pairs: {prep[last]['s']:.0f} s on {cores} cores (target <= "
            f"{PREPARE_TARGET_S:.0f} s): {'met' if ok else 'MISSED'}; "
            f"{prep[last]['s'] / prep[first]['s']:.2f}x the time for {last / first:.0f}x the pairs"
        )
        on = {n: runs[n, args.cache_mb, batches[0]]["peak_mb"] for n in sizes}
        off = {n: runs[n, 0, batches[0]]["peak_mb"] for n in dict.fromkeys((first, last))}
        print(
            f"train peak RSS at cache_max_mb {args.cache_mb}: "
            + ", ".join(f"{n}: {v:.0f} MB" for n, v in on.items())
            + f"; largest minus smallest size {on[last] - on[first]:+.0f} MB; cache off: "
            + ", ".join(f"{n}: {v:.0f} MB" for n, v in off.items())
        )
        bounded = max(on.values()) <= off[first] + args.cache_mb and on[last] <= on[first] + 100
        print(
            f"  bounded (every run <= cache-off peak + cache_max_mb, and {last} pairs no more than "
            f"{first} + 100 MB): {'met' if bounded else 'MISSED'}"
        )
        for batch in batches:
            cached, streamed = runs[first, args.cache_mb, batch], runs[first, 0, batch]
            ratio = streamed["step_ms"] / cached["step_ms"]
            print(
                f"streaming / cached step time at batch {batch} ({first} pairs): "
                f"{streamed['step_ms']:.0f} / {cached['step_ms']:.0f} ms = {ratio:.2f} (target <= "
                f"{RATIO_TARGET}): {'met' if ratio <= RATIO_TARGET else 'MISSED'}"
            )
        big_step = runs[last, args.cache_mb, batches[0]]
        print(
            f"  {last} pairs at cache_max_mb {args.cache_mb} ({big_step['cache']}): "
            f"{big_step['step_ms']:.0f} ms/step, "
            f"{big_step['step_ms'] / runs[first, args.cache_mb, batches[0]]['step_ms']:.2f}x the "
            "cached step"
        )
        for stage in ("evaluate", "package"):
            small, large = evals[stage, args.eval_images // 4], evals[stage, args.eval_images]
            extra = args.eval_images - args.eval_images // 4
            print(
                f"{stage}: {args.eval_images // 4} -> {args.eval_images} images: time "
                f"x{large['wall_s'] / small['wall_s']:.2f} "
                f"({(large['wall_s'] - small['wall_s']) / extra * 1000:.1f} ms per added image), "
                f"peak RSS {small['peak_mb']:.0f} -> {large['peak_mb']:.0f} MB "
                f"({large['peak_mb'] - small['peak_mb']:+.0f} MB)"
            )
        print(
            f"load average at the end {os.getloadavg()[0]:.1f}; GPU: none on this machine, so no "
            "fp32 vs mixed-precision images/s figure"
            if gpu == "no GPU"
            else ""
        )
        return 0
    finally:
        if args.keep:
            print(f"kept: {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
