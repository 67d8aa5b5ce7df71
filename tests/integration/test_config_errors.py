"""Configuration mistakes stop ``train.py`` with one line (the value, what is allowed, a command that works)
instead of a traceback, before any fold folder or demo corpus is made."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from runner.command_line import ConfigError, check_choices, train_command
from tests.helpers.configs import small_demo_overrides
from tests.helpers.paths import REPO
from tests.helpers.processes import failing_train_py, one_line


@pytest.fixture
def fresh(tmp_path) -> list[str]:
    """Output and data folders of their own, to check that a failed run leaves nothing in them."""
    return [f"paths.output_dir={tmp_path / 'outputs'}", f"paths.data_dir={tmp_path / 'data'}", "logger=none"]


def assert_nothing_made(tmp_path: Path) -> None:
    assert not (tmp_path / "data").exists(), "the demo corpus was generated"
    made = [p for p in (tmp_path / "outputs").rglob("*") if "_hydra" not in p.parts]  # Hydra's own run record
    assert not made, f"a failed run left {made}"


CASES = {
    "unknown stage": (
        ["stage=audoi"],
        "stage=audoi: no such stage; choose one of audio, visual, fusion, all, baseline; "
        "try: python train.py stage=audio",
    ),
    "unknown experiment": (
        ["experiment=paper_rml"],
        "experiment=paper_rml: configs/experiment/ has no paper_rml.yaml; "
        "choose one of ck_visual, demo, emodb_audio, paper_enterface_kfold, paper_enterface_loso, paper_ravdess_kfold, "
        "paper_rml_kfold, paper_rml_loso, ravdess_audio, urdu_audio; try: python train.py experiment=paper_rml_loso",
    ),
    "unknown corpus": (
        ["data=ravdes", "data.root=/corpus"],
        "data=ravdes: configs/data/ has no ravdes.yaml; choose one "
        "of ck, demo, emodb, enterface, folder, manifest, multi, pattern, ravdess, rml; try: python train.py data=ravdess data.root=/corpus",
    ),
    "root not given": (
        ["data=rml"],
        "data.root is not set: data=rml reads its clips from it; try: python train.py "
        "data=rml experiment=paper_rml_loso",
    ),
    "root that does not exist": (
        ["data=emodb", "data.root=/no/such/emodb"],
        "data.root=/no/such/emodb: no such folder "
        "(data=emodb); try: python train.py data=emodb experiment=emodb_audio "
        "data.root=/path/to/emodb",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_a_mistake_is_one_line_with_a_command_that_works(case, fresh, tmp_path):
    args, expected = CASES[case]
    line = one_line(failing_train_py([*args, *fresh]))
    assert line.startswith(f"error: {expected}"), line
    assert_nothing_made(tmp_path)


def test_a_root_without_clips_of_its_corpus(fresh, tmp_path):
    (tmp_path / "empty" / "s1").mkdir(parents=True)
    (tmp_path / "empty" / "s1" / "notes.txt").write_text("no clips here")
    line = one_line(failing_train_py(["data=rml", f"data.root={tmp_path / 'empty'}", *fresh]))
    assert line.startswith(
        f"error: data.root={tmp_path / 'empty'}: no RML clips found under {tmp_path / 'empty'}; "
        "expected <root>/**/s<N>/"
    ), line
    assert line.endswith(
        f"try: python train.py data=rml experiment=paper_rml_loso data.root=/path/to/rml {' '.join(fresh)}"
    )
    assert_nothing_made(tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_a_gpu_trainer_without_a_gpu(fresh, tmp_path):
    line = one_line(failing_train_py(["trainer=gpu", "trainer.devices=1", "stage=audio", *fresh]))
    assert line == (
        f"error: trainer=gpu (trainer.accelerator=gpu): this machine has no CUDA GPU "
        f"(torch.cuda.is_available() is False); trainer=default trains on the CPU; "
        f"try: python train.py stage=audio {' '.join(fresh)}"
    )
    assert_nothing_made(tmp_path)


def test_a_fold_out_of_range_leaves_no_fold_folder(tmp_path):
    args = [*small_demo_overrides(tmp_path), "stage=audio", "fold=3", "logger=none"]  # 3 subjects: 3 LOSO folds
    line = one_line(failing_train_py(args))
    assert line.startswith(
        "error: fold=3: demo has folds 0..2 under cv=loso, or fold=all (or summary); try: python train.py "
    )
    assert line.endswith("stage=audio fold=2 logger=none")
    assert not (tmp_path / "outputs" / "demo").exists()


def test_hydra_full_error_still_shows_the_traceback(fresh):
    stderr = failing_train_py(["stage=audoi", *fresh], HYDRA_FULL_ERROR="1")
    assert "Traceback" in stderr and "ConfigError: stage=audoi: no such stage" in stderr


def test_names_in_multirun_lists_and_prefixed_overrides_are_checked():
    configs = REPO / "configs"
    check_choices(
        [
            "-m",
            "data=rml,ravdess",
            "data.root=/x",
            "+test_data=emodb",
            "hparams_search=null",
            "model.audio.module.lr=choice(1e-3,1e-4)",
            "hydra/sweeper=basic",
        ],
        configs,
    )
    with pytest.raises(ConfigError, match=r"data=ravdes: .*try: python train.py -m data=rml,ravdess$"):
        check_choices(["-m", "data=rml,ravdes"], configs)
    with pytest.raises(ConfigError, match=r"try: python train.py \+test_data=emodb$"):
        check_choices(["+test_data=emod"], configs)
    assert (
        train_command(
            ["trainer=ddp", "trainer.devices=4", "fold=1"], {"trainer": None, "trainer.devices": None, "stage": "audio"}
        )
        == "try: python train.py fold=1 stage=audio"
    )
