"""Messy data through the real index and prepare stages: one test per case.

Errors: exit 2, exactly one `error:` line on stderr naming the file(s) and the problem,
no traceback, and the previous outputs untouched. Accepted oddities: exit 0, a warning.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import make_project, project_env, run_stage
from pipeline.model.cluster import EXAMPLE as EXAMPLE_TF_CONFIG

SPLIT = "data/prepared/split.csv"
METRICS = "metrics/prepare.json"
H, W = 30, 40
OLD = {SPLIT: "name,split,rgb,depth\nold,train,x,y\n", METRICS: '{"old": true}\n'}


def rgb_image(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def depth_mm(seed: int = 0, h: int = H, w: int = W, lo: int = 500, hi: int = 4000) -> np.ndarray:
    return np.random.default_rng(seed + 1000).integers(lo, hi, (h, w)).astype(np.uint16)


def save(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr)
    if mode:
        img = img.convert(mode)
    img.save(path, format="PNG")
    return path


def make_source(root: Path, n: int = 4, *, depth_fn=depth_mm) -> Path:
    """A valid challenge-layout folder: rgb/000i.png + depth/000i.png (uint16 mm)."""
    for i in range(n):
        save(root / "rgb" / f"{i:04d}.png", rgb_image(i))
        save(root / "depth" / f"{i:04d}.png", depth_fn(i))
    return root


def prepare(tmp_path: Path, source: Path, **data) -> tuple:
    """Run `python -m stages.index` and then `stages.prepare` (as dvc repro does) in a fresh
    project whose one data source `src` is `source`, with old outputs in place; returns
    (the failing or the last process, with both stderrs; project root)."""
    project = make_project(
        tmp_path / "proj", {"data": {"sources": {"src": {"path": str(source)}}, **data}}, git=False
    )
    for rel, text in OLD.items():
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text(text)
    index = run_stage("index", project, check=False)
    if index.returncode:
        return index, project
    proc = run_stage("prepare", project, check=False)
    proc.stderr = index.stderr + proc.stderr
    return proc, project


def assert_one_line_error(proc, project: Path, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    for rel, text in OLD.items():  # no partial outputs: the previous ones stay as they were
        assert (project / rel).read_text() == text
    assert not list((project / "data" / "prepared").glob("*.tmp"))
    return lines[0]


def assert_ok(proc, project: Path) -> dict:
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert (project / SPLIT).read_text() != OLD[SPLIT]
    return json.loads((project / METRICS).read_text())


def warnings_of(proc) -> list[str]:
    lines = proc.stderr.splitlines()
    assert all(line.startswith("warning: ") for line in lines), proc.stderr
    return lines


# ---------------------------------------------------------------- errors naming files
def test_unpaired_names_are_all_reported(tmp_path):
    src = make_source(tmp_path / "src", 4)
    for name in ("rgb_only_1.png", "rgb_only_2.png"):
        save(src / "rgb" / name, rgb_image())
    for name in ("depth_only_1.png", "depth_only_2.png"):
        save(src / "depth" / name, depth_mm())
    proc, project = prepare(tmp_path, src)
    assert_one_line_error(
        proc,
        project,
        "2 RGB without depth",
        "rgb_only_1.png",
        "rgb_only_2.png",
        "2 depth without RGB",
        "depth_only_1.png",
        "depth_only_2.png",
    )


def test_8bit_depth_png(tmp_path):
    src = make_source(tmp_path / "src", 4)
    save(src / "depth" / "0002.png", (depth_mm(2) // 20).astype(np.uint8))
    proc, project = prepare(tmp_path, src)
    assert_one_line_error(proc, project, str(src / "depth" / "0002.png"), "8-bit", "uint16")


def test_colour_depth_png(tmp_path):
    src = make_source(tmp_path / "src", 4)
    save(src / "depth" / "0001.png", rgb_image(5))
    proc, project = prepare(tmp_path, src)
    assert_one_line_error(
        proc, project, str(src / "depth" / "0001.png"), "colour", "single-channel"
    )


def test_truncated_png(tmp_path):
    src = make_source(tmp_path / "src", 4)
    path = src / "rgb" / "0003.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    proc, project = prepare(tmp_path, src)
    line = assert_one_line_error(proc, project, str(path), "truncated")
    assert "0003.png" in line


def test_corrupt_bytes_named_png(tmp_path):
    src = make_source(tmp_path / "src", 4)
    path = src / "depth" / "0000.png"
    path.write_bytes(b"this is not an image at all" * 20)
    proc, project = prepare(tmp_path, src)
    assert_one_line_error(proc, project, str(path), "not a readable image")


def test_several_bad_files_are_reported_together(tmp_path):
    src = make_source(tmp_path / "src", 4)
    (src / "rgb" / "0000.png").write_bytes(b"junk")
    save(src / "depth" / "0003.png", (depth_mm(3) // 20).astype(np.uint8))
    proc, project = prepare(tmp_path, src)
    assert_one_line_error(
        proc, project, "2 bad files", str(src / "rgb" / "0000.png"), str(src / "depth" / "0003.png")
    )


def test_rgb_and_depth_sizes_differ(tmp_path):
    src = make_source(tmp_path / "src", 4)
    save(src / "depth" / "0002.png", depth_mm(2, h=H * 2, w=W * 2))
    proc, project = prepare(tmp_path, src)
    assert_one_line_error(
        proc, project, str(src / "depth" / "0002.png"), f"{2 * W}x{2 * H}", f"{W}x{H}", "differs"
    )


def test_empty_folder(tmp_path):
    src = tmp_path / "src"
    (src / "rgb").mkdir(parents=True)
    (src / "depth").mkdir()
    proc, project = prepare(tmp_path, src)
    assert_one_line_error(proc, project, str(src), "no PNG pairs")


def test_completely_empty_folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    proc, project = prepare(tmp_path, src)
    assert_one_line_error(proc, project, str(src), "empty")


def test_wrong_layout_without_rgb_subfolder(tmp_path):
    src = make_source(tmp_path / "src", 4)
    (src / "rgb").rename(src / "images")
    proc, project = prepare(tmp_path, src)
    assert_one_line_error(
        proc, project, str(src), "wrong layout", "missing rgb/", "found depth/, images/"
    )


def test_the_organizers_train_layout_is_read_from_train(tmp_path):
    """Their archive unpacks as train/rgb + train/depth (val/ and test/ hold RGB only)."""
    src = tmp_path / "mai2021"
    make_source(src / "train", 4)
    save(src / "val" / "rgb" / "0100.png", rgb_image(7))
    proc, project = prepare(tmp_path, src)
    metrics = assert_ok(proc, project)
    assert metrics["train_images"] + metrics["val_images"] == 4
    assert proc.stderr == ""
    rows = (project / SPLIT).read_text().splitlines()[1:]
    assert len(rows) == 4 and all(str(src / "train" / "rgb") in row for row in rows)
    checked = json.loads((project / "data/prepared/sources/src.json").read_text())
    assert checked["path"] == str(src) and checked["folder"] == str(src / "train")
    index = run_stage("index", project)
    assert f"from {src} (its train/, the organizers' layout)" in index.stdout


def test_a_wrong_layout_names_a_folder_below_that_would_work(tmp_path):
    src = tmp_path / "download"
    make_source(src / "MAI2021" / "training", 4)  # not train/: found, named, not guessed
    (src / "README.txt").write_text("unpacked\n")
    proc, project = prepare(tmp_path, src)
    assert_one_line_error(
        proc,
        project,
        str(src),
        "wrong layout",
        "found MAI2021/, README.txt",
        f"{src / 'MAI2021' / 'training'} has rgb/ and depth/: use that path",
    )


def test_folder_does_not_exist(tmp_path):
    src = tmp_path / "no_such_folder"
    proc, project = prepare(tmp_path, src)
    line = assert_one_line_error(proc, project, str(src), "not found", "data.sources")
    assert "data.source " not in line  # the key's old name


def test_file_instead_of_a_folder(tmp_path):
    src = tmp_path / "pairs.zip"
    src.write_bytes(b"PK")
    proc, project = prepare(tmp_path, src)
    assert_one_line_error(proc, project, str(src), "is a file", "data.sources", "rgb/ and depth/")


def test_empty_depth_is_an_error_when_not_skipped(tmp_path):
    src = make_source(tmp_path / "src", 4)
    save(src / "depth" / "0001.png", np.zeros((H, W), np.uint16))
    proc, project = prepare(tmp_path, src, skip_empty_depth=False)
    assert_one_line_error(
        proc, project, str(src / "depth" / "0001.png"), "no valid depth", "skip_empty_depth"
    )


# ------------------------------------------------------------ accepted, maybe warned
@pytest.mark.parametrize("mode", ["RGBA", "L"])
def test_rgba_or_grayscale_rgb_is_converted(tmp_path, mode):
    src = make_source(tmp_path / "src", 4)
    if mode == "RGBA":  # a half-transparent alpha channel
        save(src / "rgb" / "0001.png", np.dstack([rgb_image(1), np.full((H, W), 128, np.uint8)]))
    else:
        save(src / "rgb" / "0001.png", rgb_image(1), mode="L")
    assert Image.open(src / "rgb" / "0001.png").mode == mode
    proc, project = prepare(tmp_path, src)
    metrics = assert_ok(proc, project)
    assert metrics["train_images"] + metrics["val_images"] == 4
    assert proc.stderr == ""


def test_empty_depth_is_skipped_and_counted(tmp_path):
    src = make_source(tmp_path / "src", 5)
    save(src / "depth" / "0001.png", np.zeros((H, W), np.uint16))
    proc, project = prepare(tmp_path, src)
    metrics = assert_ok(proc, project)
    assert metrics["skipped_empty_depth"] == 1
    assert metrics["train_images"] + metrics["val_images"] == 4
    assert "0001.png" not in (project / SPLIT).read_text()
    (warning,) = warnings_of(proc)
    assert "skipped 1 depth map" in warning and "0001.png" in warning


def test_depth_in_metres_warns_about_units(tmp_path):
    src = make_source(tmp_path / "src", 4, depth_fn=lambda i: depth_mm(i, lo=1, hi=6))
    proc, project = prepare(tmp_path, src)
    metrics = assert_ok(proc, project)
    (warning,) = warnings_of(proc)
    assert "units" in warning and "metres" in warning and str(src) in warning
    assert metrics["warnings"] == 1


def test_depth_with_tum_scaling_warns_about_units(tmp_path):
    # TUM's raw PNGs hold 1/5000 m: 5x the millimetre values (2 m -> 10000, 5 m -> 25000).
    src = make_source(tmp_path / "src", 4, depth_fn=lambda i: depth_mm(i, lo=22000, hi=30000))
    proc, project = prepare(tmp_path, src)
    metrics = assert_ok(proc, project)
    (warning,) = warnings_of(proc)
    assert "units" in warning and "5000" in warning
    assert metrics["median_depth_m"] > 20


def test_plausible_depth_gives_no_warning(tmp_path):
    src = make_source(tmp_path / "src", 4)
    proc, project = prepare(tmp_path, src)
    metrics = assert_ok(proc, project)
    assert proc.stderr == ""
    assert metrics["warnings"] == 0 and 0.5 < metrics["median_depth_m"] < 4.0


def test_non_png_files_are_ignored_with_one_warning(tmp_path):
    src = make_source(tmp_path / "src", 4)
    (src / "rgb" / "notes.txt").write_text("shot on a rainy day\n")
    (src / "depth" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    Image.fromarray(rgb_image(9)).save(src / "rgb" / "photo.jpg", format="JPEG")
    proc, project = prepare(tmp_path, src)
    metrics = assert_ok(proc, project)
    (warning,) = warnings_of(proc)
    assert "ignored 3 non-PNG" in warning
    assert metrics["ignored_files"] == 3
    assert metrics["train_images"] + metrics["val_images"] == 4


# ------------------------------------------- later stages, given a split with a hole
def test_later_stages_name_a_deleted_image(tmp_repro_copy):
    """evaluate, package and export all read the split's images: a file deleted after
    prepare is a one-line error naming it, and no output of theirs is replaced."""
    root = tmp_repro_copy
    split = (root / SPLIT).read_text().splitlines()
    val_rgb = next(line.split(",")[3] for line in split[1:] if line.split(",")[1] == "val")
    (root / val_rgb).unlink()
    outputs = ["metrics/evaluate.json", "submission/submission.zip", "models/model.tflite"]
    before = {rel: (root / rel).read_bytes() for rel in outputs}
    for stage in ("evaluate", "package", "export"):
        proc = run_stage(stage, root, check=False)
        assert proc.returncode == 2, (stage, proc.stdout[-2000:], proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr, stage
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and val_rgb in errors[0] and "not found" in errors[0], (
            stage,
            proc.stderr,
        )
    assert {rel: (root / rel).read_bytes() for rel in outputs} == before


@pytest.fixture
def tmp_repro_copy(tiny_repro, tmp_path) -> Path:
    """A private copy of the shared tiny project (other tests keep using the original)."""
    return Path(shutil.copytree(tiny_repro, tmp_path / "copy", symlinks=True))


def test_single_pair_cannot_be_split(tmp_path):
    src = make_source(tmp_path / "src", 1)
    proc, project = prepare(tmp_path, src)
    assert_one_line_error(proc, project, "source src", "only 1 usable pair", "at least 2")


def test_split_leaves_at_least_one_pair_on_each_side():
    from pipeline.data.dataset import split_names

    for n, fraction, n_val in (
        (2, 0.9, 1),
        (5, 0.9, 4),
        (10, 0.2, 2),
        (132, 0.2, 27),
        (6, 0.01, 1),
    ):
        splits = split_names([f"{i:03d}.png" for i in range(n)], fraction)
        assert sum(s == "val" for s in splits.values()) == n_val
        # validation is the last contiguous block of names
        assert [splits[k] for k in sorted(splits)] == ["train"] * (n - n_val) + ["val"] * n_val


# ------------------------------------------- TF_CONFIG, read by train.strategy multi_worker
BAD_TF_CONFIGS = [
    # (TF_CONFIG, what the one line says)
    ('{"cluster": {"worker": ["127.0.0.1:1"', "TF_CONFIG: not valid JSON (Expecting"),
    ("worker:0", "TF_CONFIG: not valid JSON"),
    ('["127.0.0.1:1"]', "TF_CONFIG: must be a JSON object, got list"),
    ('{"cluster": ["127.0.0.1:1"]}', "TF_CONFIG: cluster must map roles to lists"),
    ('{"cluster": {"worker": "127.0.0.1:1"}}', "TF_CONFIG: cluster.worker must be a non-empty"),
    ('{"cluster": {"worker": []}}', "TF_CONFIG: cluster.worker must be a non-empty"),
    ('{"cluster": {"worker": ["127.0.0.1"]}}', "cluster.worker[0]='127.0.0.1' is not HOST:PORT"),
    ('{"cluster": {"worker": ["h:99999"]}}', "cluster.worker[0]='h:99999' is not HOST:PORT"),
    (
        '{"cluster": {"worker": ["h:1", "h:1"]}, "task": {"type": "worker", "index": 0}}',
        "TF_CONFIG: h:1 is in the cluster twice (worker[0] and worker[1])",
    ),
    ('{"cluster": {"worker": ["h:1"]}}', "TF_CONFIG: task must be this process's"),
    ('{"task": {"type": "worker", "index": 0}}', "TF_CONFIG: cluster must map roles"),
    (
        '{"cluster": {"worker": ["h:1"]}, "task": {"type": "chief", "index": 0}}',
        "TF_CONFIG: task.type='chief' is not a role of the cluster (worker)",
    ),
    (
        '{"cluster": {"worker": ["h:1", "h:2"]}, "task": {"type": "worker", "index": 2}}',
        "TF_CONFIG: task.index=2 is out of range: cluster.worker has 2 address(es), so 0..1",
    ),
    (
        '{"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": "0"}}',
        "TF_CONFIG: task.index must be an int, got '0'",
    ),
]


@pytest.mark.parametrize("text, needle", BAD_TF_CONFIGS)
def test_a_bad_tf_config_is_one_line(text, needle, monkeypatch):
    from pipeline.core.errors import ConfigError
    from pipeline.model.cluster import read_tf_config

    monkeypatch.setenv("TF_CONFIG", text)
    with pytest.raises(ConfigError) as err:
        read_tf_config()
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_good_tf_configs_read_as_they_are(monkeypatch):
    from pipeline.model.cluster import read_tf_config

    for text, config in (
        ("", {}),
        ("{}", {}),
        (
            '{"cluster": {"worker": ["h:1", "[::1]:2"], "chief": ["h:3"]}, '
            '"task": {"type": "worker", "index": 1}, "rpc_layer": "grpc"}',
            {
                "cluster": {"worker": ["h:1", "[::1]:2"], "chief": ["h:3"]},
                "task": {"type": "worker", "index": 1},
                "rpc_layer": "grpc",
            },
        ),
    ):
        monkeypatch.setenv("TF_CONFIG", text)
        assert read_tf_config() == config


def test_the_train_stage_stops_on_a_bad_tf_config_before_any_work(tmp_path):
    """The issue's case: a cut-off TF_CONFIG with train.strategy multi_worker was a
    json.decoder.JSONDecodeError traceback, exit 1."""
    project = make_project(tmp_path / "proj", {"train": {"strategy": "multi_worker"}}, git=False)
    env = {**project_env(), "TF_CONFIG": BAD_TF_CONFIGS[0][0]}
    proc = subprocess.run(
        [sys.executable, "-m", "stages.train"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [
        "error: TF_CONFIG: not valid JSON (Expecting ',' delimiter at line 1, column 38) "
        f"(expected e.g. {EXAMPLE_TF_CONFIG}; docs/scale-out.md)"
    ]
    assert not (project / "models/checkpoints").exists() and not (project / "metrics").exists()


# ------------------- a stage run alone after data.sources changed: its inputs are stale
def set_data(project: Path, **data) -> None:
    """params.yaml's data section updated, as an edit (or dvc exp run -S) would."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"].update(data)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def assert_stale(proc, project: Path, before: dict[str, bytes], *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()
    for needle in needles:
        assert needle in line, (needle, line)
    after = {p: f.read_bytes() for p, f in outputs(project).items()}
    assert after == before  # nothing written, nothing replaced
    assert not (project / "models/checkpoints").exists()


def outputs(project: Path) -> dict[str, Path]:
    return {
        str(p.relative_to(project)): p
        for sub in ("data/prepared", "metrics", "models")
        for p in sorted((project / sub).rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def prepared(tmp_path) -> tuple[Path, Path, Path]:
    """(project, its source `a`'s folder, another folder) after index and prepare."""
    src, other = make_source(tmp_path / "srcA", 4), make_source(tmp_path / "srcB", 4)
    proc, project = prepare(tmp_path, src)
    set_data(project, sources={"a": {"path": str(src)}})
    assert run_stage("index", project).returncode == 0
    assert run_stage("prepare", project).returncode == 0
    return project, src, other


def test_train_alone_on_a_split_of_other_sources_says_it_is_stale(prepared):
    """The issue's case: sources changed, then the train stage rerun alone: a KeyError: 'a'
    traceback from the source weights."""
    project, src, _ = prepared
    before = {p: f.read_bytes() for p, f in outputs(project).items()}
    set_data(project, sources={"b": {"path": str(src)}})
    proc = run_stage("train", project, check=False)
    assert_stale(
        proc,
        project,
        before,
        "error: data/prepared/split.csv: the split is stale, made from other sources (a) than "
        "data.sources names now (b): run `dvc repro train`, which remakes the index and the "
        "split first",
    )


def test_train_alone_on_a_split_of_another_folder_says_it_is_stale(prepared):
    """Same name, another folder: training would have run on the old folder's images."""
    project, src, other = prepared
    before = {p: f.read_bytes() for p, f in outputs(project).items()}
    set_data(project, sources={"a": {"path": str(other)}})
    proc = run_stage("train", project, check=False)
    assert_stale(
        proc,
        project,
        before,
        "the split is stale, its source a lists ",
        f"{src}/rgb/0000.png, outside data.sources.a.path={other}: run `dvc repro train`",
    )


def test_prepare_alone_on_an_index_of_another_folder_says_it_is_stale(prepared):
    project, src, other = prepared
    before = {p: f.read_bytes() for p, f in outputs(project).items()}
    set_data(project, sources={"a": {"path": str(other)}})
    proc = run_stage("prepare", project, check=False)
    assert_stale(
        proc,
        project,
        before,
        f"error: data/prepared/sources/a.json: the index is stale, made from {src}, not "
        f"data.sources.a.path={other}: run `dvc repro prepare`, which remakes index@a first",
    )


def test_train_alone_on_teacher_maps_without_a_new_unlabeled_folder_says_they_are_stale(
    prepared, tmp_path
):
    from pipeline.data.dataset import read_split, write_teacher_index

    project, src, other = prepared
    rows = [
        {"source": "a", "name": r["name"], "kind": "labelled", "rgb": r["rgb"], "teacher": ""}
        for r in read_split(project / SPLIT, "train")
    ]
    rows.append(
        {"source": "old", "name": "x.png", "kind": "unlabeled", "rgb": "u/rgb/x.png", "teacher": ""}
    )
    write_teacher_index(project / "data/teacher/alignment.csv", rows)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["teacher"]["model"] = "models/teacher/t.tflite"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    set_data(project, unlabeled={"rooms": {"path": str(other)}})
    before = {p: f.read_bytes() for p, f in outputs(project).items()}
    proc = run_stage("train", project, check=False)
    assert_stale(
        proc,
        project,
        before,
        "error: data/teacher/alignment.csv: the teacher maps are stale, made for other unlabeled "
        "folders (old) than data.unlabeled names now (rooms): run `dvc repro train`, which "
        "remakes the teacher maps first",
    )


@pytest.mark.parametrize(
    "made_with, now, needle",
    [
        ("blocks", "b", "made with another data.val than 'b' (its source a is train and val)"),
        ("b", "blocks", "made with another data.val than 'blocks' (its source a is train only)"),
    ],
)
def test_train_alone_on_a_split_made_with_another_data_val_says_it_is_stale(
    prepared, made_with, now, needle
):
    """data.val decides which epoch ships (a held-out source: the last): a split made with
    another one would train and select on the wrong images."""
    project, src, other = prepared
    set_data(project, sources={"a": {"path": str(src)}, "b": {"path": str(other)}}, val=made_with)
    assert run_stage("index", project).returncode == 0
    assert run_stage("prepare", project).returncode == 0
    before = {p: f.read_bytes() for p, f in outputs(project).items()}
    set_data(project, val=now)
    proc = run_stage("train", project, check=False)
    assert_stale(
        proc,
        project,
        before,
        f"error: data/prepared/split.csv: the split is stale, {needle}: run `dvc repro train`, "
        "which remakes the split first",
    )


def test_teacher_alone_on_an_unlabeled_index_of_another_folder_says_it_is_stale(prepared):
    project, src, other = prepared
    set_data(project, unlabeled={"u": {"path": str(src)}})
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["teacher"]["model"] = "models/teacher/t.tflite"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert run_stage("unlabeled", project).returncode == 0
    before = {p: f.read_bytes() for p, f in outputs(project).items()}
    set_data(project, unlabeled={"u": {"path": str(other)}})
    proc = run_stage("teacher", project, check=False)
    assert_stale(
        proc,
        project,
        before,
        "error: data/prepared/sources/unlabeled/u.csv: the unlabeled index is stale, it lists "
        f"{src}/rgb/0000.png, outside data.unlabeled.u.path={other}: run `dvc repro teacher`, "
        "which remakes unlabeled@u first",
    )
    assert not (project / "data/teacher").exists()


@pytest.mark.parametrize("unreadable", ["", "rgb"])
def test_an_unreadable_folder_is_one_line(tmp_path, monkeypatch, unreadable):
    """No read permission (chmod 000; simulated: the tests may run as root, who reads all)."""
    import os as os_module

    from pipeline.core.errors import DataError
    from pipeline.data import dataset

    src = make_source(tmp_path / "src", 2)
    denied = src / unreadable if unreadable else src
    real_scandir, real_iterdir = os_module.scandir, Path.iterdir

    def scandir(path="."):
        if Path(path) == denied:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    def iterdir(self):
        if self == denied:
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(dataset.os, "scandir", scandir)
    monkeypatch.setattr(Path, "iterdir", iterdir)
    with pytest.raises(DataError) as err:
        dataset.validate_source(src)
    where = "the data folder" if not unreadable else "the folder"
    assert str(err.value) == f"{denied}: cannot read {where} (Permission denied)"
