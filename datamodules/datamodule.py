"""The LightningDataModule: index a corpus, prepare it (once, on rank zero), split it by subject or clip."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence
from itertools import accumulate
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, Sampler, WeightedRandomSampler

from datamodules.clips import Clip, IndexResult, NoClipsError, class_rule
from datamodules.mfcc import AUDIO_NORMS, audio_statistics
from datamodules.preprocess import (
    PreparedCorpus,
    available_cores,
    cache_folder,
    cut_source,
    format_report,
    load_clip,
    prepare_corpus,
)
from datamodules.splits import Fold, with_test_corpus

BALANCES: tuple[str, ...] = ("none", "classes")  # data.balance


def class_balanced_sampler(segment_labels: torch.Tensor) -> WeightedRandomSampler:
    """Training segments drawn with replacement, each with weight 1 / (its class's segment count), so that every
    class is drawn equally often in expectation; an epoch draws as many segments as there are."""
    counts = torch.bincount(segment_labels)
    weights = 1.0 / counts[segment_labels].double()
    return WeightedRandomSampler(weights, num_samples=len(segment_labels), replacement=True)


class SegmentDataset(Dataset):
    """The segments of a set of prepared clips; one item per 655 ms segment.

    ``inputs`` picks the tensors a batch carries: ``"audio"`` (uint8 [3,64,64]), ``"faces"`` (uint8
    [20,3,S,S]) and/or ``"frame_features"`` ([20,D]: rows of ``frame_features``, each clip's frozen-part
    output per face crop, in the order of its ``face_frames``). With ``audio_stats`` (per clip ``[2, 3, F]``),
    audio items also carry their clip's ``"audio_stats"`` (``EmotionDataModule``'s ``audio_norm``).
    """

    def __init__(
        self,
        records: Sequence[dict],
        clip_indices: Sequence[int],
        labels: Sequence[int],
        first_segment_ids: Sequence[int],
        inputs: Sequence[str],
        frame_features: Sequence[torch.Tensor] = (),
        audio_stats: Sequence[torch.Tensor] = (),
    ) -> None:
        self.records, self.clip_indices, self.labels = records, clip_indices, labels
        self.first_segment_ids, self.inputs, self.frame_features = first_segment_ids, tuple(inputs), frame_features
        self.audio_stats = audio_stats
        self.starts = [0, *accumulate(int(r["segment_times"].shape[0]) for r in records)]
        self.length = self.starts.pop()

    def __len__(self) -> int:
        return self.length

    @property
    def segment_labels(self) -> torch.Tensor:
        """The class index of every segment, in item order."""
        counts = [end - start for start, end in zip(self.starts, [*self.starts[1:], self.length])]
        return torch.tensor(self.labels, dtype=torch.long).repeat_interleave(torch.tensor(counts, dtype=torch.long))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        pos = bisect_right(self.starts, index) - 1
        k = index - self.starts[pos]
        record = self.records[pos]
        item = {
            "label": torch.tensor(self.labels[pos]),
            "clip_index": torch.tensor(self.clip_indices[pos]),
            "segment_id": torch.tensor(self.first_segment_ids[pos] + k),
        }
        if "audio" in self.inputs:
            item["audio"] = record["audio"][k]
            if self.audio_stats:
                item["audio_stats"] = self.audio_stats[pos]
        if "faces" in self.inputs:
            item["faces"] = record["face_frames"][record["face_index"][k]]
        if "frame_features" in self.inputs:
            item["frame_features"] = self.frame_features[pos][record["face_index"][k]]
        return item


class EmotionDataModule(L.LightningDataModule):
    """A corpus prepared with the paper's preprocessing and split into one fold's train/val/test clips.

    ``prepare_data`` (rank zero only) generates the corpus when it has a generator (the demo), indexes
    it and fills the clip cache; ``setup`` (every rank) reads the cache and builds the fold's datasets.

    ``audio_norm`` ("none", "utterance", "speaker" or "corpus") adds to every audio segment the mean and standard
    deviation of each image channel and row over its clip's frames ("utterance"), over all frames of all
    clips of its subject ("speaker") or of its corpus ("corpus": a ``MultiCorpusDataModule``'s member, else
    the whole corpus), for ``AudioModule(input_norm=...)`` to standardise with. "speaker" and "corpus" read
    unlabelled audio of every subject, the test subjects' included (never their labels): the speaker
    normalisation of speech-emotion work, which assumes a new speaker's other recordings are at hand.

    ``balance="classes"`` draws training segments with a ``class_balanced_sampler`` instead of shuffling them.

    Cross-corpus (``cv=cross_corpus``): with a ``test_corpus`` (another EmotionDataModule), the folds
    train and validate on this corpus and test on every clip of the other one. Both keep the classes
    they share, in this corpus's order (a warning names those dropped on either side), so class indices
    agree; the test corpus is prepared and read by its own module (its own root, indexer and cache) and
    only ``test_dataloader`` and ``corpus_of("test")`` reach it.
    """

    def __init__(
        self,
        name: str,
        root: str,
        indexer: Callable[..., IndexResult],
        classes: Sequence[str],
        preprocess: dict,
        cache_dir: str,
        cv: Callable[[list[Clip]], list[Fold]] | None = None,
        fold: int = 0,
        generator: Callable[..., object] | None = None,
        inputs: Sequence[str] = ("audio",),
        batch_size: int = 32,
        num_workers: int = 0,
        preprocess_workers: int | None = None,
        test_corpus: EmotionDataModule | None = None,
        audio_norm: str = "none",
        balance: str = "none",
    ) -> None:
        super().__init__()
        if audio_norm not in AUDIO_NORMS:
            raise ValueError(f"audio_norm must be one of {AUDIO_NORMS}, got {audio_norm!r}")
        if balance not in BALANCES:
            raise ValueError(f"balance must be one of {BALANCES}, got {balance!r}")
        self.audio_norm, self.balance = audio_norm, balance
        self.name, self.root, self.indexer, self.classes = name, Path(root), indexer, list(classes)
        self.configured_classes = list(classes)  # as configured, before a cross-corpus run keeps the shared ones
        self.test_corpus = test_corpus
        if test_corpus is not None:
            if test_corpus.source == self.source:
                raise ValueError(f"the test corpus {test_corpus.name} has the training corpus's root {self.source}")
            self.classes = shared_classes(self, test_corpus)
            test_corpus.classes = self.classes
        self.preprocess_cfg, self.cache_dir, self.cv, self.fold = preprocess, cache_dir, cv, fold
        self.generator, self.inputs = generator, tuple(inputs)
        self.batch_size, self.num_workers = batch_size, num_workers
        # one single-threaded worker per core: processes scale better than torch's threads on one clip
        self.preprocess_workers = preprocess_workers or available_cores()
        self.clips: list[Clip] = []
        self.frame_features: dict[str, torch.Tensor] = {}  # clip id -> frozen-part output per face crop
        self._prepared: PreparedCorpus | None = None
        self._indexed: IndexResult | None = None
        self._cache_source: str | None = None
        self._folds: list[Fold] | None = None

    def index(self) -> IndexResult:
        """The corpus's clips of the configured classes (the others move to ``excluded``); generates the
        demo corpus first if needed.

        Cheap and deterministic, so every process (every DDP rank) can call it.
        """
        if self._indexed is None:
            if self.generator is not None:
                self.generator(self.root)
            result = self.indexer(self.root)
            result.exclude(lambda clip: class_rule(clip, self.classes))
            self._indexed = result
        return self._indexed

    @property
    def folds(self) -> list[Fold]:
        """Folds over the indexed clips, so they do not move when preprocessing drops a clip."""
        if self._folds is None:
            if self.cv is None:
                raise ValueError(f"{self.name}: no cross-validation scheme configured")
            folds = self.cv(self.index().clips)
            if self.test_corpus is not None:
                groups = self.test_corpus.test_groups()
                folds = [
                    with_test_corpus(
                        fold,
                        clips,
                        index=len(groups) * fold.index + position,
                        corpus=name,
                        dropped_classes=self.dropped_classes(clips, configured),
                        several=len(groups) > 1,
                    )
                    for fold in folds
                    for position, (name, clips, configured) in enumerate(groups)
                ]
            self._folds = folds
        return self._folds

    def test_groups(self) -> list[tuple[str, list[Clip], list[str]]]:
        """The test corpora this module holds, each with its clips and its configured classes: one test fold each
        when this module is a run's test corpus (this corpus alone; a ``MultiCorpusDataModule`` one per member)."""
        return [(self.name, self.index().clips, self.configured_classes)]

    def dropped_classes(self, test_clips: Sequence[Clip], test_classes: Sequence[str]) -> dict[str, list[str]]:
        """The classes a test corpus's metrics leave out: ``not_in_test``, this module's classes without a clip in
        ``test_clips``; ``not_in_training``, those of ``test_classes`` (its configured ones) this module lacks."""
        present = {clip.label for clip in test_clips}
        return {
            "not_in_test": [label for label in self.classes if label not in present],
            "not_in_training": [label for label in test_classes if label not in self.classes],
        }

    def by_corpus(self, clips: Sequence[Clip]) -> list[tuple[EmotionDataModule, list[Clip], list[str]]]:
        """``clips`` of this module per corpus that prepares them: the corpus's module, its own clips and their ids
        here (this module alone; a ``MultiCorpusDataModule`` splits them by member)."""
        return [(self, list(clips), [clip.clip_id for clip in clips])]

    def corpus_of(self, part: str) -> EmotionDataModule:
        """The module whose clips make up ``part`` ("train", "val" or "test") of the folds: the test corpus
        for "test" in a cross-corpus run, this one otherwise."""
        return self.test_corpus if part == "test" and self.test_corpus is not None else self

    @property
    def source(self) -> str:
        """The corpus's resolved root (symlinks followed): part of the clip cache key."""
        return str(self.root.resolve())

    @property
    def cache_folder(self) -> Path:
        """Where this corpus's prepared clips are cached (``<cache_dir>/<name>/<key>``)."""
        return cache_folder(self.cache_dir, self.name, self.preprocess_cfg, self.cache_source)

    @property
    def cache_source(self) -> str:
        """``source`` and the cuts of clips cut out of longer recordings (``cut_source``): the cache key's part
        that names the corpus's content. A root without clips has no cuts: its key is its root's (indexing it
        again when it is prepared says what is missing)."""
        if self._cache_source is None:
            try:
                clips = self.index().clips
            except NoClipsError:
                return self.source
            self._cache_source = cut_source(self.source, clips)  # once: cache_folder is asked for per clip
        return self._cache_source

    def prepare_data(self) -> PreparedCorpus:
        """Index and preprocess the corpus into the clip cache; prints the report (one line, ``cache ready:``,
        when every clip was prepared before) and returns it.

        Every fit calls this; after the first call in a process the cache is known to be complete.
        Preprocessing leaves the global random state as it was (``FaceDetector.mtcnn``), so a run that
        fills the cache trains exactly like one that finds it full.
        """
        if self._prepared is None:
            indexed = self.index()
            self._prepared = prepare_corpus(
                indexed.clips,
                self.preprocess_cfg,
                Path(self.cache_dir),
                corpus=self.name,
                source=self.cache_source,
                workers=self.preprocess_workers,
                indexed=indexed,
            )
            report = self._prepared.report
            ready = not report["clips_processed_now"]
            print(
                f"cache ready: {report['cache']} ({report['clips_prepared']} clips)" if ready else format_report(report)
            )
            if self.test_corpus is not None:
                self.test_corpus.prepare_data()
        return self._prepared

    def setup(self, stage: str | None = None) -> None:
        if self.test_corpus is not None:
            self.test_corpus.setup(stage)
        if self.clips:
            return
        self.clips, self.records = self.prepared_clips()
        if not self.clips:
            raise RuntimeError(f"no prepared clips for {self.name} in {self.cache_folder}: run prepare_data first")
        self.audio_stats = self._audio_stats()
        self.first_segment_ids = [0, *accumulate(int(r["segment_times"].shape[0]) for r in self.records)][:-1]

    def prepared_corpora(self) -> list[tuple[EmotionDataModule, PreparedCorpus]]:
        """Every corpus this module prepares, each with what ``prepare_data`` made of it: this corpus (a
        ``MultiCorpusDataModule``: each member) and then the test corpus of a cross-corpus run."""
        own = [(self, self.prepare_data())]
        return own + (self.test_corpus.prepared_corpora() if self.test_corpus is not None else [])

    def prepared_clips(self) -> tuple[list[Clip], list[dict]]:
        """The indexed clips that preprocessing kept, and their cache files' contents."""
        folder = self.cache_folder
        clips = [c for c in self.index().clips if (folder / f"{c.clip_id}.pt").exists()]
        return clips, [load_clip(folder / f"{c.clip_id}.pt") for c in clips]

    def _audio_stats(self) -> list[torch.Tensor]:
        """Per prepared clip, the ``audio_statistics`` of its clip, subject or corpus (``audio_norm``); [] for
        "none"."""
        if self.audio_norm == "none" or not self.preprocess_cfg.get("audio", True):
            return []
        group: Callable[[Clip], str] = {
            "utterance": lambda clip: clip.clip_id,
            "speaker": lambda clip: clip.subject,
            "corpus": lambda clip: str(clip.extra.get("corpus", self.name)),
        }[self.audio_norm]
        images: dict[str, list[torch.Tensor]] = {}
        for clip, record in zip(self.clips, self.records):
            images.setdefault(group(clip), []).append(record["audio"])
        stats = {key: audio_statistics(value) for key, value in images.items()}
        return [stats[group(clip)] for clip in self.clips]

    @property
    def current_fold(self) -> Fold:
        return self.folds[self.fold]

    def dataset(self, clip_ids: Sequence[str], inputs: Sequence[str] | None = None) -> SegmentDataset:
        """The segments of the prepared clips among ``clip_ids`` (clips dropped in preprocessing vanish),
        carrying ``inputs`` (default: the module's; ``frame_features`` reads ``self.frame_features``)."""
        wanted = set(clip_ids)
        positions = [i for i, c in enumerate(self.clips) if c.clip_id in wanted]
        inputs = inputs or self.inputs
        features = [self.frame_features[self.clips[i].clip_id] for i in positions] if "frame_features" in inputs else ()
        return SegmentDataset(
            [self.records[i] for i in positions],
            positions,
            [self.classes.index(self.clips[i].label) for i in positions],
            [self.first_segment_ids[i] for i in positions],
            inputs,
            features,
            [self.audio_stats[i] for i in positions] if self.audio_stats else (),
        )

    def _loader(self, part: str, shuffle: bool) -> DataLoader:
        """Batches of the current fold's ``part``, read from the corpus that holds it, with this module's inputs;
        training batches shuffled, or drawn by ``class_balanced_sampler`` (``balance="classes"``)."""
        dataset = self.corpus_of(part).dataset(getattr(self.current_fold, part), inputs=self.inputs)
        sampler: Sampler | None = None
        if shuffle and self.balance == "classes":
            sampler, shuffle = class_balanced_sampler(dataset.segment_labels), False
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


def shared_classes(train: EmotionDataModule, test: EmotionDataModule) -> list[str]:
    """The classes of ``train`` that ``test`` also has, in ``train``'s order; warns naming the classes of
    either corpus that the other lacks (they are left out of training and of the test)."""
    shared = [label for label in train.classes if label in test.classes]
    if not shared:
        raise ValueError(f"{train.name} ({train.classes}) and {test.name} ({test.classes}) share no class")
    dropped = {module.name: [c for c in module.classes if c not in shared] for module in (train, test)}
    if any(dropped.values()):
        rank_zero_warn(
            f"cross-corpus {train.name} -> {test.name}: classes {shared} kept; dropped "
            + "; ".join(f"from {name}: {labels}" for name, labels in dropped.items() if labels)
        )
    return shared
