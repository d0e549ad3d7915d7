"""Submission ZIP: the writer's output validates, and each malformation is rejected by name."""

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from pipeline.core.files import DataError, write_rgb_png
from pipeline.results.submission import (
    format_readme,
    main,
    parse_readme,
    validate_submission,
    write_submission,
)

README = {"runtime_s": 0.043, "cpu": 1, "extra_data": 0, "description": "tiny test model"}
SIZES = {"a.png": (48, 64), "b.png": (30, 40)}  # name -> (height, width) of the input RGB


@pytest.fixture()
def inputs(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "rgb"
    for name, (h, w) in SIZES.items():
        write_rgb_png(folder / name, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return folder


@pytest.fixture()
def valid_zip(tmp_path, inputs, models):
    preds = ((name, np.full((h, w), 2.5, np.float32)) for name, (h, w) in SIZES.items())
    path = tmp_path / "submission.zip"
    assert write_submission(path, predictions=preds, model_path=models["good"], readme=README) == 2
    return path


def _png(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _variant(src, dst, *, drop=(), rename=None, add=None):
    """Copy a ZIP member by member (in memory), dropping, renaming or adding members."""
    rename, add = rename or {}, add or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if info.filename in drop or info.filename in add:
                continue
            zout.writestr(zipfile.ZipInfo(rename.get(info.filename, info.filename)), zin.read(info))
        for name, data in add.items():
            zout.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_DEFLATED)
    return dst


def _problems(zip_path, inputs):
    problems = validate_submission(zip_path, inputs)
    assert problems, "expected the validator to reject this archive"
    return "\n".join(problems)


def test_valid_zip_from_writer_is_accepted(valid_zip, inputs, capsys):
    assert validate_submission(valid_zip, inputs) == []
    with zipfile.ZipFile(valid_zip) as zf:
        assert sorted(zf.namelist()) == ["a.png", "b.png", "model.tflite", "readme.txt"]
        depth = np.asarray(Image.open(io.BytesIO(zf.read("b.png"))))
        readme = zf.read("readme.txt").decode()
    assert (
        depth.dtype == np.uint16 and depth.shape == (30, 40) and (depth == 2500).all()
    )  # 2.5 m in mm
    assert readme.splitlines() == [
        "runtime per image [s] : 0.043",
        "CPU[1] / GPU[0] : 1",
        "Extra Data [1] / No Extra Data [0] : 0",
        "Other description : tiny test model",
    ]
    assert main(["validate", str(valid_zip), "--inputs", str(inputs)]) == 0
    assert capsys.readouterr().out.strip() == (
        f"{valid_zip}: OK (2 depth PNGs, readme.txt, model.tflite with a 1x480x640x3 input)"
    )


def test_cli_prints_each_problem_and_fails(valid_zip, inputs, tmp_path, capsys):
    bad = _variant(valid_zip, tmp_path / "bad.zip", drop={"a.png", "model.tflite"})
    assert main(["validate", str(bad), "--inputs", str(inputs)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [f"{bad}: missing output a.png for input a.png", f"{bad}: missing model.tflite"]


def test_rejects_nested_folder(valid_zip, inputs, tmp_path):
    bad = _variant(valid_zip, tmp_path / "bad.zip", rename={"a.png": "outputs/a.png"})
    text = _problems(bad, inputs)
    assert "member 'outputs/a.png' is inside a folder" in text
    assert "missing output a.png" in text


def test_rejects_missing_image(valid_zip, inputs, tmp_path):
    text = _problems(_variant(valid_zip, tmp_path / "bad.zip", drop={"b.png"}), inputs)
    assert text == "missing output b.png for input b.png"


def test_rejects_extra_image_and_stray_file(valid_zip, inputs, tmp_path):
    extra = {"c.png": _png(np.zeros((30, 40), np.uint16)), "notes.txt": b"hi"}
    text = _problems(_variant(valid_zip, tmp_path / "bad.zip", add=extra), inputs)
    assert "extra image c.png: no input with that name" in text
    assert "stray file notes.txt" in text


def test_rejects_8bit_png(valid_zip, inputs, tmp_path):
    eight = _png(np.full((48, 64), 3, np.uint8))
    text = _problems(_variant(valid_zip, tmp_path / "bad.zip", add={"a.png": eight}), inputs)
    assert text == "a.png: 8-bit gray PNG; expected 16-bit single-channel depth in mm"


def test_rejects_rgb_png(valid_zip, inputs, tmp_path):
    rgb = _png(np.zeros((48, 64, 3), np.uint8))
    text = _problems(_variant(valid_zip, tmp_path / "bad.zip", add={"a.png": rgb}), inputs)
    assert "a.png: 8-bit RGB PNG" in text


def test_rejects_jpeg_renamed_png(valid_zip, inputs, tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(buf, format="JPEG")
    text = _problems(
        _variant(valid_zip, tmp_path / "bad.zip", add={"a.png": buf.getvalue()}), inputs
    )
    assert text == "a.png: not a PNG file (JPEG data under a .png name)"


def test_rejects_wrong_size(valid_zip, inputs, tmp_path):
    wrong = _png(np.zeros((64, 48), np.uint16))  # transposed
    text = _problems(_variant(valid_zip, tmp_path / "bad.zip", add={"a.png": wrong}), inputs)
    assert text == "a.png: size 48x64 differs from its input's 64x48"


def test_rejects_missing_readme_line(valid_zip, inputs, tmp_path):
    lines = format_readme(**README).splitlines()
    readme = "\n".join(line for line in lines if not line.startswith("CPU")).encode()
    text = _problems(_variant(valid_zip, tmp_path / "bad.zip", add={"readme.txt": readme}), inputs)
    assert text == "readme.txt: missing line 'CPU[1] / GPU[0] : ...'"


def test_rejects_unparseable_readme_values(valid_zip, inputs, tmp_path):
    readme = format_readme(**README).replace(": 0.043", ": fast").replace("[0] : 0", "[0] : 2")
    text = _problems(
        _variant(valid_zip, tmp_path / "bad.zip", add={"readme.txt": readme.encode()}), inputs
    )
    assert "'runtime per image [s]' must be a number of seconds > 0, got 'fast'" in text
    assert "'Extra Data [1] / No Extra Data [0]' must be 0 or 1, got '2'" in text
    missing = _problems(_variant(valid_zip, tmp_path / "bad2.zip", drop={"readme.txt"}), inputs)
    assert missing == "missing readme.txt"


def test_rejects_missing_model(valid_zip, inputs, tmp_path):
    text = _problems(_variant(valid_zip, tmp_path / "bad.zip", drop={"model.tflite"}), inputs)
    assert text == "missing model.tflite"


def test_rejects_corrupt_and_wrong_shape_model(valid_zip, inputs, tmp_path, models):
    corrupt = _variant(
        valid_zip, tmp_path / "bad.zip", add={"model.tflite": b"not a flatbuffer" * 8}
    )
    assert _problems(corrupt, inputs).startswith("model.tflite: cannot load TFLite model")
    small = models["small"].read_bytes()
    text = _problems(
        _variant(valid_zip, tmp_path / "bad2.zip", add={"model.tflite": small}), inputs
    )
    assert "input shapes [(1, 240, 320, 3)] are not one 1x480x640x3 input" in text


def test_rejects_zip_slip_without_extracting(valid_zip, inputs, tmp_path, monkeypatch):
    def no_extract(*args, **kwargs):
        raise AssertionError("the validator must not extract members to disk")

    monkeypatch.setattr(zipfile.ZipFile, "extract", no_extract)
    monkeypatch.setattr(zipfile.ZipFile, "extractall", no_extract)
    data = _png(np.zeros((48, 64), np.uint16))
    bad = _variant(
        valid_zip, tmp_path / "bad.zip", add={"../evil.png": data, "/etc/evil.png": data}
    )
    text = _problems(bad, inputs)
    assert "unsafe member name '../evil.png' (absolute path or '..': zip slip)" in text
    assert "unsafe member name '/etc/evil.png'" in text
    assert not (tmp_path / "evil.png").exists()


def test_rejects_zip_bomb_by_declared_ratio(valid_zip, inputs, tmp_path):
    bomb = b"\0" * (8 << 20)  # 8 MiB of zeros deflate ~1000:1
    text = _problems(_variant(valid_zip, tmp_path / "bad.zip", add={"zeros.png": bomb}), inputs)
    assert "zeros.png: compression ratio" in text and "zip bomb" in text


def test_rejects_non_zip(inputs, tmp_path):
    fake = tmp_path / "fake.zip"
    fake.write_bytes(b"hello")
    assert _problems(fake, inputs).startswith("not a readable ZIP archive")


def test_readme_roundtrip_and_parse_errors():
    text = format_readme(runtime_s=0.0123456, cpu=1, extra_data=1, description="line one\nline two")
    assert parse_readme(text) == {
        "runtime_s": 0.01235,
        "cpu": 1,
        "extra_data": 1,
        "description": "line one line two",
    }
    with pytest.raises(DataError, match="missing line 'Other description"):
        parse_readme(text.splitlines()[0])
    with pytest.raises(ValueError):
        format_readme(runtime_s=0.0, description="x")


def test_writer_refuses_bad_names(tmp_path, models):
    with pytest.raises(DataError, match="plain file name"):
        write_submission(
            tmp_path / "s.zip",
            predictions=[("sub/a.png", np.ones((4, 4)))],
            model_path=models["good"],
            readme=README,
        )
    with pytest.raises(DataError, match="duplicate"):
        write_submission(
            tmp_path / "s.zip",
            predictions=[("a.png", np.ones((4, 4)))] * 2,
            model_path=models["good"],
            readme=README,
        )
    assert not (tmp_path / "s.zip").exists()  # atomic: nothing half-written is left behind


def test_writer_is_deterministic(tmp_path, models):
    def write(path):
        preds = [("x.png", np.full((8, 8), 1.234))]
        write_submission(path, predictions=preds, model_path=models["good"], readme=README)
        return path.read_bytes()

    assert write(tmp_path / "one.zip") == write(
        tmp_path / "two.zip"
    )  # stable DVC hash for equal outputs
    with zipfile.ZipFile(tmp_path / "one.zip") as zf:  # no wall-clock time or file mtime inside
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
