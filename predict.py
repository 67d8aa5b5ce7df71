"""Predict the emotions in new recordings with a trained run: per segment, per file, and a timeline figure.

    python predict.py input=clip.mp4 run=outputs/demo/loso                 # every fold's model, averaged
    python predict.py input=recordings/ run=outputs/ravdess/kfold stage=audio fold=3

Follow it: configs/predict.yaml -> runner/prediction/inference.py (predict) -> datamodules/recordings.py
(the training pipeline's steps on each file) and tracking/plots.py (timeline_figure).
"""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

from runner.expected_errors import one_line_errors

os.environ.setdefault("AVER_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="configs", config_name="predict")
def main(cfg: DictConfig) -> None:
    from runner.prediction import predict

    with one_line_errors():
        predict(cfg)


if __name__ == "__main__":
    main()
