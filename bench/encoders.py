"""Pretrained encoders of several families and sizes on the held-out Pareto: ratio on a scene
never seen against est. Raspberry Pi 4 ms, with and without the published teacher.

    .venv/bin/python -m bench.encoders
        [--students v1-0.25@128x160 v1-0.5@128x160 ...] [--kinds alone teacher]
        [--directions tum->hololens hololens->tum] [--seeds 1] [--epochs 15] [--steps-per-epoch 20]
        [--teacher ../shared/teachers/pydnet_matterport/pydnet_matterport.tflite]
        [--results FILE.jsonl] [--report FILE.jsonl ...] [--plot docs/pretrained-pareto.png]

A student is mobile_unet with a pretrained encoder from ../shared/encoders (bench.common
PRETRAINED: v2-1.0, v2-0.5 (DeepLab's), v1-0.75/0.5/0.25, v3s-1.0; `-scratch` for the same
encoder from fresh weights) at a working size, with params.yaml's train section otherwise
(train.encoder_batchnorm, train.encoder_lr_scale). Kinds, per direction A->B, none of them
with any image of B:
  alone      trained on A's labelled images
  teacher    + the teacher's depth on A's images and on the 600 shared room photographs (the
             settings and distillation weights of presets/teacher.yaml, as bench.generalization's
             A->B+teacher+rooms row)
Every run has the same number of optimizer steps, is exported to fp32 TFLite, scored with the
official metrics on all of B and reported as the ratio of its si-RMSE to a constant
prediction's (lower is better); the teacher's own ratio on B is the anchor. After all training,
each student's architecture is timed at 480x640 (benchmark.threads, capped at the cores here,
fastest of --rounds passes) with the calibrated Pi 4 estimate (pipeline.device.rpi4).

With --rooms-holdout N the last N room photographs stay out of training, and each teacher run
is also scored against the teacher's maps on them (column `rooms`: si-RMSE to the teacher over
a constant's): how near a student comes to its teacher on images no one trained on, a figure to
choose levers on without any image of the scenes the table reports.

Each finished run is appended to --results (JSON lines) as it ends: a bench cut short keeps
its runs, and --report FILE ... prints the table and draws the plot from earlier results
(several files, e.g. a 1-seed sweep and a 3-seed rerun of the front) without training.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
from pathlib import Path

from bench.common import (
    REAL,
    ROOMS,
    bench_params,
    encoder_overrides,
    parse_set,
    prepare_teacher,
    setup_teacher,
    teacher_fidelity,
    train_and_score,
)
from bench.student_sizes import LITEDEPTH_MS, pareto
from pipeline.core.config import merge

DEFAULT_STUDENTS = (
    "v1-0.25@128x160",
    "v1-0.25@192x256",
    "v1-0.5@128x160",
    "v1-0.5@192x256",
    "v2-0.5@128x160",
    "v2-0.5@192x256",
    "v3s-1.0@128x160",
    "v3s-1.0@192x256",
    "v2-1.0@96x128",
    "v2-1.0@128x160",
)
DIRECTIONS = ("tum->hololens", "hololens->tum")
KINDS = ("alone", "teacher")
TEACHER = Path(__file__).resolve().parents[2] / "shared/teachers/pydnet_matterport"
DEFAULT_TEACHER = TEACHER / "pydnet_matterport.tflite"


def student_params(spec: str, kind: str, direction: str, seed: int, args, with_teacher):
    train_on, held_out = direction.split("->")
    data = {"sources": {n: {"path": p} for n, p in REAL.items()}, "val": held_out}
    teacher = {}
    if kind == "teacher":
        data["unlabeled"] = {"rooms": {"path": str(args.rooms)}}
        teacher = with_teacher
    return bench_params(
        args.overrides,
        merge(teacher, {"data": data}),
        {
            "base": {"seed": seed},
            "train": {
                **encoder_overrides(spec),
                "epochs": args.epochs,
                "steps_per_epoch": args.steps_per_epoch,
            },
        },
    )


def hold_out_rooms(count: int, work: Path) -> tuple[Path, list[str]]:
    """The shared room photographs less their last `count` by name: (a folder of the rest, as
    links, to train on; the held-out images' paths, to score the student against its teacher)."""
    names = sorted(p.name for p in (ROOMS / "rgb").iterdir())
    keep = work / "rooms_trained" / "rgb"
    keep.mkdir(parents=True)
    for name in names[: len(names) - count]:
        (keep / name).symlink_to(ROOMS / "rgb" / name)
    return keep.parent, [str(ROOMS / "rgb" / name) for name in names[len(names) - count :]]


def time_students(specs, tflites: dict, rounds: int, overrides: dict) -> dict:
    """spec -> {local_ms, ms}: each student's TFLite (a trained one, or random weights of its
    architecture: fp32 speed does not depend on the weights), fastest of `rounds` passes."""
    from pipeline.device import rpi4
    from pipeline.device.probe import probe

    bench = bench_params(overrides).benchmark
    times: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="encoders_timing_") as tmp:
        for spec in specs:
            if spec not in tflites:
                cfg = bench_params(overrides, {"train": encoder_overrides(spec)}).train
                row = probe(cfg, threads=bench.threads, runs=1, warmup=1, keep_dir=tmp)
                tflites[spec] = Path(row["tflite"]).rename(Path(tmp) / f"{spec}.tflite")
        for _ in range(rounds):
            for spec in specs:
                timed = rpi4.time_local(
                    tflites[spec], threads=bench.threads, warmup=bench.warmup, runs=bench.runs
                )
                if timed["median_ms"] < times.get(spec, {}).get("local_ms", math.inf):
                    times[spec] = {
                        "local_ms": timed["median_ms"],
                        "ms": timed["est_rpi4_ms"] or math.nan,
                    }
    return times


def table(runs: list[dict], times: dict, anchors: dict) -> list[dict]:
    """One row per (direction, kind, student): mean ratio over its seeds, range, est. ms."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["direction"], run["kind"], run["student"]), []).append(run)
    rows = []
    for (direction, kind, student), group in groups.items():
        ratios = [r["ratio"] for r in group]
        rows.append(
            {
                "direction": direction,
                "kind": kind,
                "student": student,
                "size": student,  # what the plot labels a point with
                "seeds": sorted(r["seed"] for r in group),
                "ratio": statistics.mean(ratios),
                "range": (min(ratios), max(ratios)),
                "si_rmse": statistics.mean(r["si_rmse"] for r in group),
                "ms": times.get(student, {}).get("ms", math.nan),
                "local_ms": times.get(student, {}).get("local_ms", math.nan),
                "teacher": anchors.get(direction, math.nan),
                "minutes": statistics.mean(r["minutes"] for r in group),
                "rooms": statistics.mean(r["rooms_ratio"] for r in group)
                if all("rooms_ratio" in r for r in group)
                else math.nan,
            }
        )
    for direction in {r["direction"] for r in rows}:
        pareto([r for r in rows if r["direction"] == direction and math.isfinite(r["ms"])])
    return rows


def print_rows(rows: list[dict], budget: str) -> None:
    print(f"\n{budget}")
    for direction in DIRECTIONS:
        chosen = sorted(
            (r for r in rows if r["direction"] == direction), key=lambda r: (r["ms"], r["kind"])
        )
        if not chosen:
            continue
        teacher = chosen[0]["teacher"]
        print(f"\n{direction} (held out whole; the teacher itself: {teacher:.2f})")
        print(
            f"{'student':<22} {'kind':<8} {'est Pi4 ms':>10} {'local ms':>8} {'seeds':>5} "
            f"{'ratio':>6} {'range':>11} {'- teacher':>9} {'front':>5} {'rooms':>5}"
        )
        for r in chosen:
            spread = f"{r['range'][0]:.2f}..{r['range'][1]:.2f}" if len(r["seeds"]) > 1 else ""
            print(
                f"{r['student']:<22} {r['kind']:<8} {r['ms']:>10.0f} {r['local_ms']:>8.1f} "
                f"{len(r['seeds']):>5} {r['ratio']:>6.2f} {spread:>11} "
                f"{r['ratio'] - teacher:>+9.2f} {'*' if r.get('front') else '':>5} "
                f"{'' if math.isnan(r['rooms']) else format(r['rooms'], '.2f'):>5}"
            )
        fast = [r for r in chosen if r["ms"] <= LITEDEPTH_MS]
        if fast:
            best = min(fast, key=lambda r: r["ratio"])
            print(
                f"best at est. Pi 4 <= {LITEDEPTH_MS:.0f} ms: {best['student']} {best['kind']}, "
                f"ratio {best['ratio']:.2f} ({len(best['seeds'])} seeds), "
                f"{best['ratio'] - teacher:+.2f} from the teacher's"
            )


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), dpi=110, sharey=True)
    colours = {"alone": "tab:blue", "teacher": "tab:purple"}
    for ax, direction in zip(axes, DIRECTIONS):
        chosen = [r for r in rows if r["direction"] == direction and math.isfinite(r["ms"])]
        for kind, colour in colours.items():
            points = [r for r in chosen if r["kind"] == kind]
            ax.scatter(
                [r["ms"] for r in points],
                [r["ratio"] for r in points],
                color=colour,
                zorder=3,
                label="+ teacher + rooms" if kind == "teacher" else "training scene alone",
            )
            for r in points:
                ax.annotate(
                    r["student"] + ("*" if r.get("front") else ""),
                    (r["ms"], r["ratio"]),
                    textcoords="offset points",
                    xytext=(4, 3),
                    fontsize=6.5,
                )
        front = sorted((r for r in chosen if r.get("front")), key=lambda r: r["ms"])
        ax.plot([r["ms"] for r in front], [r["ratio"] for r in front], color="tab:red", lw=1)
        if chosen:
            teacher = chosen[0]["teacher"]
            ax.axhline(teacher, color="tab:green", ls="--", label=f"teacher itself ({teacher:.2f})")
            ax.axhline(teacher + 0.15, color="tab:green", ls=":", label="teacher + 0.15")
        ax.axhline(1.0, color="grey", lw=0.8, label="a constant prediction")
        ax.axvline(
            LITEDEPTH_MS, color="tab:orange", ls=":", label=f"LiteDepth {LITEDEPTH_MS:.0f} ms"
        )
        ax.set_xscale("log")
        ax.set_xlabel("est. Raspberry Pi 4 ms at 480x640 (fp32 TFLite)")
        ax.set_title(f"{direction} (held out whole); * = Pareto front", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("si-RMSE / constant's, held-out scene")
    axes[1].legend(fontsize=7, loc="upper right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    print(f"plot -> {path}")


def read_results(paths) -> tuple[list[dict], dict, dict]:
    runs, times, anchors = [], {}, {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            item = json.loads(line)
            if item["type"] == "run":
                runs.append(item)
            elif item["type"] == "time":
                times[item["student"]] = item
            elif item["type"] == "teacher":
                anchors[item["direction"]] = item["ratio"]
    return runs, times, anchors


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--students", nargs="+", default=list(DEFAULT_STUDENTS))
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--directions", nargs="+", default=list(DIRECTIONS), choices=DIRECTIONS)
    parser.add_argument("--teacher", type=Path, default=DEFAULT_TEACHER)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--steps-per-epoch", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=1, help="seeds base.seed, +1, ...")
    parser.add_argument("--first-seed", type=int, help="default: params.yaml's base.seed")
    parser.add_argument("--rounds", type=int, default=2, help="timing passes (fastest kept)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--rooms-holdout",
        type=int,
        default=0,
        help="leave the last N room photographs out of training and score each teacher run "
        "against the teacher on them (how near it comes to its teacher on unseen images)",
    )
    parser.add_argument("--results", type=Path, help="append each finished run here (JSON lines)")
    parser.add_argument("--report", type=Path, nargs="+", help="only print and plot these results")
    parser.add_argument("--retime", action="store_true", help="with --report: time them again")
    parser.add_argument("--plot", type=Path, default=Path("docs/pretrained-pareto.png"))
    args = parser.parse_args()
    args.plot = args.plot.resolve()  # the teacher rows work from a temporary folder
    args.overrides = parse_set(args.set)
    for spec in args.students:
        encoder_overrides(spec)  # a bad name stops here, not after hours of training
    budget = (
        f"students: mobile_unet with pretrained encoders (params.yaml's train.encoder_batchnorm "
        f"and encoder_lr_scale), {args.epochs} x {args.steps_per_epoch} steps of batch "
        f"{bench_params(args.overrides).train.batch_size} each; held out: the other scene whole, "
        "no image of it in training; fp32 TFLite timed at 480x640"
        + (f"; --set {' '.join(args.set)}" if args.set else "")
    )
    if args.report:
        runs, times, anchors = read_results(args.report)
        if args.retime:  # timings of their own, e.g. on idle cores after training elsewhere
            times = time_students(
                sorted({r["student"] for r in runs}), {}, args.rounds, args.overrides
            )
            for spec, timed in times.items():
                print(f"{spec}: local {timed['local_ms']:.1f} ms, est. Pi 4 {timed['ms']:.0f} ms")
        rows = table(runs, times, anchors)
        print_rows(rows, budget)
        plot(rows, args.plot, budget)
        return
    results = args.results.resolve() if args.results else None
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(1)  # as bench.generalization
    default = bench_params(args.overrides)
    first = default.base.seed if args.first_seed is None else args.first_seed
    seeds = [first + k for k in range(args.seeds)]
    runs, tflites, anchors = [], {}, {}

    def keep(item: dict) -> None:
        if results:
            with open(results, "a") as f:
                f.write(json.dumps(item) + "\n")

    with tempfile.TemporaryDirectory(prefix="encoders_") as tmp:
        work = Path(tmp)
        with_teacher, maps, held_rooms = {}, {}, []
        args.rooms = ROOMS
        if args.rooms_holdout:
            args.rooms, held_rooms = hold_out_rooms(args.rooms_holdout, work)
        if "teacher" in args.kinds:
            with_teacher, model = setup_teacher(args.teacher, args.overrides, work)
        for direction in args.directions:
            train_on, held_out = direction.split("->")
            if "teacher" in args.kinds:
                maps[direction] = prepare_teacher(model, work, train_on, held_out, rooms=args.rooms)
                anchor = maps[direction]["scored"][0]["sources"][held_out]["ratio_to_constant"]
                anchors[direction] = anchor
                keep({"type": "teacher", "direction": direction, "ratio": anchor})
            for kind in args.kinds:
                for spec in args.students:
                    for seed in seeds:
                        label = f"{direction} {spec} {kind}"
                        folder = work / f"{label.replace(' ', '_').replace('>', '')}_{seed}"
                        params = student_params(spec, kind, direction, seed, args, with_teacher)
                        teacher_csv = maps[direction]["csv"] if kind == "teacher" else None
                        done = train_and_score(label, folder, params, teacher_csv=teacher_csv)
                        tflites.setdefault(spec, done["tflite"])
                        m = done["sources"][held_out]
                        item = {
                            "type": "run",
                            "direction": direction,
                            "kind": kind,
                            "student": spec,
                            "seed": seed,
                            "ratio": m["ratio_to_constant"],
                            "si_rmse": m["si_rmse"],
                            "constant": m["baseline_si_rmse"],
                            "images": m["n_images"],
                            "minutes": done["minutes"],
                            "params": done["summary"]["params"],
                        }
                        if held_rooms and kind == "teacher":
                            fidelity = teacher_fidelity(
                                done["tflite"], model, held_rooms, params.data.aspect
                            )
                            item["rooms_ratio"] = fidelity["ratio"]
                            print(
                                f"{label} (seed {seed}): {fidelity['images']} held-out rooms, "
                                f"si-RMSE to the teacher's maps {fidelity['si_rmse']:.4f}, "
                                f"ratio {fidelity['ratio']:.2f}",
                                flush=True,
                            )
                        runs.append(item)
                        keep(item)
        times = time_students(args.students, tflites, args.rounds, args.overrides)
        for spec, timed in times.items():
            keep({"type": "time", "student": spec, **timed})
    rows = table(runs, times, anchors)
    print_rows(rows, budget)
    plot(rows, args.plot, budget)


if __name__ == "__main__":
    main()
