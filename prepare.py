"""Preprocess a corpus (VAD, MFCC images, face tracks) into the clip cache that training reads, and print the report.

    python prepare.py data=ravdess data.root=../shared/data/ravdess-speech-16k
    python prepare.py experiment=paper_rml_loso data.root=/data/rml

It takes ``train.py``'s command line (configs/prepare.yaml composes configs/train.yaml; ``data=<corpus>`` runs
the corpus's experiment as in training) and prepares ``data`` (and ``test_data`` of ``cv=cross_corpus``) with
the settings that training will read, so ``train.py`` with the same arguments finds the cache ready.
"""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from datamodules.preprocess import format_report, plot_vad_spans, sample_across
from runner.command_line import check_choices, with_corpus_experiment, with_test_corpora
from runner.expected_errors import one_line_errors
from runner.interrupt import stopped_by_signals
from runner.unread_keys import check_overrides

os.environ.setdefault("AVER_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="configs", config_name="prepare")
def main(cfg: DictConfig) -> None:
    datamodule = hydra.utils.instantiate(cfg.data)
    for corpus, prepared in datamodule.prepared_corpora():  # several with data=multi or cv=cross_corpus
        if not prepared.report["clips_processed_now"]:
            print(format_report(prepared.report))
        print(f"cache: {prepared.report['cache']} (report.json there)")
        if cfg.vad_plots and corpus.preprocess_cfg["audio"]:
            out = Path(prepared.report["cache"]) / "vad_plots"
            sample = sample_across(prepared.clips, cfg.vad_plots)
            plot_vad_spans(sample, corpus.preprocess_cfg, out)
            print(f"VAD plots of {len(sample)} clips of {corpus.name} across classes and subjects: {out}")


if __name__ == "__main__":
    config_dir = Path(__file__).resolve().parent / "configs"
    sys.argv[1:] = with_test_corpora(sys.argv[1:])  # +test_data=[emodb,ravdess]: several test corpora
    with one_line_errors():
        check_choices(sys.argv[1:], config_dir)
    sys.argv[1:] = with_corpus_experiment(sys.argv[1:], config_dir)
    with one_line_errors():
        check_overrides(sys.argv[1:], config_dir, config_name="prepare", program="prepare.py")
    with stopped_by_signals():  # Ctrl-C, SIGTERM: one line, status 130 or 143; rerunning resumes
        main()
