"""Clip-level features for the classical baseline (``stage=baseline``): one vector per clip, cached.

Acoustic extractors (``AudioFeatures``) decode each clip at their sample rate and cut it to the span the
preprocessing's VAD keeps (``data.preprocess.vad``), so the baseline hears what the audio network hears;
face extractors (``datamodules.face_features``) read the prepared clip's face crops, so it sees what the
visual network sees. Acoustic feature sets:

* ``MfccStats``: mean, standard deviation, minimum and maximum over frames of 40 MFCCs and the standard
  deviation of their deltas (200 values), from the project's MFCC (``datamodules.mfcc.mfcc_frames``);
* ``OpenSmileFunctionals``: openSMILE's functionals of ``eGeMAPSv02`` (88 values) or ``ComParE_2016``
  (6373 values), from the ``opensmile`` package (its binary ships inside the wheel).

Vectors are cached one file per clip, ``<cache_dir>/utterance_features/<corpus>/<key>/<clip_id>.pt``, the
key hashing the extractor's identity, what it reads of the preprocessing (``ClipFeatures.inputs``: the VAD
config, or the clip cache) and the corpus's resolved root.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from datamodules.atomic import atomic_save
from datamodules.clips import Clip
from datamodules.decode import BadInputError, cut_clip, decode_clip
from datamodules.mfcc import mfcc_frames
from datamodules.preprocess import cache_folder
from datamodules.vad import trim_to_speech

if TYPE_CHECKING:
    from datamodules.datamodule import EmotionDataModule


class ClipFeatures(Protocol):
    """Maps a clip of a corpus to one feature vector."""

    def identity(self) -> dict:
        """Everything the vectors depend on but the corpus: part of the cache key."""

    def inputs(self, corpus: EmotionDataModule) -> dict:
        """What the vectors read of ``corpus``'s preprocessing (part of the cache key), made ready to read."""

    def clip_vector(self, clip: Clip, corpus: EmotionDataModule) -> np.ndarray:
        """The clip's vector; ``BadInputError`` when the clip cannot be read."""


class AudioFeatures:
    """An acoustic extractor: maps a clip's speech span (float32 ``[N]`` at ``sample_rate``) to one vector."""

    sample_rate: int

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def inputs(self, corpus: EmotionDataModule) -> dict:
        """The VAD config: the span the vector describes."""
        return {"vad": dict(corpus.preprocess_cfg["vad"])}

    def clip_vector(self, clip: Clip, corpus: EmotionDataModule) -> np.ndarray:
        """The vector of the clip's speech span; ``BadInputError`` when the clip cannot be decoded."""
        decoded = decode_clip(clip.path, sample_rate=self.sample_rate, with_video=False)
        audio = (decoded if clip.cut is None else cut_clip(decoded, clip.path, *clip.cut)).audio
        speech, _, _ = trim_to_speech(audio, self.sample_rate, corpus.preprocess_cfg["vad"])
        return self(speech)


@dataclass
class MfccStats(AudioFeatures):
    """Mean, std, min and max over frames of each MFCC, and the std of each delta: ``5 x n_mfcc`` values."""

    sample_rate: int = 16000
    n_mfcc: int = 40
    n_mels: int = 64
    f_min: float = 20.0
    f_max: float = 8000.0
    window_ms: float = 25.0
    hop_ms: float = 10.0

    def identity(self) -> dict:
        return {"extractor": "mfcc_stats", **asdict(self)}

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        static, delta, _ = mfcc_frames(audio, **asdict(self))  # each [n_mfcc, T]
        stats = (
            static.mean(1),
            static.std(1, correction=0),
            static.amin(1),
            static.amax(1),
            delta.std(1, correction=0),
        )
        return torch.cat(stats).numpy()


@dataclass
class OpenSmileFunctionals(AudioFeatures):
    """openSMILE functionals of ``feature_set``, a name of ``opensmile.FeatureSet`` (eGeMAPSv02, ComParE_2016)."""

    feature_set: str
    sample_rate: int = 16000

    @cached_property
    def _smile(self):
        import opensmile  # loads pandas and the openSMILE library: only when these features are asked for

        return opensmile.Smile(
            feature_set=opensmile.FeatureSet[self.feature_set], feature_level=opensmile.FeatureLevel.Functionals
        )

    def identity(self) -> dict:
        from importlib.metadata import version

        return {"extractor": "opensmile", **asdict(self), "opensmile": version("opensmile")}

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        return self._smile.process_signal(audio, self.sample_rate).to_numpy(dtype=np.float32)[0]


def feature_folder(cache_dir: str | Path, corpus: str, extractor: ClipFeatures, inputs: Mapping, source: str) -> Path:
    """Where ``extractor``'s vectors of one corpus are cached (see the module docstring); ``inputs`` is
    ``extractor.inputs`` of the corpus."""
    return cache_folder(Path(cache_dir) / "utterance_features", corpus, {**extractor.identity(), **inputs}, source)


def cached_vectors(
    clips: Sequence[Clip], clip_vector: Callable[[Clip], np.ndarray], folder: Path
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Per clip id its vector, read from ``folder`` or computed by ``clip_vector`` and saved there
    (atomically), and per clip id that could not be read the reason (such clips are left out, as
    preprocessing drops them)."""
    folder.mkdir(parents=True, exist_ok=True)
    vectors: dict[str, np.ndarray] = {}
    dropped: dict[str, str] = {}
    todo = [clip for clip in clips if not (folder / f"{clip.clip_id}.pt").exists()]
    for clip in tqdm(todo, desc=f"features {folder.parent.name}", unit="clip", disable=not todo):
        try:
            atomic_save(torch.tensor(clip_vector(clip)), folder / f"{clip.clip_id}.pt")
        except BadInputError as error:
            dropped[clip.clip_id] = str(error)
    for clip in clips:
        if clip.clip_id not in dropped:
            vectors[clip.clip_id] = torch.load(folder / f"{clip.clip_id}.pt", weights_only=True).numpy()
    return vectors, dropped
