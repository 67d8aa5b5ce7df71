"""Look-alike audio corpora made of real, short wav files: the demo generator's synthetic voices (pitch,
contour, loudness and breathiness differ by emotion and speaker), laid out as RAVDESS or EmoDB."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from datamodules.corpora import emodb, ravdess
from datamodules.demo_corpus import VOICES, make_subject, plan_clip, room_noise, synthesize_voice

SAMPLE_RATE = 16000
RAVDESS_CODES = {label: code for code, label in ravdess.EMOTIONS.items()}
EMODB_LETTERS = {label: letter for letter, label in emodb.EMOTIONS.items()}
EMODB_TEXTS = ("a01", "a02", "a04", "a05", "a07", "b01", "b02", "b03", "b09", "b10")


def write_wav(path: Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """16-bit mono PCM wav of ``audio`` (float in [-1, 1])."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(sample_rate)
        handle.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def voice(emotion: str, speaker: int, take: int, seconds: tuple[float, float] = (1.4, 1.7)) -> np.ndarray:
    """One synthetic utterance of ``emotion`` by ``speaker`` over low room noise; deterministic per take."""
    rng = np.random.default_rng([speaker, take, sorted(VOICES).index(emotion)])
    plan = plan_clip(rng, seconds, fps=25)
    speech = synthesize_voice(VOICES[emotion], make_subject(speaker, seed=0), plan, SAMPLE_RATE, rng)
    return speech + room_noise(rng, len(speech), SAMPLE_RATE)


def make_ravdess_speech(root: Path, actors: range, emotions: tuple[str, ...], takes: int) -> list[Path]:
    """``Actor_NN/03-01-EE-II-SS-RR-NN.wav`` audio-only speech files, ``takes`` (<= 8) per actor and emotion."""
    variants = [(i, s, r) for i in (1, 2) for s in (1, 2) for r in (1, 2)][:takes]
    return [
        write_wav(
            root / f"Actor_{actor:02d}" / f"03-01-{RAVDESS_CODES[emotion]}-{i:02d}-{s:02d}-{r:02d}-{actor:02d}.wav",
            voice(emotion, actor, take),
        )
        for actor in actors
        for emotion in emotions
        for take, (i, s, r) in enumerate(variants)
    ]


def make_emodb(root: Path, speakers: tuple[str, ...], emotions: tuple[str, ...], takes: int) -> list[Path]:
    """``wav/<speaker><text><letter>a.wav`` files, ``takes`` (<= 10) sentences per speaker and emotion."""
    return [
        write_wav(root / "wav" / f"{speaker}{text}{EMODB_LETTERS[emotion]}a.wav", voice(emotion, int(speaker), take))
        for speaker in speakers
        for emotion in emotions
        for take, text in enumerate(EMODB_TEXTS[:takes])
    ]
