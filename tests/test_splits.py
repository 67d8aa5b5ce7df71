"""LOSO, k-fold and hold-out invariants on indexer tables; the leakage check on hand-made leaky folds."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from datamodules.clips import PAPER_EMOTIONS, Clip
from datamodules.corpora import ravdess, rml
from datamodules.splits import Fold, assert_no_leakage, fold_table, holdout_folds, kfold_folds, loso_folds

RML_CODES = ("an", "di", "fe", "ha", "sa", "su")


@pytest.fixture(scope="module")
def uneven_clips(tmp_path_factory) -> list[Clip]:
    """An RML-layout table of 10 speakers with 2-9 clips per (speaker, emotion) and one emotion missing."""
    root = tmp_path_factory.mktemp("uneven")
    rng = np.random.default_rng(7)
    for speaker in range(1, 11):
        for code in RML_CODES:
            if (speaker, code) == (4, "fe"):
                continue
            for k in range(1, int(rng.integers(2, 10)) + 1):
                path = root / f"s{speaker}" / f"{code}{k}.avi"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
    return rml.index(root).clips


@pytest.fixture(scope="module")
def ravdess_clips(ravdess_speech_root) -> list[Clip]:
    return ravdess.index(ravdess_speech_root, modality="audio").clips


def subject_of(clips):
    return {clip.clip_id: clip.subject for clip in clips}


def assert_partition(folds: list[Fold], clips: list[Clip]) -> None:
    """Every clip tested exactly once; each fold's parts are disjoint and cover the table."""
    tested = Counter(clip_id for fold in folds for clip_id in fold.test)
    assert tested == Counter(clip.clip_id for clip in clips)
    for fold in folds:
        parts = [set(fold.train), set(fold.val), set(fold.test)]
        assert sum(map(len, parts)) == len(clips) == len(set.union(*parts))


def subjects_in(ids, clips) -> set[str]:
    subjects = subject_of(clips)
    return {subjects[clip_id] for clip_id in ids}


def test_loso_one_fold_per_subject_with_the_next_subject_validating(uneven_clips):
    folds = loso_folds(uneven_clips)
    subjects = [f"s{n:02d}" for n in range(1, 11)]
    assert [fold.test_subjects for fold in folds] == [[subject] for subject in subjects]
    assert [fold.name for fold in folds][:2] == ["loso-s01", "loso-s02"] and folds[3].index == 3
    assert_partition(folds, uneven_clips)
    for index, fold in enumerate(folds):
        assert subjects_in(fold.test, uneven_clips) == {subjects[index]}
        assert subjects_in(fold.val, uneven_clips) == {subjects[(index + 1) % 10]}
        assert subjects[index] not in subjects_in(fold.train, uneven_clips)


def test_loso_with_two_validation_subjects_and_too_few_subjects(uneven_clips):
    folds = loso_folds(uneven_clips, val_subjects=2)
    assert subjects_in(folds[9].val, uneven_clips) == {"s01", "s02"}
    assert loso_folds(uneven_clips, val_subjects=0)[0].val == []
    two_subjects = [clip for clip in uneven_clips if clip.subject in ("s01", "s02")]
    with pytest.raises(ValueError, match="at least 3 subjects"):
        loso_folds(two_subjects)


def test_kfold_by_clip_is_stratified_and_validation_stays_out_of_test(uneven_clips):
    folds = kfold_folds(uneven_clips, k=5, seed=1)
    assert_partition(folds, uneven_clips)
    label_of = {clip.clip_id: clip.label for clip in uneven_clips}
    sizes = [len(fold.test) for fold in folds]
    assert max(sizes) - min(sizes) <= 1
    for label in PAPER_EMOTIONS:
        per_fold = [sum(label_of[clip_id] == label for clip_id in fold.test) for fold in folds]
        assert max(per_fold) - min(per_fold) <= 1, (label, per_fold)
    for fold in folds:
        assert not set(fold.val) & set(fold.test)
        n_train_label = Counter(label_of[clip_id] for clip_id in fold.train + fold.val)
        n_val_label = Counter(label_of[clip_id] for clip_id in fold.val)
        for label in PAPER_EMOTIONS:
            assert n_val_label[label] == round(0.1 * n_train_label[label])
    # grouped by clip, a subject's clips are spread over folds: that is what by_subject=False allows
    assert any(set(fold.test_subjects) & subjects_in(fold.train, uneven_clips) for fold in folds)


def test_kfold_by_subject_keeps_subjects_whole_and_labels_balanced(uneven_clips):
    folds = kfold_folds(uneven_clips, k=3, seed=0, group_by="subject", val_fraction=0.2)
    assert_partition(folds, uneven_clips)
    label_of = {clip.clip_id: clip.label for clip in uneven_clips}
    totals = Counter(clip.label for clip in uneven_clips)
    for fold in folds:
        test_subjects = subjects_in(fold.test, uneven_clips)
        assert test_subjects == set(fold.test_subjects)
        assert not test_subjects & subjects_in(fold.train + fold.val, uneven_clips)
        assert fold.val and not subjects_in(fold.val, uneven_clips) & subjects_in(fold.train, uneven_clips)
        shares = Counter(label_of[clip_id] for clip_id in fold.test)
        for label in PAPER_EMOTIONS:
            assert abs(shares[label] / totals[label] - 1 / 3) < 0.2, (label, shares, totals)


@pytest.mark.shared
def test_kfold_by_subject_on_ravdess_is_exactly_balanced(ravdess_clips):
    folds = kfold_folds(ravdess_clips, k=5, group_by="subject")
    assert_partition(folds, ravdess_clips)
    for fold in folds:
        assert len(fold.test_subjects) == 4
        assert set(Counter(clip.label for clip in ravdess_clips if clip.clip_id in set(fold.test)).values()) == {32}
        assert len(subjects_in(fold.val, ravdess_clips)) == 2  # 96 clips: closest whole-subject share to 10 %


@pytest.mark.shared
def test_loso_on_ravdess_tests_each_actor_once(ravdess_clips):
    folds = loso_folds(ravdess_clips)
    assert len(folds) == 20 and all(len(fold.test) == 48 for fold in folds)
    assert_partition(folds, ravdess_clips)


def test_kfold_is_deterministic_by_seed(uneven_clips):
    for group_by in ("clip", "subject"):
        first = kfold_folds(uneven_clips, k=4, seed=3, group_by=group_by)
        again = kfold_folds(uneven_clips, k=4, seed=3, group_by=group_by)
        other = kfold_folds(uneven_clips, k=4, seed=4, group_by=group_by)
        assert first == again
        assert first != other
    # by clip the seed reshuffles the test folds; by subject it breaks ties and picks validation subjects
    assert [fold.test for fold in kfold_folds(uneven_clips, seed=3)] != [
        fold.test for fold in kfold_folds(uneven_clips, seed=4)
    ]


def test_kfold_rejects_bad_arguments(uneven_clips):
    with pytest.raises(ValueError, match="group_by"):
        kfold_folds(uneven_clips, group_by="label")
    with pytest.raises(ValueError, match="at least k subjects, found 10"):
        kfold_folds(uneven_clips, k=11, group_by="subject")
    with pytest.raises(ValueError, match="val_fraction"):
        kfold_folds(uneven_clips, val_fraction=1.0)


def make_clip(clip_id: str, subject: str, label: str = "anger") -> Clip:
    return Clip(clip_id=clip_id, path=Path(f"/{clip_id}.avi"), subject=subject, label=label)


def test_holdout_tests_the_named_subjects_and_validates_on_the_named_ones(uneven_clips):
    (fold,) = holdout_folds(uneven_clips, test_subjects=["s10", "s02"], val_subjects=["s05"])
    assert fold.name == "holdout-s02+s10" and fold.test_subjects == ["s02", "s10"]
    assert subjects_in(fold.test, uneven_clips) == {"s02", "s10"}
    assert subjects_in(fold.val, uneven_clips) == {"s05"}
    assert subjects_in(fold.train, uneven_clips) == {f"s{n:02d}" for n in (1, 3, 4, 6, 7, 8, 9)}
    assert len(fold.train) + len(fold.val) + len(fold.test) == len(uneven_clips)


def test_holdout_draws_validation_subjects_from_the_rest_by_seed(uneven_clips):
    (fold,) = holdout_folds(uneven_clips, test_subjects=["s01"], val_fraction=0.25, seed=3)
    validation = subjects_in(fold.val, uneven_clips)
    assert validation and "s01" not in validation and not validation & subjects_in(fold.train, uneven_clips)
    assert 0.1 < len(fold.val) / (len(fold.val) + len(fold.train)) < 0.4
    assert holdout_folds(uneven_clips, test_subjects=["s01"], val_fraction=0.25, seed=3)[0].val == fold.val
    other_seeds = {tuple(holdout_folds(uneven_clips, test_subjects=["s01"], seed=seed)[0].val) for seed in range(6)}
    assert len(other_seeds) > 1
    (no_test,) = holdout_folds(uneven_clips, test_subjects=[], val_subjects=["s03"])
    assert no_test.test == [] and no_test.name == "holdout-no-test"


def test_holdout_rejects_unknown_overlapping_and_exhaustive_subjects(uneven_clips):
    with pytest.raises(ValueError, match=r"\['s11'\] not in the corpus; its subjects are \['s01'"):
        holdout_folds(uneven_clips, test_subjects=["s11"])
    with pytest.raises(ValueError, match=r"\['s02'\] named both"):
        holdout_folds(uneven_clips, test_subjects=["s01", "s02"], val_subjects=["s02"])
    with pytest.raises(ValueError, match="no subject left to train on"):
        holdout_folds(uneven_clips, test_subjects=[f"s{n:02d}" for n in range(1, 10)], val_subjects=["s10"])
    with pytest.raises(ValueError, match="val_fraction"):
        holdout_folds(uneven_clips, test_subjects=["s01"], val_fraction=1.0)


def test_leakage_check_fires_on_hand_made_leaky_folds():
    clips = [make_clip("a1", "s01"), make_clip("a2", "s01"), make_clip("b1", "s02"), make_clip("c1", "s03")]
    clean = Fold(0, "clean", train=["b1"], val=["c1"], test=["a1", "a2"], test_subjects=["s01"])
    assert_no_leakage(clean, clips, by_subject=True)
    shared_clip = Fold(1, "shared-clip", train=["a1", "b1"], val=["c1"], test=["a1"])
    with pytest.raises(
        AssertionError, match=r"fold 1 \(shared-clip\) leaks: 1 clip\(s\) in both train and test: \['a1'\]"
    ):
        assert_no_leakage(shared_clip, clips, by_subject=False)
    subject_leak = Fold(2, "subject-leak", train=["a2", "b1"], val=["c1"], test=["a1"])
    assert_no_leakage(subject_leak, clips, by_subject=False)
    with pytest.raises(AssertionError, match=r"test subject\(s\) \['s01'\] also in train"):
        assert_no_leakage(subject_leak, clips, by_subject=True)
    with pytest.raises(AssertionError, match="not in the clip table: \\['zz'\\]"):
        assert_no_leakage(Fold(3, "unknown", train=["zz"], val=[], test=["a1"]), clips, by_subject=False)
    with pytest.raises(AssertionError, match="more than once"):
        assert_no_leakage(Fold(4, "twice", train=["b1", "b1"], val=[], test=["a1"]), clips, by_subject=False)


def test_fold_table_lists_every_fold(uneven_clips):
    folds = loso_folds(uneven_clips)
    table = fold_table(folds, uneven_clips)
    lines = table.splitlines()
    assert len(lines) == 11 and lines[1].startswith("loso-s01") and lines[1].endswith("s01")
    assert f"{len(folds[0].test):>6}" in lines[1]
