"""Several corpora as one (``data=multi``): one clip table over every member corpus, each member prepared and
cached by its own EmotionDataModule.

A member's clips keep their corpus in their ids and subjects (``urdu/SM1_..``, ``urdu/SM1``), so subjects of two
corpora never merge, folds stay subject-independent across corpora, and ``audio_norm=speaker`` (statistics per
subject) is per corpus and speaker. Classes are matched by name: the union of the members' classes, in the
order they are first listed (or ``classes``); a class a member lacks is named in a warning.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_warn

from datamodules.clips import Clip, IndexResult, class_rule
from datamodules.datamodule import EmotionDataModule
from datamodules.preprocess import PreparedCorpus, cache_folder, load_clip
from datamodules.splits import SEPARATOR, Fold, corpus_of_subject, with_training_clips


def deep_merge(base: Mapping, over: Mapping) -> dict:
    """``base`` with ``over``'s values in its place, nested mappings merged key by key."""
    merged = dict(base)
    for key, value in over.items():
        merged[key] = (
            deep_merge(base[key], value) if isinstance(value, Mapping) and isinstance(base.get(key), Mapping) else value
        )
    return merged


class MultiCorpusDataModule(EmotionDataModule):
    """The union of ``corpora`` (name -> EmotionDataModule, each with its own root, indexer and cache) as one corpus.

    ``preprocess`` is the run's preprocessing; each member keeps the keys its own config sets on top of it (EmoDB's
    ``video: false``). ``train_only`` names members whose clips are added to every fold's training part and never
    validated nor tested: the folds of ``cv`` are those of the other members (``kfold_by_subject`` over URDU's
    speakers, with all of RAVDESS in training). Members are renamed to their key in ``corpora`` (their cache goes to
    ``<cache_dir>/<key>/<hash>``, as a run of that corpus alone with ``data.name=<key>`` would use).
    """

    def __init__(
        self,
        corpora: Mapping[str, EmotionDataModule],
        preprocess: dict,
        cache_dir: str,
        name: str = "multi",
        classes: Sequence[str] | None = None,
        cv: Callable[[list[Clip]], list[Fold]] | None = None,
        fold: int = 0,
        inputs: Sequence[str] = ("audio",),
        batch_size: int = 32,
        num_workers: int = 0,
        preprocess_workers: int | None = None,
        test_corpus: EmotionDataModule | None = None,
        audio_norm: str = "none",
        balance: str = "none",
        train_only: Sequence[str] = (),
    ) -> None:
        if not corpora:
            raise ValueError(
                f"{name}: no member corpora; add them with +data@data.corpora.<name>=<corpus config> "
                "(docs/your_corpus.md#several-corpora)"
            )
        bad = [key for key in corpora if SEPARATOR in key or not key]
        if bad:
            raise ValueError(f"{name}: corpus names {bad} may not be empty nor hold {SEPARATOR!r}")
        self.corpora = dict(corpora)
        unknown = [key for key in train_only if key not in self.corpora]
        if unknown or (train_only and set(train_only) >= set(self.corpora)):
            raise ValueError(
                f"{name}: train_only={list(train_only)} must name some, not all, of the members {list(self.corpora)}"
            )
        self.train_only = list(train_only)
        if train_only and cv is not None:
            cv = with_training_clips(cv, lambda clip: clip.extra.get("corpus") in self.train_only)
        for key, member in self.corpora.items():
            member.name = key
            member.preprocess_cfg = deep_merge(preprocess, member.preprocess_cfg)
            member.audio_norm = "none"  # statistics are taken here, over the prefixed subjects
        if classes is None:
            classes = list(dict.fromkeys(label for member in self.corpora.values() for label in member.classes))
        missing = {key: [c for c in classes if c not in member.classes] for key, member in self.corpora.items()}
        if any(missing.values()):
            rank_zero_warn(
                f"{name}: classes matched by name over {list(self.corpora)}; "
                + "; ".join(f"{key} lacks {labels}" for key, labels in missing.items() if labels)
            )
        super().__init__(
            name=name,
            root=".",
            indexer=self._index_members,
            classes=classes,
            preprocess=preprocess,
            cache_dir=cache_dir,
            cv=cv,
            fold=fold,
            inputs=inputs,
            batch_size=batch_size,
            num_workers=num_workers,
            preprocess_workers=preprocess_workers,
            test_corpus=test_corpus,
            audio_norm=audio_norm,
            balance=balance,
        )

    @staticmethod
    def prefixed(key: str, clip: Clip) -> Clip:
        return replace(
            clip,
            clip_id=f"{key}{SEPARATOR}{clip.clip_id}",
            subject=f"{key}{SEPARATOR}{clip.subject}",
            extra={**clip.extra, "corpus": key},
        )

    def _index_members(self, root: Path) -> IndexResult:
        """Every member's index, its clips prefixed; what a member skipped or excluded is named with the member."""
        clips, skipped, excluded, notes, other_files, further_frames = [], [], [], [], 0, 0
        for key, member in self.corpora.items():
            result = member.index()
            clips += [self.prefixed(key, clip) for clip in result.clips]
            skipped += result.skipped
            excluded += result.excluded
            notes += [f"{key}: {note}" for note in result.notes]
            other_files += result.other_files
            further_frames += result.further_frames
        return IndexResult(clips, skipped, excluded, other_files, notes, further_frames)

    def index(self) -> IndexResult:
        """The members' clips (prefixed) of this module's classes."""
        if self._indexed is None:
            result = self._index_members(self.root)
            result.exclude(lambda clip: class_rule(clip, self.classes))
            self._indexed = result
        return self._indexed

    @property
    def source(self) -> str:
        return "+".join(f"{key}={member.source}" for key, member in self.corpora.items())

    @property
    def cache_source(self) -> str:
        return "+".join(f"{key}={member.cache_source}" for key, member in self.corpora.items())

    @property
    def cache_folder(self) -> Path:
        """No files of its own: a name whose key stands for every member's cache (``fold.json``'s preprocess_key,
        the frozen-feature caches)."""
        members = {key: member.cache_folder.name for key, member in self.corpora.items()}
        return cache_folder(self.cache_dir, self.name, {"members": members, "classes": self.classes}, self.source)

    @property
    def folds(self) -> list[Fold]:
        """The configured folds (made once); a fold whose test subjects all belong to one member names it as its
        test corpus, with the classes its metrics leave out (``dropped_classes``)."""
        if self._folds is None:
            folds = super().folds
            if self.test_corpus is None:
                clip_of = {clip.clip_id: clip for clip in self.index().clips}
                for fold in folds:
                    corpora = {corpus_of_subject(subject) for subject in fold.test_subjects}
                    if fold.test_corpus is None and len(corpora) == 1:
                        fold.test_corpus = corpora.pop()
                    if fold.test_corpus in self.corpora and not fold.dropped_classes:
                        fold.dropped_classes = self.dropped_classes(
                            [clip_of[clip_id] for clip_id in fold.test],
                            self.corpora[fold.test_corpus].configured_classes,
                        )
        return self._folds

    def test_groups(self) -> list[tuple[str, list[Clip], list[str]]]:
        """Per member, its (prefixed) clips and its configured classes: one test fold each when this module is a
        run's test corpus."""
        clips = self.index().clips
        return [
            (key, [c for c in clips if c.extra.get("corpus") == key], member.configured_classes)
            for key, member in self.corpora.items()
        ]

    def by_corpus(self, clips: Sequence[Clip]) -> list[tuple[EmotionDataModule, list[Clip], list[str]]]:
        """``clips`` (of this module) per member: the member, its own clips and their ids here."""
        wanted = {clip.clip_id for clip in clips}
        groups = []
        for key, member in self.corpora.items():
            own = [c for c in member.index().clips if f"{key}{SEPARATOR}{c.clip_id}" in wanted]
            if own:
                groups.append((member, own, [f"{key}{SEPARATOR}{c.clip_id}" for c in own]))
        return groups

    def prepare_data(self) -> PreparedCorpus:
        """Every member prepared into its own cache (each prints its report); returns the last member's."""
        if self._prepared is None:
            prepared = [member.prepare_data() for member in self.corpora.values()]
            self._prepared = prepared[-1]
            if self.test_corpus is not None:
                self.test_corpus.prepare_data()
        return self._prepared

    def prepared_corpora(self) -> list[tuple[EmotionDataModule, PreparedCorpus]]:
        """Each member with what ``prepare_data`` made of it, then the test corpus of a cross-corpus run."""
        own = [(member, member.prepare_data()) for member in self.corpora.values()]
        return own + (self.test_corpus.prepared_corpora() if self.test_corpus is not None else [])

    def prepared_clips(self) -> tuple[list[Clip], list[dict]]:
        """Every member's prepared clips (prefixed) of this module's classes, read from the member's cache."""
        wanted = {clip.clip_id for clip in self.index().clips}
        clips, records = [], []
        for key, member in self.corpora.items():
            folder = member.cache_folder
            for clip in member.index().clips:
                own = self.prefixed(key, clip)
                if own.clip_id in wanted and (folder / f"{clip.clip_id}.pt").exists():
                    clips.append(own)
                    records.append(load_clip(folder / f"{clip.clip_id}.pt"))
        return clips, records
