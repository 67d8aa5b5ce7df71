"""Cross-validation folds over a clip table: leave-one-subject-out, (stratified) k-fold (§4) and a
single hold-out fold of named test subjects.

A ``Fold`` holds clip ids. Every builder checks each fold it makes with ``assert_no_leakage``:
no clip in two parts, and for subject-independent folds no test subject in train or val.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from datamodules.clips import Clip
from datamodules.corpora import natural_key

GROUP_BY_CHOICES: tuple[str, ...] = ("clip", "subject")


@dataclass
class Fold:
    """One train/val/test split; lists of clip ids in clip-table order.

    ``by_subject``: the fold is subject-independent (LOSO, k-fold grouped by subject), so no test
    subject may appear in train or val.
    """

    index: int
    name: str
    train: list[str]
    val: list[str]
    test: list[str]
    test_subjects: list[str] = field(default_factory=list)
    by_subject: bool = False
    test_corpus: str | None = None  # the one corpus the test part is of (cross-corpus, several corpora), else None
    dropped_classes: dict[str, list[str]] = field(default_factory=dict)  # cross-corpus: see with_test_corpus

    @property
    def content_hash(self) -> str:
        """Short hash of the sorted train, val and test clip ids: equal hashes, equal splits."""
        parts = {part: sorted(getattr(self, part)) for part in ("train", "val", "test")}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def subjects_of(clips: Sequence[Clip]) -> list[str]:
    """The distinct subjects, in natural order (s2 before s10)."""
    return sorted({clip.subject for clip in clips}, key=natural_key)


def _parts(clips: Sequence[Clip], test: set[str], validation: set[str]) -> dict[str, str]:
    """Each clip's part of a fold: "test" for the ``test`` clip ids, else "val" for the ``validation`` ones, else
    "train"."""
    return {
        clip.clip_id: "test" if clip.clip_id in test else "val" if clip.clip_id in validation else "train"
        for clip in clips
    }


def _fold(index: int, name: str, clips: Sequence[Clip], part_of: dict[str, str], *, by_subject: bool) -> Fold:
    """A Fold from ``part_of``: clip id -> "train" | "val" | "test"; ids not in it are left out. Checked
    with ``assert_no_leakage`` before it is returned."""
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for clip in clips:
        if clip.clip_id in part_of:
            parts[part_of[clip.clip_id]].append(clip.clip_id)
    test_ids = set(parts["test"])
    test_subjects = sorted({clip.subject for clip in clips if clip.clip_id in test_ids}, key=natural_key)
    fold = Fold(index=index, name=name, test_subjects=test_subjects, by_subject=by_subject, **parts)
    assert_no_leakage(fold, clips, by_subject=by_subject)
    return fold


def loso_folds(clips: Sequence[Clip], *, val_subjects: int = 1) -> list[Fold]:
    """Leave-one-subject-out: fold i tests subject i (natural order) on all its clips.

    Validation is every clip of the ``val_subjects`` subjects that follow the test subject in
    cyclic order; training is everyone else. No subject is ever in two parts of a fold.
    """
    if val_subjects < 0:
        raise ValueError(f"val_subjects must be >= 0, got {val_subjects}")
    subjects = subjects_of(clips)
    if len(subjects) < val_subjects + 2:
        raise ValueError(
            f"LOSO with val_subjects={val_subjects} needs at least {val_subjects + 2} subjects "
            f"(one to test, one to train), found {len(subjects)}: {subjects}"
        )
    folds = []
    for index, test_subject in enumerate(subjects):
        validation = {subjects[(index + step) % len(subjects)] for step in range(1, val_subjects + 1)}
        part_of = {
            clip.clip_id: "test" if clip.subject == test_subject else "val" if clip.subject in validation else "train"
            for clip in clips
        }
        folds.append(_fold(index, f"loso-{test_subject}", clips, part_of, by_subject=True))
    return folds


def kfold_folds(
    clips: Sequence[Clip],
    *,
    k: int = 5,
    seed: int = 0,
    group_by: str = "clip",
    val_fraction: float = 0.1,
) -> list[Fold]:
    """Stratified k-fold: every clip is tested in exactly one fold, labels spread evenly over folds.

    ``group_by="clip"``: clips are dealt to folds label by label in a seeded shuffle; validation
    is a stratified ``val_fraction`` of each fold's training clips. ``group_by="subject"``: whole
    subjects are dealt to folds, greedily keeping each label's share equal across folds (like
    scikit-learn's StratifiedGroupKFold); validation is whole training subjects, about
    ``val_fraction`` of the training clips and at least one subject.
    """
    if group_by not in GROUP_BY_CHOICES:
        raise ValueError(f"group_by must be one of {GROUP_BY_CHOICES}, got {group_by!r}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    units = len(clips) if group_by == "clip" else len(subjects_of(clips))
    if k < 2 or units < k:
        raise ValueError(f"{k}-fold by {group_by} needs k >= 2 and at least k {group_by}s, found {units}")
    if group_by == "clip":
        test_fold_of = _deal_clips(clips, k, np.random.default_rng(seed))
    else:
        subject_fold = _deal_subjects(clips, k, np.random.default_rng(seed))
        test_fold_of = {clip.clip_id: subject_fold[clip.subject] for clip in clips}
    folds = []
    for index in range(k):
        training = [clip for clip in clips if test_fold_of[clip.clip_id] != index]
        rng = np.random.default_rng([seed, index])
        if group_by == "clip":
            validation = _stratified_sample(training, val_fraction, rng)
        else:
            validation = _subject_sample(training, val_fraction, rng)
        part_of = _parts(clips, {clip.clip_id for clip in clips if test_fold_of[clip.clip_id] == index}, validation)
        folds.append(_fold(index, f"{k}fold-{group_by}-{index}", clips, part_of, by_subject=group_by == "subject"))
    return folds


def holdout_folds(
    clips: Sequence[Clip],
    *,
    test_subjects: Sequence[str],
    val_subjects: Sequence[str] | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> list[Fold]:
    """One fold: every clip of ``test_subjects`` is tested, every clip of ``val_subjects`` validates, the
    other subjects train.

    With ``val_subjects=None`` validation is whole subjects of the non-test ones, drawn in seeded order
    while that brings their clip count closer to ``val_fraction`` of the non-test clips (at least one
    subject, never all; as ``kfold_folds(group_by="subject")`` does). ``test_subjects`` may be empty:
    the fold then tests nothing of this corpus (``cv=cross_corpus`` tests on another one).
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    known = subjects_of(clips)
    test = [str(subject) for subject in test_subjects]
    named_val = None if val_subjects is None else [str(subject) for subject in val_subjects]
    unknown = [subject for subject in test + (named_val or []) if subject not in known]
    if unknown:
        raise ValueError(f"holdout: subject(s) {unknown} not in the corpus; its subjects are {known}")
    both = sorted(set(test) & set(named_val or []), key=natural_key)
    if both:
        raise ValueError(f"holdout: subject(s) {both} named both as test and as validation subjects")
    rest = [clip for clip in clips if clip.subject not in test]
    if named_val is None:
        validation = _subject_sample(rest, val_fraction, np.random.default_rng(seed))
    else:
        validation = {clip.clip_id for clip in rest if clip.subject in named_val}
    if len(validation) == len(rest):
        raise ValueError(
            f"holdout: no subject left to train on (test {test}, validation {named_val or 'all the rest'})"
        )
    part_of = {
        clip.clip_id: "test" if clip.subject in test else "val" if clip.clip_id in validation else "train"
        for clip in clips
    }
    return [
        _fold(0, "holdout-" + ("+".join(sorted(test, key=natural_key)) or "no-test"), clips, part_of, by_subject=True)
    ]


SEPARATOR = "/"  # between a member corpus's name and its clip id or subject (data=multi)


def corpus_of_subject(subject: str) -> str | None:
    """The member corpus of a prefixed subject (``urdu/SM1`` -> ``urdu``); None for a plain one."""
    corpus, separator, _ = subject.partition(SEPARATOR)
    return corpus if separator else None


def corpus_folds(clips: Sequence[Clip], *, val_fraction: float = 0.2, seed: int = 0) -> list[Fold]:
    """Leave one corpus out (``data=multi``, ``cv=leave_one_corpus_out``): fold i tests every clip of the i-th
    corpus (in the order of the clip table); validation is whole subjects of the other corpora, drawn (seeded,
    per fold) to about ``val_fraction`` of their clips as ``holdout_folds`` does; training is the rest.

    A clip's corpus is its subject's prefix (``urdu/SM1``: urdu), as ``MultiCorpusDataModule`` names them.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    corpus_of = {clip.clip_id: corpus_of_subject(clip.subject) for clip in clips}
    plain = sorted({clip.subject for clip in clips if corpus_of[clip.clip_id] is None}, key=natural_key)
    if plain:
        raise ValueError(f"leave_one_corpus_out needs data=multi (subjects <corpus>/<subject>); found {plain[:5]}")
    corpora = list(dict.fromkeys(corpus_of[clip.clip_id] for clip in clips))
    if len(corpora) < 2:
        raise ValueError(f"leave_one_corpus_out needs at least two corpora, found {corpora}")
    folds = []
    for index, corpus in enumerate(corpora):
        rest = [clip for clip in clips if corpus_of[clip.clip_id] != corpus]
        validation = _subject_sample(rest, val_fraction, np.random.default_rng([seed, index]))
        part_of = _parts(clips, {clip.clip_id for clip in clips if corpus_of[clip.clip_id] == corpus}, validation)
        fold = _fold(index, f"loco-{corpus}", clips, part_of, by_subject=True)
        fold.test_corpus = corpus
        folds.append(fold)
    return folds


def with_training_clips(
    cv: Callable[[list[Clip]], list[Fold]], is_training_only: Callable[[Clip], bool]
) -> Callable[[list[Clip]], list[Fold]]:
    """The folds of ``cv`` over the clips that are not ``is_training_only``, with those clips added to every
    fold's training part (never validated nor tested): ``data=multi`` with ``data.train_only``."""

    def folds(clips: list[Clip]) -> list[Fold]:
        extra = [clip.clip_id for clip in clips if is_training_only(clip)]
        return [replace(fold, train=fold.train + extra) for fold in cv([c for c in clips if not is_training_only(c)])]

    return folds


def with_test_corpus(
    fold: Fold,
    test_clips: Sequence[Clip],
    *,
    index: int | None = None,
    corpus: str | None = None,
    dropped_classes: dict[str, list[str]] | None = None,
    several: bool = False,
) -> Fold:
    """``fold`` with every clip of another corpus, ``test_clips``, as its test part (``cv=cross_corpus``).

    ``fold`` must test nothing of its own corpus; its train and validation parts stay as they are. ``index``
    (default: the fold's), ``corpus`` (the test corpus's name) and ``dropped_classes`` (``not_in_test``: training
    classes without a test clip, ``not_in_training``: the test corpus's classes left out) are recorded;
    ``several``: one of several test corpora, named in the fold's name.
    """
    if fold.test:
        raise ValueError(
            f"fold {fold.name} already tests {len(fold.test)} clip(s) of its own corpus; a test corpus needs folds "
            "without a test part (cv=cross_corpus)"
        )
    # by_subject stays False: the test speakers belong to another corpus, whose subject names may
    # coincide with this corpus's without being the same people
    index = fold.index if index is None else index
    return Fold(
        index=index,
        name=f"cross-corpus-{corpus}" if several else f"cross-corpus-{index}",
        train=fold.train,
        val=fold.val,
        test=[clip.clip_id for clip in test_clips],
        test_subjects=subjects_of(test_clips),
        test_corpus=corpus,
        dropped_classes=dict(dropped_classes or {}),
    )


def _by_label(clips: Sequence[Clip]) -> dict[str, list[Clip]]:
    groups: dict[str, list[Clip]] = defaultdict(list)
    for clip in clips:
        groups[clip.label].append(clip)
    return dict(sorted(groups.items()))


def _deal_clips(clips: Sequence[Clip], k: int, rng: np.random.Generator) -> dict[str, int]:
    """Clip id -> test fold: each label's clips, shuffled, dealt round-robin; the deal carries on
    across labels so fold sizes differ by at most one."""
    fold_of, position = {}, 0
    for members in _by_label(clips).values():
        for clip_index in rng.permutation(len(members)):
            fold_of[members[clip_index].clip_id] = position % k
            position += 1
    return fold_of


def _deal_subjects(clips: Sequence[Clip], k: int, rng: np.random.Generator) -> dict[str, int]:
    """Subject -> test fold, greedily: largest subjects first (ties in seeded order), each to the
    fold where the spread of every label's per-fold share stays smallest, then the smallest fold.
    While as many folds are empty as subjects remain, only empty folds are candidates."""
    labels = sorted({clip.label for clip in clips})
    counts: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(len(labels)))
    for clip in clips:
        counts[clip.subject][labels.index(clip.label)] += 1
    label_totals = sum(counts.values())
    natural_order = subjects_of(clips)
    subjects = [natural_order[i] for i in rng.permutation(len(natural_order))]
    subjects.sort(key=lambda subject: -counts[subject].sum())
    fold_counts = np.zeros((k, len(labels)))
    fold_of: dict[str, int] = {}
    for remaining, subject in zip(range(len(subjects), 0, -1), subjects):
        empty = [fold for fold in range(k) if not fold_counts[fold].any()]
        candidates = empty if len(empty) >= remaining else range(k)

        def cost(fold: int) -> tuple[float, float, int]:
            trial = fold_counts.copy()
            trial[fold] += counts[subject]  # noqa: B023 (cost is called inside this iteration)
            spread = float(np.mean(np.std(trial / label_totals, axis=0)))
            return spread, trial[fold].sum(), fold

        best = min(candidates, key=cost)
        fold_counts[best] += counts[subject]
        fold_of[subject] = best
    return fold_of


def _stratified_sample(clips: Sequence[Clip], fraction: float, rng: np.random.Generator) -> set[str]:
    """Ids of round(fraction x n) clips of each label, drawn without replacement."""
    chosen = set()
    for members in _by_label(clips).values():
        for clip_index in rng.permutation(len(members))[: int(round(fraction * len(members)))]:
            chosen.add(members[clip_index].clip_id)
    return chosen


def _subject_sample(clips: Sequence[Clip], fraction: float, rng: np.random.Generator) -> set[str]:
    """Ids of the clips of whole subjects, taken in seeded order while that brings their count
    closer to ``fraction`` of the clips: at least one subject when fraction > 0, never all."""
    if fraction == 0:
        return set()
    sizes = Counter(clip.subject for clip in clips)
    subjects = subjects_of(clips)
    target = fraction * len(clips)
    chosen: list[str] = []
    taken = 0
    for subject_index in rng.permutation(len(subjects))[: len(subjects) - 1]:
        size = sizes[subjects[subject_index]]
        if chosen and abs(taken + size - target) >= abs(taken - target):
            break
        chosen.append(subjects[subject_index])
        taken += size
    return {clip.clip_id for clip in clips if clip.subject in chosen}


def assert_no_leakage(fold: Fold, clips: Sequence[Clip], *, by_subject: bool) -> None:
    """Raise ``AssertionError`` naming the offenders when a clip id is unknown, listed twice, in two
    parts of ``fold``, or (``by_subject``) a test subject also appears in train or val."""
    subject_of = {clip.clip_id: clip.subject for clip in clips}
    parts = {"train": fold.train, "val": fold.val, "test": fold.test}
    problems = []
    for part, ids in parts.items():
        unknown = [clip_id for clip_id in ids if clip_id not in subject_of]
        if unknown:
            problems.append(f"{part} holds clip ids not in the clip table: {unknown[:5]}")
        repeated = [clip_id for clip_id, count in Counter(ids).items() if count > 1]
        if repeated:
            problems.append(f"{part} lists clip ids more than once: {repeated[:5]}")
    for first, second in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = sorted(set(parts[first]) & set(parts[second]), key=natural_key)
        if shared:
            problems.append(f"{len(shared)} clip(s) in both {first} and {second}: {shared[:5]}")
    if by_subject:
        test_subjects = {subject_of[clip_id] for clip_id in fold.test if clip_id in subject_of}
        for part in ("train", "val"):
            leaked = sorted(
                {subject_of[clip_id] for clip_id in parts[part] if clip_id in subject_of} & test_subjects,
                key=natural_key,
            )
            if leaked:
                problems.append(f"test subject(s) {leaked} also in {part}")
    if problems:
        raise AssertionError(f"fold {fold.index} ({fold.name}) leaks: " + "; ".join(problems))


def fold_table(folds: Sequence[Fold], clips: Sequence[Clip]) -> str:
    """A plain-text table: per fold, the clip counts of train/val/test and the test subjects."""
    label_of = {clip.clip_id: clip.label for clip in clips}
    labels = sorted(set(label_of.values()))
    header = f"{'fold':<24}{'train':>7}{'val':>6}{'test':>6}  test labels ({', '.join(labels)})  test subjects"
    rows = [header]
    for fold in folds:
        test_labels = Counter(label_of[clip_id] for clip_id in fold.test)
        per_label = "/".join(str(test_labels[label]) for label in labels)
        subjects = (
            ", ".join(fold.test_subjects) if len(fold.test_subjects) <= 4 else f"{len(fold.test_subjects)} subjects"
        )
        rows.append(
            f"{fold.name:<24}{len(fold.train):>7}{len(fold.val):>6}{len(fold.test):>6}  {per_label}  {subjects}"
        )
    return "\n".join(rows)
