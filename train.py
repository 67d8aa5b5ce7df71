"""Train the paper's stages on subject-independent folds.

    python train.py stage=fusion fold=3 experiment=demo
    python train.py experiment=paper_rml_loso data.root=/data/rml stage=all fold=all trainer=gpu

Follow it: configs/train.yaml -> runner/loop.py (run) -> runner/stage.py (train_stage, fit_and_test)
-> datamodules/datamodule.py (data) and lightning_modules/{audio,visual,fusion}_module.py (loss).
"""

import os
import sys
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig

from runner.command_line import check_choices, with_corpus_experiment, with_test_corpora
from runner.expected_errors import one_line_errors
from runner.interrupt import stopped_by_signals
from runner.unread_keys import check_overrides

os.environ.setdefault("AVER_ROOT", str(Path(__file__).resolve().parent))
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
# a resumed fold's checkpoints folder holds its last.ckpt; a fresh one is emptied first (runner/resume.py)
warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
# configs/hydra/launcher/submitit_*.yaml carry the plugin's names on purpose (hydra/launcher=submitit_slurm
# gets the project's settings, checked against the plugin's schema); Hydra 1.3 notes that as deprecated
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/submitit_\w+' is validated against ConfigStore schema")


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float:
    """Returns the validation objective (``objective.metric``) of the last stage, averaged over folds
    (and seeds): what Hydra multirun sweepers optimise. Test metrics are never returned."""
    from runner.host_memory import keep_freed_memory
    from runner.loop import run

    if cfg.keep_freed_memory:
        keep_freed_memory()
    with one_line_errors():
        summaries = run(cfg)
    return summaries[list(summaries)[-1]]["objective"]["mean"]


if __name__ == "__main__":
    config_dir = Path(__file__).resolve().parent / "configs"
    sys.argv[1:] = with_test_corpora(sys.argv[1:])  # +test_data=[emodb,ravdess]: several test corpora
    with one_line_errors():  # before Hydra, whose own message for an unknown config name has no command
        check_choices(sys.argv[1:], config_dir)
    sys.argv[1:] = with_corpus_experiment(sys.argv[1:], config_dir)  # data=ravdess runs experiment=ravdess_audio
    with one_line_errors():
        check_overrides(sys.argv[1:], config_dir)
    with stopped_by_signals():  # Ctrl-C, SIGTERM: one line, status 130 or 143; rerunning resumes
        main()
