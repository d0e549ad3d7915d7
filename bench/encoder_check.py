"""The shared TFLite classifiers, rebuilt in Keras by the loader, against the TFLite itself.

    .venv/bin/python -m bench.encoder_check

For every ImageNet classifier in ../shared/encoders (bench.common.CLASSIFIERS),
the encoder the loader (pipeline.model.pretrained) builds from it plus the file's own head
classify the three test photographs, and so does the TFLite; one line per photo: the top-1
label and probability of each, and how well their 1001 (or 1000) probabilities agree.
"""

from __future__ import annotations

import argparse

import numpy as np

from bench.common import CLASSIFIERS, ENCODER_FILES

PHOTOS = ("grace_hopper.bmp", "cat.bmp", "parrot.jpg")


def main() -> None:
    argparse.ArgumentParser(
        description=__doc__.split("\n\n", 2)[-1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).parse_args()
    from ai_edge_litert.interpreter import Interpreter
    from PIL import Image

    from pipeline.model.pretrained import classifier
    from pipeline.model.weight_files import tflite_input, tflite_logits

    labels = (ENCODER_FILES / "test_images/imagenet_labels.txt").read_text().splitlines()
    print(f"{'file':<42} {'photo':<17} {'Keras top-1':<28} {'TFLite top-1':<28} {'corr':>5}")
    for file, (kind, width) in CLASSIFIERS.items():
        path = ENCODER_FILES / file
        size = int(Interpreter(model_path=str(path)).get_input_details()[0]["shape"][1])
        model = classifier(str(path), kind, width, size)
        for photo in PHOTOS:
            image = Image.open(ENCODER_FILES / "test_images" / photo).convert("RGB")
            q, real = tflite_input(
                str(path), np.asarray(image.resize((size, size), Image.BILINEAR))
            )
            logits = np.asarray(model(real)).reshape(-1)
            ours = np.exp(logits - logits.max())
            ours /= ours.sum()
            theirs = tflite_logits(str(path), q)
            offset = 1 if len(ours) == 1000 else 0  # keras' 1000 classes have no background
            said = [
                f"{labels[int(p.argmax()) + offset][:20]} {p.max():.2f}" for p in (ours, theirs)
            ]
            print(
                f"{file:<42} {photo:<17} {said[0]:<28} {said[1]:<28} "
                f"{np.corrcoef(ours, theirs)[0, 1]:>5.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
