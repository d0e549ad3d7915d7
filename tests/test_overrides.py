"""pipeline.core.overrides: the `-S key=VALUE` syntax, checked against DVC's own code.

DVC's apply_overrides (dvc/utils/hydra.py, what `dvc exp run -S` calls) runs here on a copy
of params.yaml: what this module writes and applies must be what DVC reads and applies.
"""

from __future__ import annotations

import random
import shutil

import pytest
import yaml
from dvc.exceptions import InvalidArgumentError
from dvc.utils.hydra import apply_overrides

from conftest import REPO
from pipeline.core.config import as_flat_dict, load_params, read_yaml
from pipeline.core.errors import ConfigError
from pipeline.core.overrides import ADD, DELETE, apply, diff_args, format_arg, merge, parse

TRICKY_VALUES = [
    "mobile_unet",
    "auto",
    "../shared/data/tum_fr1_xyz",
    "/abs/p-a_th.x",
    "2.4.0",
    "",
    " lead",
    "a b",
    "a, b",
    "a,b",
    "x=y",
    "x:y",
    "it's",
    "back\\slash",
    "ends\\",
    "quote\\'d",
    'say "hi"',
    "héllo",
    "a#b",
    "01",
    "1.5",
    "1e-5",
    ".5",
    "1_0",
    "inf",
    "nan",
    "true",
    "False",
    "null",
    "None",
    "yes",
    "off",
    "~",
    "[a]",
    "{a: 1}",
    "tab\there",
    "two\nlines",
    0,
    7,
    -3,
    0.35,
    2e-05,
    1.0,
    1e300,
    True,
    False,
    None,
    [],
    ["a", "b c"],
    [192, 256],
    ("synthetic",),
    {"path": "x", "weight": 2.0},
]


def dvc_value(arg: str):
    """The value DVC reads from one -S argument (its Hydra parser), typed."""
    from dvc.utils.hydra import to_hydra_overrides

    return to_hydra_overrides([arg])[0].value()


@pytest.mark.parametrize("value", TRICKY_VALUES, ids=repr)
def test_a_formatted_value_reads_back_unchanged_in_dvc(value):
    arg = format_arg("package.description", value)
    read = dvc_value(arg)
    expected = list(value) if isinstance(value, tuple) else value
    assert read == expected and type(read) is type(expected), arg
    assert parse(arg).value == expected


def test_random_strings_read_back_unchanged_in_dvc():
    rng = random.Random(7)
    alphabet = "ab09 _-.,/:=@#'\"\\[]{}()~+*$%!?\t"
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        if "${" in text:
            continue
        assert dvc_value(format_arg("k", text)) == text, format_arg("k", text)


def test_what_dvc_cannot_take_is_a_one_line_error():
    with pytest.raises(ConfigError, match=r"interpolation"):
        format_arg("package.description", "cost ${x}")
    with pytest.raises(ConfigError, match=r"not a dotted params key"):
        format_arg("train epochs", 3)
    with pytest.raises(ConfigError, match=r"-S 'train.epochs=1,2' is a sweep; .* `make sweep`"):
        parse("train.epochs=1,2")
    with pytest.raises(ConfigError, match=r"^-S 'train.epochs=\[1': not an override DVC "):
        parse("train.epochs=[1")
    assert parse("~data.sources.synthetic").op == DELETE and parse("+x.y=1").op == ADD


@pytest.fixture
def params_copy(tmp_path):
    path = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", path)
    return path


ARG_SETS = [
    ["~data.sources.synthetic", "+data.sources.tum.path=../shared/data/tum", "train.epochs=3"],
    ["train.learning_rate=1e-05", "train.height=192", "train.width=256", "export.precision=int8"],
    [
        "+data.sources.b.path=x",
        "+data.sources.b.weight=2.5",
        "data.val=b",
        "package.challenge_sources=[b]",
    ],
    [
        "~data.sources.synthetic.weight",
        "package.description='a, b: it\\'s'",
        "train.augment.flip=false",
    ],
    [
        "+data.unlabeled.web.path=w",
        "teacher.model=models/teacher/t.onnx",
        "++train.ema=0.5",
        "++data.unlabeled.x.path=y",
    ],
]


@pytest.mark.parametrize("args", ARG_SETS, ids=lambda a: a[0])
def test_apply_is_what_dvc_does_to_params_yaml(args, params_copy):
    apply_overrides(params_copy, args)
    assert read_yaml(params_copy) == apply(read_yaml(REPO / "params.yaml"), args)
    assert load_params(params_copy) == load_params(REPO / "params.yaml", args=args)


@pytest.mark.parametrize(
    "arg, message",
    [
        ("train.epoch=3", "params have no train.epoch to set (+train.epoch=... adds"),
        ("data.sources.tum.path=x", "params have no data.sources.tum"),
        ("+train.epochs=3", "train.epochs exists already; set it without '+'"),
        ("~data.sources.nothere", "params have no data.sources.nothere to delete"),
        ("~nothere.x", "params have no nothere"),
    ],
)
def test_apply_refuses_what_dvc_refuses(arg, message, params_copy):
    with pytest.raises(InvalidArgumentError):
        apply_overrides(params_copy, [arg])
    with pytest.raises(ConfigError) as err:
        apply(read_yaml(REPO / "params.yaml"), [arg])
    assert message in str(err.value) and "\n" not in str(err.value)


def presets():
    return sorted((REPO / "presets").glob("*.yaml"))


@pytest.mark.parametrize("preset", presets(), ids=lambda p: p.name)
def test_a_preset_as_arguments_gives_the_presets_params_in_dvc(preset, params_copy):
    base = read_yaml(REPO / "params.yaml")
    args = diff_args(base, merge(base, read_yaml(preset)))
    apply_overrides(params_copy, args)
    assert load_params(params_copy) == load_params(REPO / "params.yaml", presets=[preset])


def test_preset_arguments_delete_add_and_replace_sources_whole(tmp_path, params_copy):
    base = read_yaml(REPO / "params.yaml")
    base["data"]["sources"]["synthetic"]["weight"] = 2.0  # the preset's has none: back to 1.0
    params_copy.write_text(yaml.safe_dump(base))
    sources = {"synthetic": {"path": "data/synthetic"}, "tum": {"path": "../t", "weight": 3.0}}
    preset = {
        "data": {"sources": sources, "val": "tum"},
        "train": {"epochs": 20, "arch": "fastdepth"},
    }
    args = diff_args(base, merge(base, preset))
    assert args == [
        "~data.sources.synthetic.weight",
        "data.val=tum",
        "train.arch=fastdepth",
        "+data.sources.tum.path=../t",
        "+data.sources.tum.weight=3.0",
    ]  # no epochs
    (tmp_path / "preset.yaml").write_text(yaml.safe_dump(preset))
    expected = load_params(params_copy, presets=[tmp_path / "preset.yaml"])
    apply_overrides(params_copy, args)
    assert as_flat_dict(load_params(params_copy)) == as_flat_dict(expected)
    assert expected.data.sources["synthetic"].weight == 1.0
