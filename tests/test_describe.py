"""One describer (pipeline/results/describe.py) behind the readme, the MLflow run and the
fact sheet: each says what the params say, and all three follow a change of them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from conftest import REPO
from pipeline.core.config import OUTPUT_RESIZES, as_flat_dict, load_params
from pipeline.model.archs import ARCHS
from pipeline.results.describe import OUTPUT_RESIZE_WORDS, describe
from pipeline.results.submission import describe_run
from pipeline.tracking.factsheet import render
from pipeline.tracking.runs import run_description

VARIANTS = [
    {},
    {"export": {"output_resize": "bilinear", "precision": "int8"}},
    {"train": {"arch": "mai_baseline_unet"}},
    {
        "train": {"arch": "litedepth", "encoder_weights": "imagenet", "height": 192, "width": 256},
        "data": {"sources": {"tum": {"path": "../t"}}},
    },
    {"train": {"height": 480, "width": 640}},
    {
        "train": {
            "encoder": "mobilenet_v1",
            "width_multiplier": 0.5,
            "encoder_weights": "../shared/encoders/mobilenet_v1_0.5_160_quant.tflite",
            "encoder_batchnorm": "refit",
            "encoder_lr_scale": 0.3,
        }
    },
]


def three_outputs(params) -> dict[str, str]:
    """readme.txt's description, the MLflow run's description and the fact sheet of a run
    logged with these params (MLflow keeps str() of each value)."""
    logged = {key: str(value) for key, value in as_flat_dict(params).items()}
    run = SimpleNamespace(
        data=SimpleNamespace(params=logged, tags={}), info=SimpleNamespace(run_name="r", run_id="0")
    )
    return {
        "readme": describe_run(params, None),
        "mlflow": run_description(params, {}, []),
        "factsheet": render(run, {}),
    }


@pytest.mark.parametrize("overrides", VARIANTS, ids=str)
def test_readme_mlflow_and_fact_sheet_say_the_same(overrides):
    params = load_params(REPO / "params.yaml", overrides=overrides)
    method = describe(params)
    for name, text in three_outputs(params).items():
        for fact in (method.network, method.geometry, method.precision, *method.extra_data):
            assert fact.lower() in text.lower(), (name, fact)
    assert method.output in three_outputs(params)["factsheet"]


def test_all_three_follow_the_output_resize():
    texts = {}
    for resize in OUTPUT_RESIZES:
        params = load_params(REPO / "params.yaml", overrides={"export": {"output_resize": resize}})
        texts[resize] = three_outputs(params)
    for name in ("readme", "mlflow", "factsheet"):
        assert "separable bilinear resize out" in texts["separable"][name], name
        bilinear = texts["bilinear"][name]
        assert "separable" not in bilinear and "; bilinear resize out" in bilinear, name
    assert set(OUTPUT_RESIZE_WORDS) == set(OUTPUT_RESIZES)


def test_every_architecture_is_described_from_its_registry_line():
    for name, arch in ARCHS.items():
        params = load_params(REPO / "params.yaml", overrides={"train": {"arch": name}})
        method = describe(params)
        assert method.network.startswith(f"{name}: ") and arch.about in method.network
        assert ("decoder_channels" in method.network) == arch.decoder_channels
        assert ("sigmoid-bounded" in method.output) == arch.bounded


def test_the_encoder_start_is_said_by_all_three_and_the_fact_sheet_names_its_file():
    """Which weights started the encoder, how its batch norms trained and at what learning rate
    (the readme.txt, MLflow and the fact sheet), Extra Data 1 with the file's name, and the fact
    sheet's digest of the file from metrics/train.json."""
    from pipeline.results.submission import extra_data_flag

    file = "../shared/encoders/mobilenet_v1_0.5_160_quant.tflite"
    params = load_params(REPO / "params.yaml", overrides=VARIANTS[-1])
    start = (
        "mobilenet_v1 encoder x0.5 (pretrained: mobilenet_v1_0.5_160_quant.tflite, batch norms "
        "refit, learning rate x0.3)"
    )
    for name, text in three_outputs(params).items():
        assert start in text, name
        assert "encoder weights mobilenet_v1_0.5_160_quant.tflite" in text, name
    assert extra_data_flag(params) == 1
    logged = {key: str(value) for key, value in as_flat_dict(params).items()}
    run = SimpleNamespace(
        data=SimpleNamespace(params=logged, tags={}), info=SimpleNamespace(run_name="r", run_id="0")
    )
    train = {"encoder": {"weights": file, "sha256": "ab" * 32, "layers_loaded": 54}}
    assert "(file sha256 `abababababababab`, 54 layers)" in render(run, {"train": train})
    assert (
        "Encoder start: from scratch\n"
        in three_outputs(load_params(REPO / "params.yaml"))["factsheet"]
    )
