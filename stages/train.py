"""Stage train: fit the core depth model (resumable) and save the best epoch's weights."""

from __future__ import annotations

import sys

from pipeline.core.cli import run_stage, stage_code_files, stage_parser, timed
from pipeline.core.config import load_params
from pipeline.core.files import write_json
from pipeline.core.paths import (
    CHECKPOINTS,
    HISTORY_CSV,
    KERAS_MODEL,
    SPLIT_CSV,
    TEACHER_INDEX,
    metrics_json,
)
from pipeline.data.dataset import check_split_sources, check_teacher_unlabeled
from pipeline.model.cluster import read_tf_config

METRICS = metrics_json("train")


def main(argv: list[str] | None = None) -> None:
    args = stage_parser("train", __doc__).parse_args(argv)
    params = load_params(args.params)
    if params.train.strategy == "multi_worker":
        read_tf_config()  # the cluster is checked with the params, before TensorFlow loads
    # A split or teacher maps made for other sources (this stage run alone after they changed)
    check_split_sources(
        SPLIT_CSV,
        {name: src.path for name, src in params.data.sources.items()},
        stage="train",
        val=params.data.val,
    )
    if params.teacher.model:
        check_teacher_unlabeled(
            TEACHER_INDEX,
            {name: src.path for name, src in params.data.unlabeled.items()},
            stage="train",
        )
    # TensorFlow loads only after the params are known to be good.
    from pipeline.model.training import resume_fingerprint, train, writes_outputs

    fingerprint = resume_fingerprint(
        params, SPLIT_CSV, stage_code_files("train"), teacher_csv=TEACHER_INDEX
    )
    summary = train(
        params,
        split_csv=SPLIT_CSV,
        model_out=KERAS_MODEL,
        ckpt_dir=CHECKPOINTS,
        history_csv=HISTORY_CSV,
        fingerprint=fingerprint,
        teacher_csv=TEACHER_INDEX,
    )
    if not writes_outputs(params.train.strategy):  # another worker of a cluster than the chief
        print(
            f"train: best val si-RMSE {summary['best_val_si_rmse']:.4f}, weights sha256 "
            f"{summary['weights_sha256'][:16]} (the chief's are the same)"
        )
        return
    write_json(METRICS, timed(summary))
    print(
        f"train: best val si-RMSE {summary['best_val_si_rmse']:.4f} at epoch "
        f"{summary['best_epoch']} -> {KERAS_MODEL}"
    )


if __name__ == "__main__":
    sys.exit(run_stage(main))
