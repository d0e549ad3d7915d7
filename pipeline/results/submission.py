"""The challenge submission ZIP: writing it, and validating it like the server does (and more).

Layout (see ../shared/CHALLENGE.md): a flat ZIP with one uint16 mm PNG per input RGB
under the input's exact file name, `model.tflite`, and `readme.txt` with four lines.

The validator never extracts anything to disk: members are read into memory one at a
time, after the names (zip slip) and the declared sizes (zip bombs) have been checked.

CLI:  python -m pipeline.results.submission validate SUBMISSION.zip --inputs RGB_DIR
"""

from __future__ import annotations

import argparse
import io
import math
import os
import re
import sys
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.core.errors import DataError, ExportError
from pipeline.core.files import atomic_path, depth_m_to_mm
from pipeline.results.describe import describe, extra_data_used

MODEL_NAME = "model.tflite"
README_NAME = "readme.txt"
DEVICE_INPUT_SHAPE = (1, 480, 640, 3)
DEVICE_OUTPUT_SHAPES = ((1, 480, 640, 1), (1, 480, 640))

# readme.txt: field -> the exact label the organizers' template uses, in template order.
README_LABELS = {
    "runtime_s": "runtime per image [s]",
    "cpu": "CPU[1] / GPU[0]",
    "extra_data": "Extra Data [1] / No Extra Data [0]",
    "description": "Other description",
}

# Archive limits: far above any real submission, far below what a bomb would need.
MAX_MEMBERS = 100_000
MAX_MEMBER_BYTES = 1 << 30  # 1 GiB (model.tflite included)
MAX_TOTAL_BYTES = 16 << 30  # 16 GiB declared uncompressed in all
MAX_RATIO = 100.0  # uncompressed / compressed, checked for members above RATIO_MIN_BYTES
RATIO_MIN_BYTES = 1 << 20
MAX_README_BYTES = 64 << 10
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest a ZIP can store
MODEL_SECTIONS = ("base", "data", "train", "teacher", "export")  # params that shape model.tflite

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


# ----------------------------------------------------------------------------- readme
def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def format_readme(*, runtime_s: float, cpu: int = 1, extra_data: int = 0, description: str) -> str:
    """The four template lines, values filled in (description flattened to one line)."""
    if not (isinstance(runtime_s, (int, float)) and math.isfinite(runtime_s) and runtime_s > 0):
        raise ValueError(
            f"readme: runtime_s must be a positive number of seconds, got {runtime_s!r}"
        )
    for key, flag in (("cpu", cpu), ("extra_data", extra_data)):
        if flag not in (0, 1) or isinstance(flag, bool):
            raise ValueError(f"readme: {key} must be 0 or 1, got {flag!r}")
    values = {
        "runtime_s": f"{runtime_s:.4g}",
        "cpu": str(cpu),
        "extra_data": str(extra_data),
        "description": _one_line(description),
    }
    return "".join(f"{README_LABELS[k]} : {values[k]}\n" for k in README_LABELS)


def _norm_label(text: str) -> str:
    return " ".join(text.split()).lower()


def _readme_fields(text: str) -> tuple[dict, list[str]]:
    """Parse readme text -> (fields found, problems). Unknown extra lines are ignored."""
    by_label = {_norm_label(label): key for key, label in README_LABELS.items()}
    raw: dict[str, str] = {}
    problems: list[str] = []
    for line in text.lstrip("\ufeff").splitlines():
        label, sep, value = line.partition(":")
        key = by_label.get(_norm_label(label)) if sep else None
        if key is None:
            continue
        if key in raw:
            problems.append(f"{README_NAME}: line '{README_LABELS[key]}' appears more than once")
        raw[key] = value.strip()
    out: dict = {}
    for key, label in README_LABELS.items():
        if key not in raw:
            problems.append(f"{README_NAME}: missing line '{label} : ...'")
            continue
        value = raw[key]
        if key == "runtime_s":
            try:
                runtime = float(value)
            except ValueError:
                runtime = math.nan
            if not (math.isfinite(runtime) and runtime > 0):
                problems.append(
                    f"{README_NAME}: '{label}' must be a number of seconds > 0, got {value!r}"
                )
            else:
                out[key] = runtime
        elif key in ("cpu", "extra_data"):
            if value not in ("0", "1"):
                problems.append(f"{README_NAME}: '{label}' must be 0 or 1, got {value!r}")
            else:
                out[key] = int(value)
        else:
            out[key] = value
    return out, problems


def parse_readme(text: str) -> dict:
    """readme.txt text -> {runtime_s, cpu, extra_data, description}; DataError listing problems."""
    fields, problems = _readme_fields(text)
    if problems:
        raise DataError("; ".join(problems))
    return fields


# ----------------------------------------------------------------------------- writing
def _check_output_name(name: str, seen: set) -> None:
    if not name or name != os.path.basename(name) or "\\" in name or name in (".", ".."):
        raise DataError(f"{name!r}: output name must be a plain file name (the input's name)")
    if not name.lower().endswith(".png"):
        raise DataError(f"{name}: output name must end in .png (inputs are PNG images)")
    if name in (MODEL_NAME, README_NAME) or name in seen:
        raise DataError(f"{name}: duplicate output name")
    seen.add(name)


def _png_bytes(depth_m: np.ndarray, name: str) -> bytes:
    mm = depth_m_to_mm(np.squeeze(depth_m))
    if mm.ndim != 2:
        raise DataError(f"{name}: prediction must be HxW, got shape {mm.shape}")
    buf = io.BytesIO()
    Image.fromarray(mm).save(buf, format="PNG")
    return buf.getvalue()


def _member(name: str, compress_type: int) -> zipfile.ZipInfo:
    # Fixed timestamp and mode: identical predictions give a byte-identical ZIP (stable DVC hash).
    info = zipfile.ZipInfo(name, date_time=ZIP_DATE_TIME)
    info.compress_type = compress_type
    info.external_attr = 0o644 << 16
    return info


def _write_zip(path: Path, *, predictions, model_path, readme: Mapping) -> int:
    model_path = Path(model_path)
    if not model_path.is_file():
        raise DataError(f"{model_path}: model file not found")
    readme_text = format_readme(**readme)
    seen: set = set()
    with zipfile.ZipFile(path, "w") as zf:
        for name, depth_m in predictions:
            _check_output_name(name, seen)
            # PNG data is already deflated: store it rather than compress it twice.
            zf.writestr(_member(name, zipfile.ZIP_STORED), _png_bytes(depth_m, name))
        if not seen:
            raise DataError(f"{path.name}: no predictions to write")
        zf.writestr(_member(MODEL_NAME, zipfile.ZIP_DEFLATED), model_path.read_bytes())
        zf.writestr(_member(README_NAME, zipfile.ZIP_DEFLATED), readme_text)
    return len(seen)


def write_submission(
    zip_path: str | os.PathLike,
    *,
    predictions: Iterable[tuple[str, np.ndarray]],
    model_path: str | os.PathLike,
    readme: Mapping,
) -> int:
    """Write the flat challenge ZIP atomically; returns the number of depth PNGs.

    `predictions` yields (input file name, HxW depth in metres) and is consumed lazily,
    so a whole test set never sits in memory. `readme` holds format_readme's arguments.
    """
    with atomic_path(zip_path, suffix=".zip.tmp") as tmp:
        return _write_zip(tmp, predictions=predictions, model_path=model_path, readme=readme)


# ----------------------------------------------------------------------------- validation
def _unsafe_name(name: str) -> bool:
    parts = re.split(r"[\\/]", name)
    return (
        name.startswith(("/", "\\"))
        or re.match(r"^[A-Za-z]:", name) is not None
        or ".." in parts
        or "\x00" in name
    )


def list_input_images(folder: str | os.PathLike) -> list[Path]:
    """The input RGB PNGs of a folder, sorted (hidden files and other types ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"inputs folder {folder} not found")
    files = sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() == ".png" and not p.name.startswith(".") and p.is_file()
    )
    if not files:
        raise DataError(f"inputs folder {folder} holds no PNG images")
    return files


def named_inputs(
    input_files: Iterable[str | os.PathLike] | Mapping[str, str | os.PathLike],
) -> tuple[dict[str, Path], list[Path]]:
    """({output PNG name: input path}, inputs left out because another had their file
    name): a mapping as given, or every path under its own file name."""
    if isinstance(input_files, Mapping):
        return {name: Path(path) for name, path in input_files.items()}, []
    named: dict[str, Path] = {}
    clashes = []
    for path in map(Path, input_files):
        if path.name in named:
            clashes.append(path)
        else:
            named[path.name] = path
    return named, clashes


def _input_sizes(inputs_dir, input_files) -> tuple[dict[str, tuple[int, int]], list[str]]:
    """{output file name: (height, width)} read from the PNG headers only (no decoding)."""
    if input_files is None:
        try:
            input_files = list_input_images(inputs_dir)
        except DataError as err:
            return {}, [str(err)]
    named, clashes = named_inputs(input_files)
    problems = [f"input {path}: two inputs share the file name {path.name}" for path in clashes]
    sizes: dict[str, tuple[int, int]] = {}
    for name, path in named.items():
        try:
            with Image.open(path) as img:
                sizes[name] = (img.height, img.width)
        except Exception as err:
            problems.append(f"input {path}: cannot read image size ({err})")
    return sizes, problems


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """Member bytes into memory, never more than `limit` (declared sizes can lie)."""
    with zf.open(info) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise DataError(f"{info.filename}: larger than {limit} bytes")
    return data


def _png_problems(name: str, data: bytes, size: tuple[int, int]) -> list[str]:
    if not data.startswith(PNG_MAGIC):
        kind = "JPEG data" if data.startswith(JPEG_MAGIC) else "unrecognized data"
        return [f"{name}: not a PNG file ({kind} under a .png name)"]
    if len(data) < 33 or data[12:16] != b"IHDR":
        return [f"{name}: PNG without a valid IHDR header"]
    width = int.from_bytes(data[16:20], "big")
    height = int.from_bytes(data[20:24], "big")
    bit_depth, color_type = data[24], data[25]
    problems = []
    if (bit_depth, color_type) != (16, 0):
        kinds = {0: "gray", 2: "RGB", 3: "palette", 4: "gray+alpha", 6: "RGBA"}
        problems.append(
            f"{name}: {bit_depth}-bit {kinds.get(color_type, f'color type {color_type}')} PNG; "
            "expected 16-bit single-channel depth in mm"
        )
    if (height, width) != size:
        problems.append(
            f"{name}: size {width}x{height} differs from its input's {size[1]}x{size[0]}"
        )
    if problems:
        return problems
    try:  # headers fine and size bounded by the input's: safe to decode fully
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except Exception as err:
        return [f"{name}: PNG cannot be decoded ({err})"]
    return []


def _model_problems(data: bytes) -> list[str]:
    from pipeline.device.litert import load_interpreter

    try:
        interp = load_interpreter(content=data, name=MODEL_NAME, num_threads=1)
    except DataError as err:
        return [str(err)]
    inputs, outputs = interp.get_input_details(), interp.get_output_details()
    problems = []
    in_shapes = [tuple(int(s) for s in d["shape"]) for d in inputs]
    out_shapes = [tuple(int(s) for s in d["shape"]) for d in outputs]
    if in_shapes != [DEVICE_INPUT_SHAPE]:
        want = "x".join(map(str, DEVICE_INPUT_SHAPE))
        problems.append(f"{MODEL_NAME}: input shapes {in_shapes} are not one {want} input")
    if len(out_shapes) != 1 or out_shapes[0] not in DEVICE_OUTPUT_SHAPES:
        problems.append(
            f"{MODEL_NAME}: output shapes {out_shapes} are not one 1x480x640x1 depth output"
        )
    return problems


def validate_submission(
    zip_path: str | os.PathLike,
    inputs_dir: str | os.PathLike | None = None,
    *,
    input_files: Iterable[str | os.PathLike] | Mapping[str, str | os.PathLike] | None = None,
) -> list[str]:
    """Every problem found in the ZIP, one string each; [] means valid.

    Expected outputs are the PNGs in `inputs_dir`, or exactly `input_files` when given
    (e.g. the val split's RGB files, which share a folder with the train images; a
    mapping gives each output's name).
    """
    zip_path = Path(zip_path)
    if (inputs_dir is None) == (input_files is None):
        raise ValueError("give exactly one of inputs_dir or input_files")
    sizes, problems = _input_sizes(inputs_dir, input_files)
    if not zip_path.is_file():
        return problems + ["file not found"]
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as err:
        return problems + [f"not a readable ZIP archive ({err})"]
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            return problems + [f"{len(infos)} members; more than the limit of {MAX_MEMBERS}"]
        total = sum(i.file_size for i in infos)
        if total > MAX_TOTAL_BYTES:
            return problems + [
                f"declared uncompressed size {total} bytes exceeds {MAX_TOTAL_BYTES}"
            ]
        if not infos:
            return problems + ["archive is empty"]

        top: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            name = info.filename
            if _unsafe_name(name):
                problems.append(f"unsafe member name {name!r} (absolute path or '..': zip slip)")
            elif info.is_dir():
                problems.append(f"folder entry {name!r}: the archive must be flat")
            elif "/" in name or "\\" in name:
                problems.append(f"member {name!r} is inside a folder: the archive must be flat")
            elif name in top:
                problems.append(f"duplicate member {name!r}")
            elif info.file_size > MAX_MEMBER_BYTES:
                problems.append(
                    f"{name}: declared size {info.file_size} bytes exceeds {MAX_MEMBER_BYTES}"
                )
            elif info.file_size > RATIO_MIN_BYTES and info.file_size > MAX_RATIO * max(
                info.compress_size, 1
            ):
                problems.append(
                    f"{name}: compression ratio "
                    f"{info.file_size / max(info.compress_size, 1):.0f}:1 exceeds "
                    f"{MAX_RATIO:.0f}:1 (zip bomb?)"
                )
            else:
                top[name] = info

        for name in sorted(top):
            if name in (MODEL_NAME, README_NAME) or name in sizes:
                continue
            if name.lower().endswith(".png"):
                problems.append(f"extra image {name}: no input with that name")
            else:
                problems.append(
                    f"stray file {name}: only PNGs, {MODEL_NAME} and {README_NAME} belong"
                )
        for name, size in sizes.items():
            info = top.get(name)
            if info is None:
                problems.append(f"missing output {name} for input {name}")
                continue
            # A 16-bit gray PNG of HxW never needs much more than its raw size, 2*H*W.
            limit = 4 * size[0] * size[1] + (1 << 20)
            try:
                data = _read_member(zf, info, limit)
            except (DataError, zipfile.BadZipFile, OSError, EOFError) as err:
                problems.append(f"{name}: cannot read member ({err})")
                continue
            problems += _png_problems(name, data, size)

        if README_NAME not in top:
            problems.append(f"missing {README_NAME}")
        else:
            try:
                text = _read_member(zf, top[README_NAME], MAX_README_BYTES).decode(
                    "utf-8", "replace"
                )
                problems += _readme_fields(text)[1]
            except (DataError, zipfile.BadZipFile, OSError, EOFError) as err:
                problems.append(f"{README_NAME}: cannot read member ({err})")
        if MODEL_NAME not in top:
            problems.append(f"missing {MODEL_NAME}")
        else:
            try:
                problems += _model_problems(_read_member(zf, top[MODEL_NAME], MAX_MEMBER_BYTES))
            except (DataError, zipfile.BadZipFile, OSError, EOFError) as err:
                problems.append(f"{MODEL_NAME}: cannot read member ({err})")
    return problems


# ----------------------------------------------------------------------------- packaging
def extra_data_flag(params) -> int:
    """The readme's Extra Data flag: package.extra_data: 1 forces it, else 1 if extra_data_used."""
    return int(params.package.extra_data == 1 or bool(extra_data_used(params)))


def describe_run(
    params, benchmark: Mapping | None = None, *, extra: str = "", min_runtime: str = ""
) -> str:
    """Auto description for readme.txt: the method (pipeline/results/describe.py), minimum
    TFLite runtime (`min_runtime`, read from model.tflite), params hash, extra data, timing.

    The hash covers MODEL_SECTIONS only (what determines model.tflite), so editing e.g.
    tracking params neither changes the readme nor needs to rerun the package stage.
    """
    from pipeline.core.config import params_hash

    method = describe(params)
    parts = [
        method.network,
        method.geometry,
        f"precision {method.precision}",
        *([f"runs on TFLite >= {min_runtime}"] if min_runtime else []),
        f"model params hash {params_hash(params, MODEL_SECTIONS)}",
    ]
    if method.extra_data:
        parts.append("extra data: " + ", ".join(method.extra_data))
    if benchmark:
        # benchmark.json (stages/benchmark.py): `device` is local or ssh://...,
        # `machine` the CPU arch
        timing = [str(benchmark[k]) for k in ("device", "machine") if benchmark.get(k)]
        if benchmark.get("threads"):
            timing.append(f"{benchmark['threads']} threads")
        if timing:
            parts.append("timed on " + ", ".join(timing))
        if benchmark.get("est_rpi4_ms"):  # the runtime line stays the measured one
            parts.append(
                f"est. Pi 4 {benchmark['est_rpi4_ms']:.0f} ms (an estimate, range "
                f"{benchmark['est_rpi4_ms_lo']:.0f}-{benchmark['est_rpi4_ms_hi']:.0f} ms, "
                "scaled by 4 MobileNets' published Pi 4 / local times)"
            )
    parts.append("reproduce: dvc repro")
    if extra.strip():
        parts.append(extra.strip())
    return _one_line("; ".join(parts))


def model_min_runtime(model_path: str | os.PathLike) -> str:
    """The oldest TFLite runtime that runs the model file (for the readme); a DataError
    naming the file when it is missing or not a TFLite model."""
    from pipeline.device import tflite

    try:
        return tflite.model_min_runtime(Path(model_path).read_bytes())
    except FileNotFoundError:
        raise DataError(f"{model_path}: model file not found") from None
    except ExportError as err:
        raise DataError(f"{model_path}: {err}") from None


def package_submission(
    zip_path: str | os.PathLike,
    *,
    model_path: str | os.PathLike,
    input_files: Iterable[str | os.PathLike] | Mapping[str, str | os.PathLike],
    readme: Mapping,
    num_threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Predict every input with the TFLite model, write the ZIP, validate it, then publish.

    The ZIP is validated under its temporary name: an invalid submission never appears
    at `zip_path`. Raises DataError listing the problems. Returns the number of images.
    """
    from pipeline.core.files import read_rgb
    from pipeline.device.predict import TFLiteDepthModel

    named, clashes = named_inputs(input_files)
    if not named:
        raise DataError("package: no input images")
    if clashes:
        dupes = sorted({p.name for p in clashes})
        raise DataError(
            f"package: inputs share file names ({', '.join(dupes[:5])}); outputs would collide"
        )
    model = TFLiteDepthModel(model_path, num_threads=num_threads)

    def predictions():
        for i, (name, path) in enumerate(named.items(), 1):
            yield name, model.predict(read_rgb(path))
            if progress:
                progress(i, len(named))

    with atomic_path(zip_path, suffix=".zip.tmp") as tmp:
        count = _write_zip(tmp, predictions=predictions(), model_path=model_path, readme=readme)
        problems = validate_submission(tmp, input_files=named)
        if problems:
            raise DataError(f"{zip_path}: invalid submission: " + "; ".join(problems))
    return count


# ----------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.results.submission", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    val = sub.add_parser("validate", help="check a submission ZIP like the server does (and more)")
    val.add_argument("zip", help="the submission ZIP")
    val.add_argument("--inputs", required=True, help="folder of the input RGB PNGs")
    args = parser.parse_args(argv)

    problems = validate_submission(args.zip, args.inputs)
    for problem in problems:
        print(f"{args.zip}: {problem}")
    if problems:
        print(
            f"{args.zip}: INVALID ({len(problems)} problem{'s' * (len(problems) != 1)})",
            file=sys.stderr,
        )
        return 1
    n = len(_input_sizes(args.inputs, None)[0])
    print(f"{args.zip}: OK ({n} depth PNGs, {README_NAME}, {MODEL_NAME} with a 1x480x640x3 input)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
