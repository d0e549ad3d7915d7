"""A teacher depth model: run it on RGB images and turn its output into metric depth.

A teacher is a file: TFLite (LiteRT), Keras (`.keras`) or ONNX (onnxruntime). It either
predicts metric depth in metres, used as is, or relative inverse depth (MiDaS, DPT, Depth
Anything), known only up to a scale and a shift. Those are fitted per image with ground
truth, by least squares on inverse depth that drops outliers and refits; an image without
ground truth takes the median scale and shift of the labelled ones. The residual of each
map is the RMS log error of its depth to the ground truth (its worst 10% of pixels left
out); maps above
`teacher.max_residual` are dropped (and counted), so a bad teacher map never trains.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from pipeline.core.config import TeacherConfig
from pipeline.core.errors import DataError
from pipeline.core.files import read_depth_m, read_rgb, write_depth_png
from pipeline.device.predict import resize

# Inverse depth below 1 / this (or negative, past "infinity" after the shift) becomes this;
# 65 m is the deepest a uint16 mm PNG holds.
MAX_TEACHER_DEPTH_M = 65.0
MIN_FIT_PIXELS = 100  # fewer valid ground-truth pixels than this: no fit, the map is dropped
TRIM_MADS = 3.0  # outliers: a relative residual above 3 robust standard deviations
# The residual leaves out the worst 10% of pixels: a few wrong ground-truth pixels (edges,
# reflections) would otherwise drop a good teacher map.
RESIDUAL_KEEP = 0.9
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def normalize(rgb: np.ndarray, how: str) -> np.ndarray:
    """float32 RGB 0..255 -> what the teacher's input expects (teacher.normalize)."""
    if how == "none":
        return rgb
    if how == "unit":
        return rgb / 255.0
    if how == "half":
        return rgb / 127.5 - 1.0
    return (rgb / 255.0 - IMAGENET_MEAN) / IMAGENET_STD  # imagenet


def _input_size(path: Path, dims, cfg: TeacherConfig) -> tuple[int, int]:
    """The size the teacher runs at: its own fixed input size, or teacher.height/width."""
    fixed = all(isinstance(d, int) and d > 0 for d in dims)
    if cfg.height:
        if fixed and tuple(dims) != (cfg.height, cfg.width):
            raise DataError(f"{path}: teacher.height/width {cfg.height}x{cfg.width} differ from the model's fixed "
                            f"input {dims[0]}x{dims[1]}; set both to 0")
        return cfg.height, cfg.width
    if not fixed:
        raise DataError(f"{path}: the model's input size is not fixed ({dims}); set teacher.height and teacher.width")
    return int(dims[0]), int(dims[1])


class TeacherModel:
    """`TeacherModel(cfg).predict(rgb_uint8) -> HxW float32`: the raw output at the image's size."""

    def __init__(self, cfg: TeacherConfig, num_threads: int | None = None):
        self.cfg, self.path = cfg, Path(cfg.model)
        if not self.path.is_file():
            raise DataError(f"{self.path}: teacher model file not found (teacher.model)")
        self.channels_first = False
        loader = {".tflite": self._load_tflite, ".keras": self._load_keras, ".onnx": self._load_onnx}
        loader[self.path.suffix](num_threads or len(os.sched_getaffinity(0)))

    def _load_tflite(self, threads):
        from pipeline.device.litert import load_interpreter

        self._interp = load_interpreter(path=self.path, num_threads=threads)
        inp, out = self._interp.get_input_details(), self._interp.get_output_details()
        if len(inp) != 1 or len(out) != 1 or inp[0]["dtype"] != np.float32:
            raise DataError(f"{self.path}: a teacher needs one float32 input and one output")
        self._in, self._out = inp[0]["index"], out[0]["index"]
        signature = inp[0].get("shape_signature", inp[0]["shape"])  # -1 = a dynamic dimension
        self.size = _input_size(self.path, [max(int(d), 0) for d in signature[1:3]], self.cfg)
        if tuple(inp[0]["shape"][1:3]) != self.size:
            self._interp.resize_tensor_input(self._in, [1, *self.size, 3])
            self._interp.allocate_tensors()

        def run(x):
            self._interp.set_tensor(self._in, x)
            self._interp.invoke()
            return self._interp.get_tensor(self._out)

        self._run = run

    def _load_keras(self, threads):
        from pipeline.model.networks import load_keras_model

        model = load_keras_model(self.path, missing="teacher model file not found (teacher.model)")
        shape = model.input_shape
        if len(shape) != 4 or shape[-1] != 3:
            raise DataError(f"{self.path}: a teacher takes N x H x W x 3 RGB, this model takes {shape}")
        self.size = _input_size(self.path, [d or 0 for d in shape[1:3]], self.cfg)
        self._run = lambda x: np.asarray(model(x, training=False))

    def _load_onnx(self, threads):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only
        try:
            session = ort.InferenceSession(str(self.path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own types with multi-line text
            raise DataError(f"{self.path}: cannot load ONNX model ({str(err).strip().splitlines()[0][:200]})") from None
        inp = session.get_inputs()
        if len(inp) != 1 or inp[0].type != "tensor(float)" or len(inp[0].shape) != 4:
            raise DataError(f"{self.path}: a teacher needs one float32 image input, found "
                            f"{[(i.name, i.type, i.shape) for i in inp]}")
        shape = inp[0].shape
        self.channels_first = shape[1] == 3  # NCHW, as most exported PyTorch models
        if not self.channels_first and shape[3] != 3:
            raise DataError(f"{self.path}: input {shape} is neither N x 3 x H x W nor N x H x W x 3")
        dims = shape[2:4] if self.channels_first else shape[1:3]
        self.size = _input_size(self.path, [d if isinstance(d, int) else 0 for d in dims], self.cfg)
        name = inp[0].name
        self._run = lambda x: session.run(None, {name: x})[0]

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        height, width = rgb.shape[:2]
        x = normalize(resize(rgb, *self.size).astype(np.float32), self.cfg.normalize)[None]
        if self.channels_first:
            x = x.transpose(0, 3, 1, 2)
        out = np.squeeze(np.asarray(self._run(np.ascontiguousarray(x, dtype=np.float32)), dtype=np.float32))
        if out.ndim != 2:
            raise DataError(f"{self.path}: teacher output has shape {out.shape}; expected one H x W map")
        return resize(out, height, width)


def fit_inverse_depth(raw: np.ndarray, gt_m: np.ndarray, iterations: int = 5) -> tuple[float, float] | None:
    """(scale, shift) with scale * raw + shift ~ 1 / gt over valid ground truth (gt > 0).

    Least squares, then again without the pixels whose relative error is an outlier
    (above TRIM_MADS robust standard deviations), until the kept set stops changing: a
    few wrong ground-truth pixels (edges, reflections) do not bend the fit. None when
    fewer than MIN_FIT_PIXELS valid pixels."""
    valid = (gt_m > 0) & np.isfinite(raw)
    if valid.sum() < MIN_FIT_PIXELS:
        return None
    x, y = raw[valid].astype(np.float64), 1.0 / gt_m[valid].astype(np.float64)
    keep = np.ones(x.size, dtype=bool)
    for _ in range(iterations):
        a = np.stack([x[keep], np.ones(int(keep.sum()))], axis=1)
        (scale, shift), *_ = np.linalg.lstsq(a, y[keep], rcond=None)
        rel = np.abs(scale * x + shift - y) / y
        cutoff = max(TRIM_MADS * 1.4826 * float(np.median(rel[keep])), 1e-9)
        new_keep = rel <= cutoff
        if new_keep.sum() < MIN_FIT_PIXELS or np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return float(scale), float(shift)


def to_depth(raw: np.ndarray, *, output: str, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    """The teacher's raw output -> depth in metres (inverse_relative: 1 / (scale * raw + shift))."""
    if output == "metric":
        return np.clip(np.nan_to_num(raw.astype(np.float32), nan=0.0), 0.0, MAX_TEACHER_DEPTH_M)
    inverse = scale * raw.astype(np.float64) + shift
    depth = np.where(inverse > 1.0 / MAX_TEACHER_DEPTH_M, 1.0 / np.maximum(inverse, 1e-12), MAX_TEACHER_DEPTH_M)
    return depth.astype(np.float32)


def log_residual(depth_m: np.ndarray, gt_m: np.ndarray) -> float:
    """RMS of ln(depth) - ln(gt) over the best RESIDUAL_KEEP of the pixels valid in both:
    how far the map is from the truth, not counting the ground truth's own outliers."""
    valid = (gt_m > 0) & (depth_m > 0)
    if not valid.any():
        return math.inf
    d2 = np.sort((np.log(depth_m[valid].astype(np.float64)) - np.log(gt_m[valid].astype(np.float64))) ** 2)
    return float(np.sqrt(np.mean(d2[:max(1, int(len(d2) * RESIDUAL_KEEP))])))


def run_teacher(cfg: TeacherConfig, *, labelled: list[dict], unlabeled: list[dict], write_dir: Path,
                final_dir: str | os.PathLike, progress=None, num_threads: int | None = None) -> list[dict]:
    """Run the teacher once over every image and write its depth maps.

    labelled: rows with source, name, rgb, depth (the ground truth, for alignment and the
    residual); unlabeled: rows with source, name, rgb. Maps go to
    write_dir/SOURCE/depth/NAME.png and are recorded as final_dir/... (write_dir is the
    temporary folder that becomes final_dir). Returns data.TEACHER_COLUMNS rows.
    """
    model = TeacherModel(cfg, num_threads=num_threads)
    total, done, rows = len(labelled) + len(unlabeled), 0, []

    def write(row, depth):
        rel = Path(row["source"]) / "depth" / row["name"]
        write_depth_png(write_dir / rel, depth)
        return str(Path(final_dir) / rel)

    fits = []
    for row in labelled:  # first: the unlabeled images take the median of these fits
        raw, gt = model.predict(read_rgb(row["rgb"])), read_depth_m(row["depth"])
        fit = (1.0, 0.0) if cfg.output == "metric" else fit_inverse_depth(raw, gt)
        depth = None if fit is None else to_depth(raw, output=cfg.output, scale=fit[0], shift=fit[1])
        residual = math.inf if depth is None else log_residual(depth, gt)
        kept = residual <= cfg.max_residual
        out = {"source": row["source"], "name": row["name"], "kind": "labelled", "rgb": row["rgb"], "teacher": "",
               "scale": "" if fit is None else f"{fit[0]:.8g}", "shift": "" if fit is None else f"{fit[1]:.8g}",
               "residual": f"{residual:.6f}", "kept": int(kept)}
        if kept:
            fits.append(fit)
            out["teacher"] = write(row, depth)
        rows.append(out)
        done += 1
        if progress:
            progress(done, total)
    if unlabeled and cfg.output != "metric" and not fits:
        raise DataError(f"{cfg.model}: no labelled image kept (all residuals > teacher.max_residual="
                        f"{cfg.max_residual}), so the unlabeled images cannot be aligned")
    scale, shift = (1.0, 0.0) if cfg.output == "metric" else tuple(np.median(np.array(fits), axis=0))
    for row in unlabeled:
        raw = model.predict(read_rgb(row["rgb"]))
        rows.append({"source": row["source"], "name": row["name"], "kind": "unlabeled", "rgb": row["rgb"],
                     "teacher": write(row, to_depth(raw, output=cfg.output, scale=scale, shift=shift)),
                     "scale": f"{scale:.8g}", "shift": f"{shift:.8g}", "residual": "", "kept": 1})
        done += 1
        if progress:
            progress(done, total)
    return rows


def summarize(rows: list[dict], cfg: TeacherConfig) -> dict:
    """metrics/teacher.json: what ran, how well it matched the ground truth, what was dropped."""
    labelled = [r for r in rows if r["kind"] == "labelled"]
    residuals = [float(r["residual"]) for r in labelled if math.isfinite(float(r["residual"]))]
    kept = [r for r in labelled if int(r["kept"])]
    return {
        "model": cfg.model, "output": cfg.output, "labelled_images": len(labelled),
        "unlabeled_images": len(rows) - len(labelled), "dropped": len(labelled) - len(kept),
        "max_residual": cfg.max_residual,
        "median_residual": round(float(np.median(residuals)), 4) if residuals else None,
        "median_scale": float(np.median([float(r["scale"]) for r in kept])) if kept else None,
        "median_shift": float(np.median([float(r["shift"]) for r in kept])) if kept else None,
    }
