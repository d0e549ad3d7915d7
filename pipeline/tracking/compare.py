"""Comparison of tracked runs: a table and Pareto plots of quality vs speed per data set.

Both axes are "lower is better" (si-RMSE and latency), so a run is on the Pareto front when
no other run is at least as good on both and strictly better on one. There are two fronts:
against the local median latency (`pareto`) and against the estimated Raspberry Pi 4 latency
(`pareto_rpi4`, pipeline/device/rpi4.py), which corrects for the load the machine was under when
each run was timed. si-RMSE values from different validation data are not comparable, so
runs are grouped by the digest of their validation split (tag data.val_digest) and ranked
within their group only; each group names its best challenge score.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from pipeline.core.errors import ReportError
from pipeline.core.files import atomic_path
from pipeline.core.metrics import BENCHMARK_RUNTIME_KEY, challenge_score
from pipeline.tracking.runs import (
    HOST_TAG_PREFIX,
    TOTAL_SECONDS_METRIC,
    VAL_DIGEST_TAG,
    VAL_NAME_TAG,
    check_reachable,
    mlflow_errors,
)

# Table column -> search_runs column. The metric names are `<stage>.<key>` as logged by
# pipeline.tracking.runs from metrics/<stage>.json.
COLUMNS = {
    "run": "tags.mlflow.runName",
    "arch": "params.train.arch",
    "precision": "params.export.precision",
    "si_rmse": "metrics.evaluate.si_rmse",
    "rmse_m": "metrics.evaluate.rmse",
    "latency_ms": f"metrics.benchmark.{BENCHMARK_RUNTIME_KEY}",
    "est_rpi4_ms": "metrics.benchmark.est_rpi4_ms",
    "size_mb": "metrics.export.size_mb",
    # how long it took: training's epochs, and every stage of the result (the run's Duration)
    "train_s": "metrics.train.train_seconds",
    "total_s": f"metrics.{TOTAL_SECONDS_METRIC}",
    # which machine trained it: two CPUs give different weights, on the same float32 path too
    "cpu": f"tags.{HOST_TAG_PREFIX}cpu",
    "cpu_id": f"tags.{HOST_TAG_PREFIX}cpu_id",
    "vector_path": f"tags.{HOST_TAG_PREFIX}vector_path",
    "data": f"tags.{VAL_NAME_TAG}",
    "data_digest": f"tags.{VAL_DIGEST_TAG}",
}
TEXT_COLUMNS = (
    "run",
    "arch",
    "precision",
    "cpu",
    "cpu_id",
    "vector_path",
    "data",
    "data_digest",
    "run_id",
)
GROUP_COLUMNS = ("data", "data_digest")
UNKNOWN_DATA = "unknown data"  # runs logged before data digests existed, or without a split
COMPARE_ARTIFACT_DIR = "compare"
# (latency column, its score, its front, axis label): one plot panel and front each
SPEEDS = (
    ("latency_ms", "score", "pareto", "latency, local median per image [ms]"),
    ("est_rpi4_ms", "score_rpi4", "pareto_rpi4", "est. Raspberry Pi 4 latency per image [ms]"),
)


def require_store(tracking_uri: str) -> None:
    """A ReportError unless the store exists (a local file) or answers (a server)."""
    prefix = "sqlite:///"
    if tracking_uri.startswith(prefix) and not Path(tracking_uri[len(prefix) :]).is_file():
        # MLflow would silently create an empty store here
        raise ReportError(
            f"no MLflow store at {tracking_uri[len(prefix) :]}; run the pipeline first"
        )
    check_reachable(tracking_uri)


def require_experiment(client, experiment: str, tracking_uri: str):
    """The MLflow experiment named `experiment`, or a ReportError."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ReportError(
            f"no MLflow experiment {experiment!r} at {tracking_uri}; run the pipeline first"
        )
    return found


def load_runs(*, tracking_uri: str, experiment: str):
    """All runs of `experiment` as mlflow.search_runs' DataFrame (newest first)."""
    import mlflow

    require_store(tracking_uri)
    with mlflow_errors(tracking_uri):
        mlflow.set_tracking_uri(tracking_uri)
        require_experiment(mlflow.MlflowClient(), experiment, tracking_uri)
        runs = mlflow.search_runs(
            experiment_names=[experiment], order_by=["attributes.end_time DESC"]
        )
    if len(runs) == 0:
        raise ReportError(
            f"experiment {experiment!r} at {tracking_uri} has no runs yet; run `dvc exp run` first"
        )
    return runs


def pareto_front(xs, ys) -> np.ndarray:
    """Boolean mask of the points no other point dominates (both coordinates minimised).

    NaN points are never on the front and never dominate; equal points are all kept.
    """
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    front = ok.copy()
    for i in np.flatnonzero(ok):
        others = ok & (x <= x[i]) & (y <= y[i]) & ((x < x[i]) | (y < y[i]))
        front[i] = not others.any()
    return front


def _score(si_rmse: float, latency_ms: float) -> float:
    if not (math.isfinite(si_rmse) and math.isfinite(latency_ms) and latency_ms > 0):
        return math.nan
    return challenge_score(si_rmse=si_rmse, runtime_s=latency_ms / 1000.0)


def runs_table(runs):
    """One row per run: COLUMNS, score and score_rpi4, pareto and pareto_rpi4 (within its data
    group), grouped by validation data, best score first within a group (as best_score ranks)."""
    import pandas as pd

    table = pd.DataFrame(index=runs.index)
    for name, source in COLUMNS.items():
        if source in runs.columns:
            table[name] = runs[source]
        else:
            table[name] = None if name in TEXT_COLUMNS else math.nan
    table["run_id"] = runs["run_id"] if "run_id" in runs.columns else None
    for name in COLUMNS:
        if name not in TEXT_COLUMNS:
            table[name] = pd.to_numeric(table[name], errors="coerce").astype("float64")
    # Runs without a name (logged by hand) still need a label.
    table["run"] = [
        r if isinstance(r, str) and r else str(i)[:8] for r, i in zip(table["run"], table["run_id"])
    ]
    known = [isinstance(d, str) and bool(d) for d in table["data_digest"]]
    table["data_digest"] = [d if ok else "-" for d, ok in zip(table["data_digest"], known)]
    table["data"] = [
        (d if isinstance(d, str) and d else "-") if ok else UNKNOWN_DATA
        for d, ok in zip(table["data"], known)
    ]
    for latency, score, front, _ in SPEEDS:
        table[score] = [_score(s, t) for s, t in zip(table["si_rmse"], table[latency])]
        table[front] = False
        for rows in table.groupby("data_digest").groups.values():
            table.loc[rows, front] = pareto_front(
                table.loc[rows, latency], table.loc[rows, "si_rmse"]
            )
    # best first, by the score that names the group's best (best_score): est. Pi 4 when any run
    # has it
    table["rank"] = table["score"]
    for rows in table.groupby("data_digest").groups.values():
        if np.isfinite(table.loc[rows, "score_rpi4"].to_numpy(float)).any():
            table.loc[rows, "rank"] = table.loc[rows, "score_rpi4"]
    table = table.sort_values(
        ["data", "data_digest", "rank"],
        ascending=[True, True, False],
        na_position="last",
        kind="stable",
    )
    order = [*COLUMNS, *(s for _, s, _, _ in SPEEDS), *(f for _, _, f, _ in SPEEDS), "run_id"]
    return table[order].reset_index(drop=True)


def count_runs(n: int) -> str:
    return f"{n} run{'s' if n != 1 else ''}"


def data_groups(table) -> list[tuple[str, object]]:
    """(label, rows) per validation data set: runs that may be ranked together."""
    return [
        (data if digest == "-" else f"{data} (val digest {digest[:8]})", rows)
        for (data, digest), rows in table.groupby(list(GROUP_COLUMNS), sort=True)
    ]


def best_score(rows) -> dict | None:
    """The run of `rows` (one data group) with the best challenge score, by the est. Pi 4
    latency when any run has one (the challenge's device), else by the local median:
    {run, score, latency_ms, by, si_rmse, row}; None when no run has a score."""
    for latency, score, _, _ in reversed(SPEEDS):
        scored = rows[np.isfinite(rows[score].to_numpy(float))]
        if len(scored):
            row = scored.loc[scored[score].idxmax()]
            return {
                "run": row["run"],
                "score": float(row[score]),
                "latency_ms": float(row[latency]),
                "by": latency,
                "si_rmse": float(row["si_rmse"]),
                "row": row,
            }
    return None


def describe_best(rows) -> str:
    """One line naming the best challenge score of a data group."""
    best = best_score(rows)
    if best is None:
        return "best challenge score: none (no run has both si-RMSE and latency)"
    where = "est. Pi 4" if best["by"] == "est_rpi4_ms" else "the local median"
    line = (
        f"best challenge score: {best['run']}, {best['score']:.4g} at {where} "
        f"{best['latency_ms']:.1f} ms, "
        f"si-RMSE {best['si_rmse']:.4f}"
    )
    local = best["row"]["score"]
    if best["by"] == "est_rpi4_ms" and math.isfinite(local):
        line += f" ({local:.4g} at the local median {best['row']['latency_ms']:.1f} ms)"
    return line


def _fmt(value, column: str) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else ""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if column == "run_id" and isinstance(value, str):
        return value[:8]  # enough to find it in the UI; the CSV keeps the full id
    if isinstance(value, float):
        digits = {
            "si_rmse": 4,
            "rmse_m": 3,
            "latency_ms": 1,
            "est_rpi4_ms": 1,
            "size_mb": 2,
            "train_s": 0,
            "total_s": 0,
        }.get(column)
        return f"{value:.{digits}f}" if digits is not None else f"{value:.4g}"
    return str(value).replace("|", "\\|")


def to_markdown(table) -> str:
    columns = list(table.columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(_fmt(row[c], c) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def groups_markdown(table) -> str:
    """One heading and table per data group (the group's columns go in the heading)."""
    parts = []
    for label, rows in data_groups(table):
        parts.append(
            f"### {label}: {count_runs(len(rows))}\n\n{describe_best(rows)}; "
            "Pareto fronts marked in `pareto` (local median) and `pareto_rpi4` (est. Pi 4)\n\n"
            + to_markdown(rows.drop(columns=list(GROUP_COLUMNS)))
        )
    return "\n".join(parts)


def _draw_score_isolines(ax, scores) -> None:
    """Dotted curves of equal challenge score, 2^(-20 si-RMSE) / (100 runtime s), one through
    each given score: a run further down-left than a curve scores more."""
    xlim, ylim = ax.get_xlim(), ax.get_ylim()
    latency_ms = np.geomspace(max(xlim[0], 1e-3), max(xlim[1], 2e-3), 200)
    for i, score in enumerate(sorted(set(scores))):
        si_rmse = -np.log2(score * 100.0 * latency_ms / 1000.0) / 20.0
        ax.plot(
            latency_ms,
            si_rmse,
            ls=":",
            lw=1,
            c="tab:blue",
            alpha=0.7,
            zorder=0,
            label="equal score (better towards lower left)" if i == 0 else None,
        )
        inside = np.flatnonzero((si_rmse >= ylim[0]) & (si_rmse <= ylim[1]))
        if inside.size:
            end = inside[-1]
            ax.annotate(
                f"score {score:.3g}",
                (latency_ms[end], si_rmse[end]),
                fontsize=7,
                color="tab:blue",
                ha="right",
                va="bottom",
            )
    ax.set_xlim(xlim)
    ax.set_ylim(ylim)


def _panel(ax, table, latency: str, score: str, front_col: str, xlabel: str, best_run) -> int:
    """si-RMSE vs one latency: runs, the front marked and joined, the best score starred,
    score iso-lines through the front; returns the number of points drawn."""
    ok = np.isfinite(table[latency].to_numpy(float)) & np.isfinite(table["si_rmse"].to_numpy(float))
    pts = table[ok]
    front = pts[pts[front_col]].sort_values(latency)
    ax.scatter(pts[latency], pts["si_rmse"], c="tab:gray", label="run", zorder=2)
    ax.scatter(front[latency], front["si_rmse"], c="tab:red", s=60, label="Pareto front", zorder=3)
    ax.step(front[latency], front["si_rmse"], where="post", c="tab:red", alpha=0.5, zorder=1)
    best = pts[pts["run"] == best_run]
    if len(best):
        ax.scatter(
            best[latency],
            best["si_rmse"],
            marker="*",
            s=260,
            c="gold",
            edgecolors="k",
            zorder=4,
            label=f"best challenge score ({best_run})",
        )
    for _, row in pts.iterrows():
        ax.annotate(
            row["run"],
            (row[latency], row["si_rmse"]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    ax.set_xlabel(f"{xlabel} (lower is better)")
    ax.set_ylabel("si-RMSE (lower is better)")
    missing = len(table) - len(pts)
    note = f" ({missing} without si-RMSE or this latency not shown)" if missing else ""
    ax.set_title(f"{count_runs(len(pts))}{note}", fontsize=9)
    if not len(pts):
        ax.text(
            0.5,
            0.5,
            "no run has this latency",
            transform=ax.transAxes,
            ha="center",
            color="tab:gray",
        )
        return 0
    values = pts[latency].to_numpy(float)
    if values.min() > 0 and values.max() > 20 * values.min():
        ax.set_xscale("log")  # the organizers' baseline next to models 100x faster
    ax.margins(0.15)  # room for the labels
    ax.autoscale_view()
    scores = [s for s in front[score] if math.isfinite(s) and s > 0]
    if scores:
        _draw_score_isolines(ax, scores)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=7)
    return len(pts)


def plot_pareto(table, path: str | os.PathLike, title: str = "") -> int:
    """si-RMSE vs the local median latency (left) and vs the est. Pi 4 latency (right) of
    one data group, each with its front; returns the number of points on the left."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on build machines
    import matplotlib.pyplot as plt

    best = best_score(table)
    fig, axes = plt.subplots(1, len(SPEEDS), figsize=(6 * len(SPEEDS), 5), dpi=100)
    try:
        drawn = [
            _panel(ax, table, *speed, best["run"] if best else None)
            for ax, speed in zip(axes, SPEEDS)
        ]
        fig.suptitle(f"{title}\nquality vs speed; {describe_best(table)}".strip(), fontsize=10)
        fig.tight_layout()
        with atomic_path(path, suffix=".png.tmp") as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return drawn[0]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text).strip("-") or "data"


def write_report(table, out_dir: str | os.PathLike) -> dict:
    """runs.csv and runs.md (one table per data group), and one pareto-<data>.png per data
    group in `out_dir`, each written atomically. Returns their paths; "plots" maps each
    group's label to its plot."""
    out = Path(out_dir)
    paths = {"csv": out / "runs.csv", "markdown": out / "runs.md", "plots": {}}
    with atomic_path(paths["csv"]) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(paths["markdown"]) as tmp:
        tmp.write_text(groups_markdown(table))
    for label, rows in data_groups(table):
        data, digest = rows.iloc[0]["data"], rows.iloc[0]["data_digest"]
        name = _slug(data if digest == "-" else f"{data}-{digest[:8]}")
        paths["plots"][label] = out / f"pareto-{name}.png"
        plot_pareto(rows, paths["plots"][label], title=label)
    return paths


def log_plots(tracking_uri: str, table, plots: dict) -> dict[str, str]:
    """Each group's plot as an image artifact (compare/) of the group's best-score run, where the
    MLflow UI shows it; returns {label: run id}."""
    from mlflow import MlflowClient

    logged = {}
    with mlflow_errors(tracking_uri):
        client = MlflowClient(tracking_uri=tracking_uri)
        for label, rows in data_groups(table):
            best = best_score(rows)
            run_id = best["row"]["run_id"] if best else rows.iloc[0]["run_id"]
            if isinstance(run_id, str) and run_id:
                client.log_artifact(run_id, str(plots[label]), artifact_path=COMPARE_ARTIFACT_DIR)
                logged[label] = run_id
    return logged
