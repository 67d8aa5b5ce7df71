"""Preprocess a corpus (VAD, MFCC images, face tracks) into the clip cache and print the report.

python prepare.py data=ravdess data.root=../shared/data/ravdess-speech-16k
"""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

from datamodules.preprocess import plot_vad_spans, sample_across

os.environ.setdefault("AVER_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="configs", config_name="prepare")
def main(cfg: DictConfig) -> None:
    datamodule = hydra.utils.instantiate(cfg.data)
    prepared = datamodule.prepare_data()
    print(f"report: {prepared.report['cache']}/report.json")
    if cfg.vad_plots and datamodule.preprocess_cfg["audio"]:
        out = Path(prepared.report["cache"]) / "vad_plots"
        sample = sample_across(prepared.clips, cfg.vad_plots)
        plot_vad_spans(sample, datamodule.preprocess_cfg, out)
        print(f"VAD plots of {len(sample)} clips across classes and subjects: {out}")


if __name__ == "__main__":
    main()
