"""params.yaml -> frozen dataclasses, one per section.

Every knob of the pipeline lives in params.yaml. Loading is strict: an unknown or
duplicated key, a wrong type, a non-finite number or an out-of-range value is a
`ConfigError` naming the key, raised before any stage does work.

The defaults below are the one source of defaults: a key left out of a params file takes
its value here, and params.yaml lists every key with exactly these values
(tests/test_layout.py fails when the two drift apart).

YAML is read with YAML 1.2 floats: `1e-05` is a number, as DVC writes it for
`dvc exp run -S train.learning_rate=1e-5` (plain PyYAML would read a string).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.core.errors import ConfigError
from pipeline.core.overrides import apply, merge

DEFAULT_PARAMS = "params.yaml"
# The embedded procedural set, rendered by the `synthesize` stage.
SYNTHETIC_SOURCE = "data/synthetic"


def _range(lo=None, hi=None, *, lo_open=False, choices=None):
    return {"lo": lo, "hi": hi, "lo_open": lo_open, "choices": choices}


def knob(default=dataclasses.MISSING, **check):
    """A dataclass field carrying its validation rule in metadata."""
    if default is dataclasses.MISSING:
        return field(metadata={"check": _range(**check)})
    return field(default=default, metadata={"check": _range(**check)})


@dataclass(frozen=True)
class BaseConfig:
    seed: int = knob(42, lo=0)
    deterministic: bool = True


@dataclass(frozen=True)
class SyntheticConfig:
    count: int = knob(64, lo=2)
    height: int = knob(480, lo=32)
    width: int = knob(640, lo=32)
    invalid_fraction: float = knob(0.05, lo=0.0, hi=0.9)


@dataclass(frozen=True)
class SourceConfig:
    # A folder in the challenge layout (rgb/ + depth/), relative to the repo root or absolute.
    # dvc.yaml's `index@NAME` stage hashes it, so changed data reruns what follows.
    path: str = knob()
    weight: float = knob(1.0, lo=0.0, lo_open=True)  # 2.0 = its images are drawn twice as often


# `data.val`: the last val_fraction of every source (neighbouring frames never straddle the
# split), or the name of one source held out whole: a scene the model never trains on.
VAL_BLOCKS = "blocks"
ASPECTS = ("crop", "stretch")


@dataclass(frozen=True)
class DataConfig:
    # name -> folder; names label the split, the metrics and the MLflow datasets. Add one with
    # dvc exp run -S '+data.sources.tum.path=../shared/data/tum_fr1_xyz'
    sources: dict[str, SourceConfig] = field(
        default_factory=lambda: {"synthetic": SourceConfig(path=SYNTHETIC_SOURCE)}
    )
    # name -> folder of RGB only (rgb/NAME.png): images that train on the teacher's depth alone
    # (needs teacher.model); the teacher stage depends on each through `unlabeled@NAME`.
    unlabeled: dict[str, SourceConfig] = field(default_factory=dict)
    val: str = VAL_BLOCKS
    val_fraction: float = knob(0.2, lo=0.0, hi=0.9, lo_open=True)
    # Images of another aspect ratio than the device input (4:3): crop their centre to it, as
    # the challenge's own images look, or stretch them whole. Either way they are then resized.
    aspect: str = knob("crop", choices=ASPECTS)
    max_images: int = knob(0, lo=0)  # 0 = all; otherwise the first N names (quick runs)
    skip_empty_depth: bool = True
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass(frozen=True)
class LossConfig:
    silog_weight: float = knob(1.0, lo=0.0)
    silog_lambda: float = knob(0.85, lo=0.0, hi=1.0)
    grad_weight: float = knob(0.5, lo=0.0)
    l1_weight: float = knob(0.0, lo=0.0)
    berhu_weight: float = knob(0.0, lo=0.0)
    rmse_weight: float = knob(
        0.0, lo=0.0
    )  # the organizers' baseline loss (presets/organizers.yaml)
    # Scale-invariant log loss to the teacher's depth over all its pixels (needs teacher.model).
    distill_weight: float = knob(0.0, lo=0.0)
    # Gradient matching to the teacher's depth (its edges and shapes; scale-free like the above).
    distill_grad_weight: float = knob(0.0, lo=0.0)


@dataclass(frozen=True)
class AugmentConfig:
    flip: bool = True
    brightness: float = knob(0.2, lo=0.0, hi=1.0)
    contrast: float = knob(0.2, lo=0.0, hi=1.0)
    saturation: float = knob(0.2, lo=0.0, hi=1.0)
    hue: float = knob(0.02, lo=0.0, hi=0.5)
    crop_min_scale: float = knob(0.7, lo=0.1, hi=1.0)  # 1.0 disables crop-and-resize
    crop_prob: float = knob(0.5, lo=0.0, hi=1.0)


# `auto` in train.width_multiplier / height / width = the architecture's own value, so
# `-S train.arch=mai_baseline_unet` alone gives the organizers' baseline: 64 base filters
# (64 x width_multiplier) at 240x320.
AUTO = "auto"


@dataclass(frozen=True)
class ArchFacts:
    """What the params checks know of an architecture. The architectures are the model
    group's (pipeline/model/archs.py), which core may not import: archs.py hands them in
    with register_archs() when it is imported, as stages/, bench/ and the tests do first."""

    stride: int  # total stride: the working resolution must be divisible by it
    auto: dict  # train key -> the value `auto` stands for (width_multiplier, height, width)
    encoder: str = ""  # the encoder it builds on ("" = none: no pretrained weights to load)


_ARCHS: dict[str, ArchFacts] = {}


def register_archs(archs: dict[str, ArchFacts]) -> None:
    _ARCHS.clear()
    _ARCHS.update(archs)


def arch_facts() -> dict[str, ArchFacts]:
    """The registered architectures; an error to the programmer when none are."""
    if not _ARCHS:
        raise RuntimeError(
            "no architectures registered with pipeline.core.config: import "
            "pipeline.model.archs before loading params"
        )
    return _ARCHS


class _ArchNames:
    """train.arch's choices: the registered names, read when a value is checked."""

    def __contains__(self, name) -> bool:
        return name in arch_facts()

    def __iter__(self):
        return iter(arch_facts())


ARCH_CHOICES = _ArchNames()
# fp16: fp16 weights, fp32 compute; dynamic_int8: int8 weights; int8: full integer, float I/O.
PRECISIONS = ("fp32", "fp16", "dynamic_int8", "int8")
# export.target_runtime: a TFLite runtime version, compared number by number like TFLite's own
# CompareRuntimeVersion (2.4 < 2.4.0 < 2.12.0).
RUNTIME_VERSION = re.compile(r"[0-9]{1,4}(?:\.[0-9]{1,4}){1,2}")
# The challenge ran in early 2021 on TFLite 2.4/2.5: models must load there.
TARGET_RUNTIME = "2.4.0"
# export.output_resize: how the device graph brings the depth map up to 480x640. Both are the same
# bilinear interpolation; `separable` resizes columns then rows, each as one pass over many
# channels, which XNNPACK runs ~4x faster than one 1-channel RESIZE_BILINEAR (README), with the
# same outputs: the default.
OUTPUT_RESIZES = ("separable", "bilinear")
OUTPUT_RESIZE = OUTPUT_RESIZES[0]

# train.mixed_precision, a Keras dtype policy: float32 (bit-identical to runs before the knob),
# mixed_float16 (GPUs), mixed_bfloat16 (CPUs and TPUs with bfloat16 units), or auto =
# mixed_float16 when a GPU is visible, else float32. (Not "off": YAML reads that as false.)
PRECISION_AUTO = "auto"
MIXED_PRECISIONS = ("float32", PRECISION_AUTO, "mixed_float16", "mixed_bfloat16")


# train.encoder: keras.applications' encoders, and MobileNetV2 with DeepLab's channels (the
# DeepLab file's width 0.5); pipeline/model/networks/encoders.py builds them
ENCODERS = (
    "mobilenet_v2",
    "mobilenet_v1",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "mobilenet_v2_deeplab",
)
# train.encoder_weights: none (fresh), imagenet (keras.applications' own file, from its cache or
# the internet) or a file: a Keras weights .h5 of the same encoder and width, or a TFLite
# classifier of its family (pipeline/model/pretrained.py)
WEIGHT_SUFFIXES = (".h5", ".tflite")


class _EncoderWeights:
    """train.encoder_weights' choices: none, imagenet or the path of a weights file."""

    named = ("none", "imagenet")

    def __contains__(self, value) -> bool:
        return value in self.named or (isinstance(value, str) and value.endswith(WEIGHT_SUFFIXES))

    def __iter__(self):
        return iter((*self.named, *(f"PATH{suffix}" for suffix in WEIGHT_SUFFIXES)))


ENCODER_WEIGHTS = _EncoderWeights()
# train.encoder_batchnorm: what the batch norms loaded with pretrained weights do in training
# (docs/pretrained.md measured the three; refit at encoder_lr_scale 0.1 chosen on the training
# scenes' own validation blocks): frozen = inference mode, the pretrained function;
# trainable = batch statistics, as in a fresh network; refit = statistics re-estimated on
# training images first, then trainable
BATCHNORM_RULES = ("frozen", "trainable", "refit")


@dataclass(frozen=True)
class TrainConfig:
    arch: str = knob("mobile_unet", choices=ARCH_CHOICES)
    encoder: str = knob("mobilenet_v2", choices=ENCODERS)
    encoder_weights: str = knob("none", choices=ENCODER_WEIGHTS)
    # What a pretrained encoder's loaded batch norms do, and its learning rate as a multiple of
    # train.learning_rate (both act only when encoder_weights is not none).
    encoder_batchnorm: str = knob("refit", choices=BATCHNORM_RULES)
    encoder_lr_scale: float = knob(0.1, lo=0.0, lo_open=True)
    # A .keras model of the same architecture whose weights the run starts from (transfer:
    # pretrain on the synthetic scenes, fine-tune on real data); "" = fresh weights.
    init_from: str = ""
    # Encoder alpha (mai_baseline_unet: base filters = 64 x this); auto = the arch's own value.
    width_multiplier: float | str = knob(AUTO, lo=0.1, hi=2.0, lo_open=True)
    decoder_channels: int = knob(32, lo=4)
    height: int | str = knob(AUTO, lo=32)  # working resolution inside the graph; auto as above
    width: int | str = knob(AUTO, lo=32)
    min_depth: float = knob(
        0.1, lo=0.0, lo_open=True
    )  # metres; output clamp range (not mai_baseline_unet: ReLU)
    max_depth: float = knob(40.0, lo=0.0, lo_open=True)
    epochs: int = knob(20, lo=1)
    batch_size: int = knob(8, lo=1)
    learning_rate: float = knob(0.002, lo=0.0, lo_open=True)
    weight_decay: float = knob(1e-4, lo=0.0)
    warmup_epochs: float = knob(1.0, lo=0.0)
    min_lr_ratio: float = knob(0.05, lo=0.0, hi=1.0)
    # Weight averaging (Polyak): validate, select and ship an exponential moving average of
    # the weights with this momentum (Keras's optimizer use_ema); 0 = off.
    ema: float = knob(0.0, lo=0.0, hi=0.9999)
    steps_per_epoch: int = knob(0, lo=0)  # 0 = one pass over the train split
    cache_max_mb: int = knob(
        2048, lo=0
    )  # decoded train + val images kept in RAM, else decoded per epoch
    strategy: str = knob("default", choices=("default", "mirrored", "multi_worker"))
    # Keras dtype policy of training; the saved model and its export are float32 whatever it is.
    mixed_precision: str = knob("float32", choices=MIXED_PRECISIONS)
    jit_compile: bool = False  # XLA-compile the train step (model.compile(jit_compile=...))
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self):
        # `auto` is resolved here, the one place: every TrainConfig holds numbers, and
        # MLflow, hashes and readme see the values the model was built with. A
        # dataclasses.replace(cfg, arch=...) keeps these numbers; to get another arch's own
        # values, load the params with that arch (load_params(overrides=...)).
        facts = arch_facts().get(self.arch)  # an unknown name is the params check's to report
        for key, value in (facts.auto if facts else {}).items():
            if getattr(self, key) == AUTO:
                object.__setattr__(self, key, value)


# teacher.output: what the teacher model predicts. metric: depth in metres, used as is;
# relative: depth up to a scale that changes per image (PyDNet); inverse_relative: inverse
# depth up to an unknown scale and shift (MiDaS, DPT, Depth Anything). Both relative kinds
# are aligned to the ground truth per image (pipeline/teacher/alignment.py).
TEACHER_OUTPUTS = ("metric", "relative", "inverse_relative")
# teacher.normalize: what the teacher's input expects. none: RGB 0..255 (this pipeline's own
# models); unit: 0..1; imagenet: (x/255 - mean) / std; half: x/127.5 - 1 (DPT).
TEACHER_NORMALIZE = ("none", "unit", "imagenet", "half")
TEACHER_SUFFIXES = (".tflite", ".keras", ".onnx")
# Teacher files live here: dvc.yaml's teacher stage depends on the folder (a param-named file
# cannot be a dep while the default names none).
TEACHER_DIR = "models/teacher"


@dataclass(frozen=True)
class TeacherConfig:
    model: str = ""  # a file under models/teacher/ (.tflite, .keras or .onnx); "" = no teacher
    output: str = knob("metric", choices=TEACHER_OUTPUTS)
    output_index: int = knob(0, lo=0)  # which of the model's outputs is the depth (0 = the first)
    height: int = knob(0, lo=0)  # the teacher's input size; 0 = the model's own (fixed) input size
    width: int = knob(0, lo=0)
    normalize: str = knob("none", choices=TEACHER_NORMALIZE)
    # A map whose RMS log error to the ground truth (after alignment) exceeds this is dropped.
    max_residual: float = knob(0.3, lo=0.0, lo_open=True)
    fill_invalid: bool = False  # ground-truth holes take the teacher's depth in the training losses


@dataclass(frozen=True)
class ExportConfig:
    precision: str = knob("fp32", choices=PRECISIONS)
    height: int = knob(480, lo=32)  # the device input size fixed by the challenge
    width: int = knob(640, lo=32)
    representative_images: int = knob(16, lo=1)
    parity_images: int = knob(4, lo=1)
    # Largest si-RMSE increase of TFLite over Keras on the parity images before export fails.
    max_parity_drop: float = knob(0.01, lo=0.0)
    # Oldest TFLite runtime the model must run on; export fails if it needs a newer one.
    target_runtime: str = TARGET_RUNTIME
    # separable: bilinear by columns then rows, ~0.6 ms cheaper at 480x640;
    # bilinear: one RESIZE_BILINEAR op.
    output_resize: str = knob(OUTPUT_RESIZE, choices=OUTPUT_RESIZES)


@dataclass(frozen=True)
class BenchmarkConfig:
    threads: int = knob(4, lo=1)
    warmup: int = knob(2, lo=0)
    runs: int = knob(10, lo=1)
    device: str = "local"  # local | ssh://user@host[:port]
    ssh_python: str = "python3"


@dataclass(frozen=True)
class EvaluateConfig:
    panels: int = knob(3, lo=0)  # worst and best images rendered as pictures


@dataclass(frozen=True)
class PackageConfig:
    inputs: str = ""  # empty = the val split's RGB; else a folder of RGB PNGs
    extra_data: int = knob(
        0, choices=(0, 1)
    )  # 1 forces Extra Data; else it follows what trained the model
    # data.sources that are the challenge's own training set (the embedded synthetic set stands
    # in for it by default); any other source, a teacher, unlabeled data or pretrained or
    # initial weights make the readme say Extra Data 1
    # (pipeline/results/submission.py extra_data_used).
    challenge_sources: tuple[str, ...] = ("synthetic",)
    description: str = ""


@dataclass(frozen=True)
class TrackConfig:
    experiment: str = "mai-depth"
    force: bool = False  # log a new run even when one with the same dvc.lock and params exists


@dataclass(frozen=True)
class Params:
    base: BaseConfig = field(default_factory=BaseConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    package: PackageConfig = field(default_factory=PackageConfig)
    track: TrackConfig = field(default_factory=TrackConfig)


# Params that name a file or folder, for the checks and the path rule that all of them share
# (pipeline.core.paths.resolve_user_path). The data folders are DVC deps (dvc.yaml's
# ${item.path}): DVC hashes them itself, where it runs the stages; a stage opens the others.
DVC_DEP_PATHS = ("data.sources.", "data.unlabeled.")


def user_paths(params: Params) -> dict[str, str]:
    """{dotted key: path as written} of every param that names a file or folder and is set.
    A new path-valued param is added here (and opened through resolve_user_path)."""
    found = {f"data.sources.{name}.path": src.path for name, src in params.data.sources.items()}
    found.update(
        {f"data.unlabeled.{name}.path": src.path for name, src in params.data.unlabeled.items()}
    )
    found["train.init_from"] = params.train.init_from
    if params.train.encoder_weights not in ENCODER_WEIGHTS.named:  # a file, not none / imagenet
        found["train.encoder_weights"] = params.train.encoder_weights
    found["teacher.model"] = params.teacher.model  # always under models/teacher/ (_check_teacher)
    found["package.inputs"] = params.package.inputs
    return {key: path for key, path in found.items() if path}


# benchmark.device grammar: checked with the params, so a typo never costs a training run;
# every part later reaches an ssh command line, hence the strict character sets.
_USER = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}"
_HOSTNAME = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}))*"
_IPV6 = r"\[[0-9A-Fa-f:.]{2,45}\]"
_DEVICE_RE = re.compile(
    rf"ssh://(?P<user>{_USER})@(?P<host>{_HOSTNAME}|{_IPV6})(?::(?P<port>[0-9]{{1,5}}))?"
)
# A command name on PATH (python3, python3.11) or an absolute path of plain characters.
_PYTHON_RE = re.compile(r"(?:[A-Za-z0-9_][A-Za-z0-9_.+-]*|/[A-Za-z0-9_.+/-]+)")


@dataclass(frozen=True)
class SshTarget:
    user: str
    host: str
    port: int | None = None

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host.strip('[]')}"

    def __str__(self) -> str:
        return f"ssh://{self.user}@{self.host}" + (f":{self.port}" if self.port else "")


def is_remote(device: str) -> bool:
    return device.startswith("ssh://")


def parse_device(device: str) -> SshTarget:
    """'ssh://user@host[:port]' -> SshTarget; anything else is a ConfigError."""
    match = _DEVICE_RE.fullmatch(device)
    if not match:
        raise ConfigError(
            f"params: benchmark.device={device!r} is not 'local' or ssh://user@host[:port] "
            "(letters, digits, '.', '-', '_' only)"
        )
    port = match.group("port")
    if port is not None and not 1 <= int(port) <= 65535:
        raise ConfigError(
            f"params: benchmark.device={device!r}: port {port} is out of range 1..65535"
        )
    return SshTarget(match.group("user"), match.group("host"), int(port) if port else None)


def validate_python(python: str) -> str:
    if not _PYTHON_RE.fullmatch(python or ""):
        raise ConfigError(
            f"params: benchmark.ssh_python={python!r} must be a command name (python3) or an "
            "absolute path of plain characters"
        )
    return python


# Keys that were renamed: a params file that still has one gets told how to migrate.
MOVED_KEYS = {
    "data.source": (
        "data.source is now data.sources, a mapping of names to folders: write "
        "`sources: {NAME: {path: FOLDER}}` under data:, or dvc exp run "
        "-S '~data.sources.synthetic' -S '+data.sources.NAME.path=FOLDER'"
    ),
}
SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
MAY_BE_EMPTY = ("data.unlabeled",)  # name mappings whose default is no entry at all


def _check_value(key: str, value, rule: dict) -> None:
    if rule["choices"] is not None and value not in rule["choices"]:
        raise ConfigError(f"params: {key}={value!r} is not one of {list(rule['choices'])}")
    lo, hi = rule["lo"], rule["hi"]
    if lo is not None and (value <= lo if rule["lo_open"] else value < lo):
        op = ">" if rule["lo_open"] else ">="
        raise ConfigError(f"params: {key}={value!r} is out of range (must be {op} {lo})")
    if hi is not None and value > hi:
        raise ConfigError(f"params: {key}={value!r} is out of range (must be <= {hi})")


def _allows_auto(typ) -> bool:
    return typing.get_origin(typ) in (typing.Union, types.UnionType) and str in typing.get_args(typ)


def _coerce(key: str, value, typ):
    if _allows_auto(typ):  # a number or `auto`
        number = next(t for t in typing.get_args(typ) if t is not str)
        if value == AUTO:
            return value
        try:
            return _coerce(key, value, number)
        except ConfigError:
            raise ConfigError(
                f"params: {key} must be {number.__name__} or {AUTO!r}, got {value!r}"
            ) from None
    if dataclasses.is_dataclass(typ):
        return _build(typ, value, key)
    if typing.get_origin(typ) is dict:  # name -> section, e.g. data.sources
        item_type = typing.get_args(typ)[1]
        if value is None and key in MAY_BE_EMPTY:
            value = {}
        if not isinstance(value, dict) or (not value and key not in MAY_BE_EMPTY):
            raise ConfigError(
                f"params: {key} must be a mapping of names to {{path: ...}}, got {value!r}"
            )
        for name in value:
            if not isinstance(name, str) or not SOURCE_NAME.fullmatch(name):
                raise ConfigError(
                    f"params: {key}.{name} is not a valid name (letters, digits, '_', '-')"
                )
        return {name: _build(item_type, item, f"{key}.{name}") for name, item in value.items()}
    if typing.get_origin(typ) is tuple:  # a YAML list of names, e.g. package.challenge_sources
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"params: {key} must be a list of names, got {value!r}")
        return tuple(value)
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):  # NaN would pass every range check below
                raise ConfigError(f"params: {key}={value!r} must be a finite number")
            return float(value)
    elif typ is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"params: {key} must be {typ.__name__}, got {type(value).__name__} {value!r}")


def _build(cls, raw, prefix: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"params: {prefix or 'params'} must be a mapping of keys, got {type(raw).__name__}"
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        if where in MOVED_KEYS:
            raise ConfigError(f"params: {MOVED_KEYS[where]}")
        raise ConfigError(f"params: unknown key {where} (known: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"params: {key} is missing")
            continue  # defaults fill in; params.yaml lists them all anyway
        value = _coerce(key, raw[name], hints[name])
        rule = f.metadata.get("check")
        if rule and not (value == AUTO and _allows_auto(hints[name])):
            _check_value(key, value, rule)
        kwargs[name] = value
    return cls(**kwargs)


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats (`1e-05`) and duplicate keys as errors: a second
    `train:` block would otherwise silently replace the first one wholesale."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_yaml(path: Path):
    try:
        raw = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
        if raw is not None and not isinstance(raw, dict):
            raise ConfigError(
                f"{path}: expected sections (base:, data:, train:, ...), got a {type(raw).__name__}"
            )
        return raw
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except yaml.YAMLError as err:
        # PyYAML's first line is the context ("while parsing ..."); the problem and its
        # line are what a user needs.
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML ({where}{problem})") from None


def load_params(
    path: str | os.PathLike = DEFAULT_PARAMS, *, presets=(), overrides: dict | None = None, args=()
) -> Params:
    """params.yaml, then each preset file (partial params) and `overrides` merged on top,
    then `args`, `dvc exp run -S` arguments applied as DVC applies them."""
    raw = read_yaml(Path(path)) or {}
    for preset in presets:
        raw = merge(raw, read_yaml(Path(preset)) or {})
    if overrides:
        raw = merge(raw, overrides)
    if args:
        raw = apply(raw, args)
    return build_params(raw)


def build_params(raw: dict) -> Params:
    """Nested params (as params.yaml holds them) -> Params, with every check of load_params."""
    params = _build(Params, raw, "")
    t = params.train
    if t.min_depth >= t.max_depth:
        raise ConfigError(
            f"params: train.min_depth={t.min_depth} must be < train.max_depth={t.max_depth}"
        )
    d = params.data
    if d.val != VAL_BLOCKS:
        if d.val not in d.sources:
            raise ConfigError(
                f"params: data.val={d.val!r} is not {VAL_BLOCKS!r} or one of data.sources "
                f"({', '.join(d.sources)})"
            )
        if len(d.sources) < 2:
            raise ConfigError(
                f"params: data.val={d.val!r} holds out the only source; add a source to train on"
            )
    _check_teacher(params)
    if t.encoder_weights != "none":
        if not arch_facts()[t.arch].encoder:
            raise ConfigError(
                f"params: train.encoder_weights={t.encoder_weights!r}: {t.arch} has no encoder "
                "to start from pretrained weights"
            )
        if t.init_from:
            raise ConfigError(
                f"params: train.encoder_weights={t.encoder_weights!r} and train.init_from "
                f"{t.init_from!r}: the init_from model's weights replace the encoder's; set one"
            )
    stride = arch_facts()[t.arch].stride
    for key, size in (("train.height", t.height), ("train.width", t.width)):
        if size % stride:
            raise ConfigError(f"params: {key}={size} must be divisible by {stride} for {t.arch}")
    if not RUNTIME_VERSION.fullmatch(params.export.target_runtime):
        raise ConfigError(
            f"params: export.target_runtime={params.export.target_runtime!r} is not a "
            "dotted version like 2.4.0"
        )
    if params.benchmark.device != "local":
        # Checked here, not only in the benchmark stage: a typo must not cost a training run.
        parse_device(params.benchmark.device)
        validate_python(params.benchmark.ssh_python)
    return params


def _check_teacher(params: Params) -> None:
    """What needs a teacher has one, and the teacher's file is where dvc.yaml looks."""
    d, tc = params.data, params.teacher
    both = sorted(set(d.unlabeled) & set(d.sources))
    if both:
        raise ConfigError(
            f"params: data.unlabeled.{both[0]} has the name of a data.sources entry; use another "
            "name"
        )
    if not tc.model:
        needs = [
            key
            for key, used in (
                ("data.unlabeled", bool(d.unlabeled)),
                ("train.loss.distill_weight", params.train.loss.distill_weight > 0),
                ("train.loss.distill_grad_weight", params.train.loss.distill_grad_weight > 0),
                ("teacher.fill_invalid", tc.fill_invalid),
            )
            if used
        ]
        if needs:
            raise ConfigError(
                f"params: {needs[0]} needs a teacher; set teacher.model to a file under "
                f"{TEACHER_DIR}/"
            )
        return
    if Path(tc.model).suffix not in TEACHER_SUFFIXES:
        raise ConfigError(
            f"params: teacher.model={tc.model!r} must end in {', '.join(TEACHER_SUFFIXES)}"
        )
    if Path(TEACHER_DIR) not in Path(os.path.normpath(tc.model)).parents:
        raise ConfigError(
            f"params: teacher.model={tc.model!r} must be a file under {TEACHER_DIR}/ "
            "(the folder the teacher stage depends on)"
        )
    if (tc.height == 0) != (tc.width == 0):
        raise ConfigError(
            f"params: teacher.height={tc.height} and teacher.width={tc.width}: set both, or 0 for "
            "both"
        )


def as_flat_dict(params: Params) -> dict[str, object]:
    """{'train.loss.silog_weight': 1.0, ...}: for MLflow params and hashes."""
    out: dict[str, object] = {}

    def walk(obj, prefix):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            key = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(value):
                walk(value, key + ".")
            elif isinstance(value, dict):
                for name, item in value.items():
                    walk(item, f"{key}.{name}.")
            else:
                out[key] = value

    walk(params, "")
    return out


def params_hash(params: Params, sections: typing.Iterable[str] | None = None) -> str:
    """Short sha256 of the flat params (of `sections` only, when given)."""
    flat = as_flat_dict(params)
    if sections is not None:
        sections = tuple(sections)
        flat = {k: v for k, v in flat.items() if k.split(".")[0] in sections}
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:12]
