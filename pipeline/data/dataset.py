"""Reading and validating data in the challenge layout, and the train/val split.

Layout: SOURCE/rgb/NAME.png (8-bit RGB) and SOURCE/depth/NAME.png (uint16 mm, 0 =
invalid), same NAME in both. Decisions for messy data (README "When things go wrong"):
- grayscale or RGBA RGB images are accepted and converted to RGB (alpha dropped);
- files that are not .png are ignored with one warning that counts them;
- a depth map without any valid pixel is skipped with a warning and counted
  (`data.skip_empty_depth: false` makes it an error);
- units that look wrong (metres, or TUM's 1/5000 m scaling) give a warning;
- everything else (unpaired names, 8-bit/colour depth, corrupt files, size mismatch,
  empty or wrong layout) is an error naming the file(s).
No TensorFlow here: prepare and the validators stay light.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.core import host
from pipeline.core.config import VAL_BLOCKS
from pipeline.core.errors import DataError
from pipeline.core.files import atomic_path, read_depth_mm, read_rgb

# One row per usable pair of a source (data/prepared/sources/NAME.csv, the index stage),
# and per pair of all sources with its split (data/prepared/split.csv, the prepare stage).
# The digest covers both files' bytes, so changed data changes split.csv and with it
# every stage downstream, although those list split.csv rather than the source folders.
INDEX_COLUMNS = ("name", "rgb", "depth", "width", "height", "digest")
SPLIT_COLUMNS = ("name", "split", "source", "rgb", "depth", "width", "height", "digest")
# Median valid depth outside this range (mm) suggests the wrong unit or scaling.
PLAUSIBLE_MEDIAN_MM = (100.0, 20_000.0)
MAX_ERRORS_SHOWN = 3  # bad files named in the one-line error; the rest are counted


@dataclass
class DataReport:
    folder: str = ""  # where rgb/ and depth/ were read: the source, or its train/ (data_folder)
    pairs: list[dict] = field(default_factory=list)  # INDEX_COLUMNS of each usable pair
    skipped_empty: list[str] = field(default_factory=list)
    ignored_files: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    median_depth_m: float = float("nan")
    invalid_fraction: float = float("nan")

    @property
    def names(self) -> list[str]:
        return [pair["name"] for pair in self.pairs]


def _some(names: list[str], shown: int = 10) -> str:
    """'a, b, c' or 'a, b, ... (12 more)': keeps a one-line error readable for big sets."""
    more = f", ... ({len(names) - shown} more)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


# The organizers' training archive unpacks as train/rgb/NAME.png + train/depth/NAME.png
# (../shared/CHALLENGE.md): a source folder without rgb/ and depth/ of its own whose train/
# has both is read from its train/ (the index stage says so).
ORGANIZERS_SUBFOLDER = "train"
LAYOUT_SEARCH_DEPTH = 2  # how far below a wrong-layout source a folder that would work is sought


def _has_layout(folder: Path) -> bool:
    return (folder / "rgb").is_dir() and (folder / "depth").is_dir()


def _subfolders(folder: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(folder) if e.is_dir()]
    except OSError:  # unreadable: nothing to suggest below it
        return []


def _folder_that_would_work(source: Path) -> Path | None:
    """The first folder (by name, shallowest first) below `source` with rgb/ and depth/."""
    level = [source]
    for _ in range(LAYOUT_SEARCH_DEPTH):
        level = sorted((p for d in level for p in _subfolders(d)), key=lambda p: p.parts)
        found = next((p for p in level if _has_layout(p)), None)
        if found:
            return found
    return None


def data_folder(source: str | os.PathLike) -> Path:
    """The folder that holds a source's rgb/ and depth/: the source itself, or its train/ (the
    organizers' layout). A DataError naming the source when it has neither."""
    source = Path(source)
    if not source.exists():
        raise DataError(
            f"{source}: data folder not found (check its path under data.sources in params.yaml)"
        )
    if not source.is_dir():
        raise DataError(
            f"{source}: is a file; a path under data.sources must be a folder with rgb/ and depth/"
        )
    try:
        entries = list(source.iterdir())
    except OSError as err:  # e.g. no read permission
        raise DataError(f"{source}: cannot read the data folder ({err.strerror})") from None
    if not entries:
        raise DataError(
            f"{source}: data folder is empty (expected rgb/NAME.png and depth/NAME.png)"
        )
    missing = [d for d in ("rgb", "depth") if not (source / d).is_dir()]
    if not missing:
        return source
    if _has_layout(source / ORGANIZERS_SUBFOLDER):
        return source / ORGANIZERS_SUBFOLDER
    found = sorted(e.name + ("/" if e.is_dir() else "") for e in entries)
    would_work = _folder_that_would_work(source)
    hint = f"; {would_work} has rgb/ and depth/: use that path" if would_work else ""
    raise DataError(
        f"{source}: wrong layout, missing {' and '.join(f'{m}/' for m in missing)}"
        f" (expected rgb/NAME.png and depth/NAME.png, or {ORGANIZERS_SUBFOLDER}/rgb and "
        f"{ORGANIZERS_SUBFOLDER}/depth as the organizers ship them; found {_some(found)}){hint}"
    )


def list_pairs(source: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Names present in both rgb/ and depth/ of `source` (a folder with both: see
    data_folder), plus the non-PNG files that were ignored."""
    source = Path(source)
    rgb_dir, depth_dir = source / "rgb", source / "depth"
    ignored, found = [], {}
    for sub in (rgb_dir, depth_dir):
        found[sub.name] = set()
        try:
            entries = sorted(os.scandir(sub), key=lambda e: e.name)
        except OSError as err:  # e.g. no read permission
            raise DataError(f"{sub}: cannot read the folder ({err.strerror})") from None
        for entry in entries:
            if (
                entry.is_file()
                and entry.name.lower().endswith(".png")
                and not entry.name.startswith(".")
            ):
                found[sub.name].add(entry.name)
            else:
                ignored.append(f"{sub.name}/{entry.name}")
    only_rgb = sorted(found["rgb"] - found["depth"])
    only_depth = sorted(found["depth"] - found["rgb"])
    problems = []
    if only_rgb:
        problems.append(f"{len(only_rgb)} RGB without depth: {_some(only_rgb)}")
    if only_depth:
        problems.append(f"{len(only_depth)} depth without RGB: {_some(only_depth)}")
    if problems:
        raise DataError(f"{source}: unpaired files: " + "; ".join(problems))
    names = sorted(found["rgb"])
    if not names:
        raise DataError(f"{source}: no PNG pairs found in rgb/ and depth/")
    return names, ignored


def _check_pair(source: Path, name: str) -> tuple[dict, float, float, int]:
    """Decode one pair fully (catches truncation).

    -> (index row, median mm, invalid share, valid count)."""
    rgb_path, depth_path = source / "rgb" / name, source / "depth" / name
    rgb = read_rgb(rgb_path)
    depth = read_depth_mm(depth_path)
    if rgb.shape[:2] != depth.shape:
        raise DataError(
            f"{depth_path}: size {depth.shape[1]}x{depth.shape[0]} differs from its RGB "
            f"{rgb.shape[1]}x{rgb.shape[0]}"
        )
    valid = depth[depth > 0]
    median = float(np.median(valid)) if valid.size else float("nan")
    digest = hashlib.sha1(rgb_path.read_bytes() + b"\0" + depth_path.read_bytes()).hexdigest()[:16]
    row = {
        "name": name,
        "rgb": str(rgb_path),
        "depth": str(depth_path),
        "width": depth.shape[1],
        "height": depth.shape[0],
        "digest": digest,
    }
    return row, median, 1.0 - valid.size / depth.size, int(valid.size)


def _check_pair_or_error(source: Path, name: str):
    try:
        return _check_pair(source, name)
    except DataError as err:
        return err


def bad_files_error(errors: list[DataError], shown: int = MAX_ERRORS_SHOWN) -> DataError:
    """One DataError for one or many bad files: the first few named, the rest counted."""
    if len(errors) == 1:
        return errors[0]
    more = f"; ... and {len(errors) - shown} more" if len(errors) > shown else ""
    return DataError(f"{len(errors)} bad files: " + "; ".join(map(str, errors[:shown])) + more)


def validate_source(
    source: str | os.PathLike,
    *,
    max_images: int = 0,
    skip_empty_depth: bool = True,
    progress=None,
    workers: int | None = None,
) -> DataReport:
    """Check every pair of a challenge-layout folder; raise one DataError naming the bad files.

    Every pair is decoded before giving up, so one run lists all the damaged files of a
    large set (the first few by name, the rest counted), not one per run. workers: decoding
    threads (default: one per usable core).
    """
    source = data_folder(source)  # the folder itself, or its train/ (the organizers' layout)
    names, ignored = list_pairs(source)
    if max_images:
        names = names[:max_images]
    report = DataReport(folder=str(source), ignored_files=ignored)
    if ignored:
        shown = ", ".join(ignored[:5]) + (" ..." if len(ignored) > 5 else "")
        report.warnings.append(f"{source}: ignored {len(ignored)} non-PNG entries: {shown}")
    medians, invalid, errors = [], [], []
    # PNG decoding releases the GIL, so threads overlap the zlib work (2 threads: 2x on 2 cores).
    with ThreadPoolExecutor(max_workers=workers or host.usable_cpus()) as pool:
        for i, result in enumerate(
            pool.map(lambda n: _check_pair_or_error(source, n), names), start=1
        ):
            if progress:
                progress(i, len(names))
            if isinstance(result, DataError):
                errors.append(result)
                continue
            row, median, invalid_share, n_valid = result
            name = row["name"]
            if n_valid == 0:
                if not skip_empty_depth:
                    errors.append(
                        DataError(
                            f"{source / 'depth' / name}: no valid depth pixel (all 0); "
                            "set data.skip_empty_depth: true to skip such maps"
                        )
                    )
                else:
                    report.skipped_empty.append(name)
                continue
            report.pairs.append(row)
            medians.append(median)
            invalid.append(invalid_share)
    if errors:
        raise bad_files_error(errors)
    if report.skipped_empty:
        report.warnings.append(
            f"{source}: skipped {len(report.skipped_empty)} depth maps without any valid pixel: "
            + ", ".join(report.skipped_empty[:5])
        )
    if not report.pairs:
        raise DataError(f"{source}: no usable pairs (every depth map is empty)")
    median_mm = float(np.median(medians))
    report.median_depth_m = median_mm / 1000.0
    report.invalid_fraction = float(np.mean(invalid))
    lo, hi = PLAUSIBLE_MEDIAN_MM
    if median_mm < lo:
        report.warnings.append(
            f"{source}: median valid depth is {median_mm:.1f} (expected millimetres, e.g. 1000 for "
            "1 m); wrong units? the depth PNGs look like metres or centimetres; convert them to "
            "millimetres"
        )
    elif median_mm > hi:
        report.warnings.append(
            f"{source}: median valid depth is {median_mm:.0f} mm = {median_mm / 1000:.1f} m; wrong "
            "units? the depth PNGs look scaled (e.g. TUM's raw 1/5000 m units); convert them to "
            "millimetres"
        )
    return report


def split_names(names: list[str], val_fraction: float) -> dict[str, str]:
    """Contiguous blocks by sorted name: the last block is validation, so neighbouring
    video frames never straddle the split."""
    names = sorted(names)
    # Both splits need at least one pair: train fits on one, evaluate scores the other.
    if len(names) < 2:
        raise DataError(f"only {len(names)} usable pair(s): need at least 2 for a train/val split")
    n_val = min(max(1, math.ceil(len(names) * val_fraction)), len(names) - 1)
    n_train = len(names) - n_val
    return {name: ("train" if i < n_train else "val") for i, name in enumerate(names)}


def _write_csv(path: str | os.PathLike, columns: tuple[str, ...], rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(
                f, fieldnames=columns, extrasaction="ignore", lineterminator="\n"
            )
            writer.writeheader()
            writer.writerows(rows)


def _read_csv(path: Path, columns: tuple[str, ...], missing_hint: str) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) != columns:
                raise DataError(
                    f"{path}: expected columns {','.join(columns)}, found {reader.fieldnames}; "
                    "rerun `dvc repro`"
                )
            return list(reader)
    except FileNotFoundError:
        raise DataError(f"{path}: {missing_hint}") from None


def write_index(path: str | os.PathLike, report: DataReport) -> None:
    """One source's usable pairs, sorted by name (INDEX_COLUMNS)."""
    _write_csv(path, INDEX_COLUMNS, sorted(report.pairs, key=lambda r: r["name"]))


def read_index(path: str | os.PathLike) -> list[dict[str, str]]:
    return _read_csv(
        Path(path), INDEX_COLUMNS, "source index not found (run the index stage: `dvc repro`)"
    )


def split_over_sources(
    indexes: dict[str, list[dict]], *, val: str, val_fraction: float
) -> list[dict]:
    """Split rows over all sources, in source order then by name.

    val='blocks': the last val_fraction of every source's names is validation; else the
    source named `val` is validation whole and the others are trained on whole.
    """
    rows = []
    for source, pairs in indexes.items():
        if val == VAL_BLOCKS:
            try:
                splits = split_names([p["name"] for p in pairs], val_fraction)
            except DataError as err:
                raise DataError(
                    f"source {source}: {err}"
                ) from None  # name the source that is too small
        else:
            splits = {p["name"]: "val" if source == val else "train" for p in pairs}
        rows += [
            {**p, "source": source, "split": splits[p["name"]]}
            for p in sorted(pairs, key=lambda p: p["name"])
        ]
    return rows


def build_split(
    sources: dict[str, str | os.PathLike],
    *,
    val: str = VAL_BLOCKS,
    val_fraction: float = 0.2,
    max_images: int = 0,
    skip_empty_depth: bool = True,
) -> list[dict]:
    """The index and prepare stages in one call, for scripts outside DVC: name -> folder in,
    split rows (SPLIT_COLUMNS) out."""
    indexes = {
        name: validate_source(path, max_images=max_images, skip_empty_depth=skip_empty_depth).pairs
        for name, path in sources.items()
    }
    return split_over_sources(indexes, val=val, val_fraction=val_fraction)


def write_split(path: str | os.PathLike, rows: list[dict]) -> None:
    _write_csv(path, SPLIT_COLUMNS, rows)


def read_split(path: str | os.PathLike, split: str | None = None) -> list[dict[str, str]]:
    """Rows of split.csv, optionally only one split ('train' or 'val').

    Every listed file must still exist: one line naming the missing ones beats a
    traceback from deep inside tf.data (train) minutes later.
    """
    path = Path(path)
    rows = _read_csv(path, SPLIT_COLUMNS, "split file not found (run the prepare stage first)")
    if split is not None:
        rows = [r for r in rows if r["split"] == split]
    missing = [f for r in rows for f in (r["rgb"], r["depth"]) if not os.path.isfile(f)]
    if missing:
        raise DataError(
            f"{missing[0]}: file not found ({len(missing)} file(s) listed in {path} are missing: "
            f"{_some(missing, 3)}); the data changed after prepare: rerun `dvc repro`"
        )
    return rows


# --------------------------------------------------- outputs older than the params that name them
# A stage run alone (`python -m stages.train`) after data.sources or data.unlabeled changed
# reads what the stages before it made from the old ones: said so in one line, with what to run.
def _inside(file: str, folder: str) -> bool:
    return Path(os.path.normpath(folder)) in Path(os.path.normpath(file)).parents


def _stale(path, what: str, problem: str, stage: str, first: str) -> DataError:
    return DataError(
        f"{path}: {what} stale, {problem}: run `dvc repro {stage}`, which remakes {first} first"
    )


def check_split_sources(
    path: str | os.PathLike, sources: dict[str, str], *, stage: str, val: str | None = None
) -> None:
    """The split at `path` was made from `sources` ({name: folder}: data.sources now): the same
    names, every row's files in its source's folder, and (given `val`, data.val now) its val
    rows where that puts them. A DataError saying that the split is stale, and what to run,
    otherwise."""
    rows = read_split(path)
    made = list(dict.fromkeys(r["source"] for r in rows))
    if set(made) != set(sources):
        raise _stale(
            path,
            "the split is",
            f"made from other sources ({', '.join(made)}) than data.sources names now "
            f"({', '.join(sources)})",
            stage,
            "the index and the split",
        )
    moved = next((r for r in rows if not _inside(r["rgb"], sources[r["source"]])), None)
    if moved:
        name = moved["source"]
        raise _stale(
            path,
            "the split is",
            f"its source {name} lists {moved['rgb']}, outside data.sources.{name}.path="
            f"{sources[name]}",
            stage,
            "the index and the split",
        )
    if val is None:
        return
    splits = {name: {r["split"] for r in rows if r["source"] == name} for name in sources}
    if val == VAL_BLOCKS:
        whole = next((n for n, kinds in splits.items() if kinds != {"train", "val"}), None)
    else:
        whole = next(
            (n for n, kinds in splits.items() if kinds != ({"val"} if n == val else {"train"})),
            None,
        )
    if whole:
        held = ", ".join(sorted(splits[whole]))
        raise _stale(
            path,
            "the split is",
            f"made with another data.val than {val!r} (its source {whole} is {held} only)"
            if len(splits[whole]) == 1
            else f"made with another data.val than {val!r} (its source {whole} is train and val)",
            stage,
            "the split",
        )


def check_index_source(path: str | os.PathLike, name: str, folder: str, indexed: str) -> None:
    """data/prepared/sources/NAME.json says the index was made from `indexed`; a DataError
    saying that it is stale when data.sources.NAME.path (`folder`) is another folder now."""
    if os.path.normpath(indexed) != os.path.normpath(folder):
        raise _stale(
            path,
            "the index is",
            f"made from {indexed}, not data.sources.{name}.path={folder}",
            "prepare",
            f"index@{name}",
        )


def check_teacher_unlabeled(
    path: str | os.PathLike, unlabeled: dict[str, str], *, stage: str
) -> None:
    """The teacher stage's alignment.csv at `path` has maps for every data.unlabeled folder
    (`unlabeled`: {name: folder}), of that folder; a DataError saying that the maps are stale,
    and what to run, otherwise. (Maps of a folder no longer named are left out by training.)"""
    rows = [r for r in read_teacher_index(path) if r["kind"] == "unlabeled"]
    made = list(dict.fromkeys(r["source"] for r in rows))
    missing = [name for name in unlabeled if name not in made]
    if missing:
        raise _stale(
            path,
            "the teacher maps are",
            f"made for other unlabeled folders ({', '.join(made) or 'none'}) than "
            f"data.unlabeled names now ({', '.join(unlabeled)})",
            stage,
            "the teacher maps",
        )
    moved = next(
        (
            r
            for r in rows
            if r["source"] in unlabeled and not _inside(r["rgb"], unlabeled[r["source"]])
        ),
        None,
    )
    if moved:
        name = moved["source"]
        raise _stale(
            path,
            "the teacher maps are",
            f"its unlabeled {name} lists {moved['rgb']}, outside data.unlabeled.{name}.path="
            f"{unlabeled[name]}",
            stage,
            "the teacher maps",
        )


def aspect_crop_box(
    height: int, width: int, target_height: int, target_width: int
) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the centred crop of an image to the target's aspect ratio."""
    if height * target_width > width * target_height:  # too tall
        h = max(1, round(width * target_height / target_width))
        return (height - h) // 2, 0, h, width
    w = max(1, round(height * target_width / target_height))
    return 0, (width - w) // 2, height, w


# ------------------------------------------------------------------- unlabeled RGB and teacher maps
# One row per image of an unlabeled folder (data/prepared/sources/unlabeled/NAME.csv, the
# unlabeled stage): RGB only; a depth/ folder beside it, if any, is never read.
UNLABELED_COLUMNS = ("name", "rgb", "width", "height", "digest")
# One row per image the teacher ran on (data/teacher/alignment.csv, the teacher stage): the
# map it wrote ("" when dropped), the scale and shift that made its output metres, the RMS
# log error of that depth to the ground truth, and the official si-RMSE of it and of a
# constant prediction (the last three blank for unlabeled images).
TEACHER_COLUMNS = (
    "source",
    "name",
    "kind",
    "rgb",
    "teacher",
    "scale",
    "shift",
    "residual",
    "kept",
    "si_rmse",
    "constant_si_rmse",
)


def _unlabeled_row(rgb_path: Path) -> dict:
    rgb = read_rgb(rgb_path)
    digest = hashlib.sha1(rgb_path.read_bytes()).hexdigest()[:16]
    return {
        "name": rgb_path.name,
        "rgb": str(rgb_path),
        "width": rgb.shape[1],
        "height": rgb.shape[0],
        "digest": digest,
    }


def unlabeled_rgb(folder: str | os.PathLike) -> Path:
    """FOLDER/rgb of a data.unlabeled folder; a DataError naming the folder without one."""
    rgb_dir = Path(folder) / "rgb"
    if not rgb_dir.is_dir():
        raise DataError(
            f"{folder}: unlabeled folder needs rgb/NAME.png (data.unlabeled); no rgb/ found"
        )
    return rgb_dir


def list_unlabeled(folder: str | os.PathLike, *, max_images: int = 0) -> list[dict]:
    """UNLABELED_COLUMNS rows of FOLDER/rgb/*.png, sorted by name, each decoded once."""
    rgb_dir = unlabeled_rgb(folder)
    names = sorted(
        e.name
        for e in os.scandir(rgb_dir)
        if e.is_file() and e.name.lower().endswith(".png") and not e.name.startswith(".")
    )
    if not names:
        raise DataError(f"{rgb_dir}: no PNG images")
    if max_images:
        names = names[:max_images]
    rows, errors = [], []
    for name in names:
        try:
            rows.append(_unlabeled_row(rgb_dir / name))
        except DataError as err:
            errors.append(err)
    if errors:
        raise bad_files_error(errors)
    return rows


def write_unlabeled(path: str | os.PathLike, rows: list[dict]) -> None:
    _write_csv(path, UNLABELED_COLUMNS, rows)


def read_unlabeled(
    path: str | os.PathLike, folder: str | None = None, *, stage: str = "teacher"
) -> list[dict[str, str]]:
    """Rows of an unlabeled@NAME index; given `folder` (data.unlabeled.NAME.path now), a
    DataError saying that the index is stale when it lists images of another folder."""
    rows = _read_csv(Path(path), UNLABELED_COLUMNS, "unlabeled index not found (run `dvc repro`)")
    moved = next((r for r in rows if not _inside(r["rgb"], folder)), None) if folder else None
    if moved:
        name = Path(path).stem
        raise _stale(
            path,
            "the unlabeled index is",
            f"it lists {moved['rgb']}, outside data.unlabeled.{name}.path={folder}",
            stage,
            f"unlabeled@{name}",
        )
    return rows


def write_teacher_index(path: str | os.PathLike, rows: list[dict]) -> None:
    _write_csv(path, TEACHER_COLUMNS, rows)


def read_teacher_index(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of the teacher stage's alignment.csv; every kept map must still exist."""
    rows = _read_csv(
        Path(path), TEACHER_COLUMNS, "teacher maps not found (run the teacher stage: `dvc repro`)"
    )
    missing = [r["teacher"] for r in rows if r["teacher"] and not os.path.isfile(r["teacher"])]
    if missing:
        raise DataError(
            f"{missing[0]}: teacher map not found ({len(missing)} missing); rerun `dvc repro`"
        )
    return rows
