"""Stage check: every file and folder that the params name is there, where DVC runs the stages.

    python -m stages.check

dvc.yaml runs it first on every `dvc repro` and `dvc exp run` (always_changed; synthesize,
index@NAME and unlabeled@NAME depend on its data/prepared/checked.txt), so that a path that
points nowhere is one line before any stage works, not DVC's `[Errno 2] No such file or
directory` as it hashes a data folder. In DVC's copy of the project (`dvc exp run --temp`,
queued experiments) a data folder given relative and outside the project cannot be hashed
by DVC at all: then the line gives the absolute path to use (pipeline/core/paths.py).
Files that a stage opens itself (train.init_from, train.encoder_weights, package.inputs) follow
resolve_user_path's rule, so they are found from a copy as well.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pipeline.core.cli import run_stage, stage_parser
from pipeline.core.config import DVC_DEP_PATHS, SYNTHETIC_SOURCE, load_params, user_paths
from pipeline.core.errors import DataError
from pipeline.core.files import atomic_path
from pipeline.core.paths import CHECKED, check_dvc_dep, resolve_user_path
from pipeline.data.dataset import data_folder, unlabeled_rgb
from pipeline.results.submission import list_input_images

# Constant, so that the stages depending on it never rerun because of it: it only orders them.
NOTE = "The params' paths were checked where the stages ran (python -m stages.check).\n"


def main(argv: list[str] | None = None) -> None:
    args = stage_parser("check", __doc__).parse_args(argv)
    params = load_params(args.params)
    paths = user_paths(params)
    for key, path in paths.items():
        if key.startswith(DVC_DEP_PATHS):
            check_dvc_dep(key, path)
    # DVC hashes the data folders as written, from where it runs the stages: checked so
    for src in params.data.sources.values():
        if os.path.normpath(src.path) != SYNTHETIC_SOURCE:  # the synthesize stage makes that one
            data_folder(src.path)
    for src in params.data.unlabeled.values():
        unlabeled_rgb(src.path)
    for path, missing in (
        (params.train.init_from, "train.init_from model not found"),
        (paths.get("train.encoder_weights"), "train.encoder_weights file not found"),
        (params.teacher.model, "teacher model file not found (teacher.model)"),
    ):
        if path and not Path(resolve_user_path(path)).is_file():
            raise DataError(f"{path}: {missing}")
    if params.package.inputs:
        list_input_images(resolve_user_path(params.package.inputs))
    with atomic_path(CHECKED) as tmp:
        Path(tmp).write_text(NOTE)
    print(f"check: {len(paths)} path(s) in the params found -> {CHECKED}")


if __name__ == "__main__":
    sys.exit(run_stage(main))
