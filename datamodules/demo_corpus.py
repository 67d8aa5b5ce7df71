"""Generate the built-in demo corpus: real mp4 clips (H.264 video + AAC audio) in the RML layout.

``<out>/s<N>/<emo><k>.mp4`` with emotion codes an, di, fe, ha, sa, su. Every clip has the shape of
an RML recording as the paper describes it (§3.1, Fig. 1 and 3): low noise, then a voiced
"utterance" of a few syllables, then low noise again; a drawn face goes from a near-neutral
onset to the emotion's expression at the apex (the speech) and relaxes in the offset, and its
mouth opens with the audio envelope. Pitch contour, loudness, syllable rate, breathiness and
spectral tilt of the voice, and the mouth, brows and eyes of the face, depend on the emotion;
pitch, skin, face size and hair vary by subject; durations, silences, pitch, rates, background,
light and framing vary per clip. The voice's energy lies in 300-3400 Hz, the silences' below it, so
a speech-band energy VAD (Eq. 1) finds the utterance.

Deterministic by seed: each clip draws from its own generator seeded by (seed, subject,
emotion, k), so a clip's decoded content does not depend on which other clips are generated.
Files are written to a temporary name and renamed; complete files are not rewritten;
``demo_corpus.json`` records the parameters and, written last, that the corpus is complete.

    python -m datamodules.demo_corpus --out data/demo [--subjects 4 --clips-per-emotion 3 ...]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from datamodules.corpora import EMOTION_CODES

CLIP_SUFFIX = ".mp4"
MANIFEST_NAME = "demo_corpus.json"
GENERATOR_VERSION = 3  # bump when the code changes what a clip looks or sounds like (recorded in the manifest)
SILENCE_RANGE_S = (0.3, 0.6)  # noise before and after the utterance, each side
MIN_SPEECH_S = 0.7  # room for at least one 655 ms MFCC segment (§3.2)
VIDEO_CODEC = "libx264" if "libx264" in av.codecs_available else "mpeg4"
AUDIO_CODEC = "aac"
_AUDIO_FRAME_SAMPLES = 1024  # the AAC frame size
_GAIN_HOP = 32  # samples


@dataclass(frozen=True)
class VoiceStyle:
    """How an emotion sounds: pitch level and contour, loudness, syllable rhythm, timbre."""

    f0_hz: float
    contour: str  # a key of _CONTOURS, shape of f0 over the utterance
    f0_range: float  # relative excursion of the contour
    loudness: float  # peak amplitude of the voice
    am_hz: float  # amplitude-modulation (syllabic pulse) rate
    am_depth: float
    tilt: float  # harmonic roll-off exponent: high = dark, low = bright
    vibrato_hz: float
    vibrato_depth: float
    breath: float  # share of band-limited noise mixed into the voice


@dataclass(frozen=True)
class FaceStyle:
    """How an emotion looks; each field is 0 (or 1 for scales) on a neutral face."""

    mouth_curve: float  # +1 smile (corners up) ... -1 corners down
    mouth_width: float
    mouth_open: float  # scale on the envelope-driven opening
    brow_raise: float
    brow_tilt: float  # +1 inner ends down (frown) ... -1 inner ends up (worry)
    eye_open: float


# The demo proves the plumbing, not accuracy: every emotion differs from every other in several cues,
# by more than subjects and clips vary, so a model trained on two subjects recognises a third.
VOICES: dict[str, VoiceStyle] = {
    "anger": VoiceStyle(180, "arch", 0.25, 0.85, 8.0, 0.7, 0.3, 0.0, 0.0, 0.0),
    "disgust": VoiceStyle(135, "fall", 0.20, 0.40, 3.0, 0.5, 1.7, 0.0, 0.0, 0.25),
    "fear": VoiceStyle(290, "arch", 0.10, 0.30, 6.0, 0.5, 1.3, 9.0, 0.08, 0.45),
    "happiness": VoiceStyle(235, "wave", 0.35, 0.55, 5.0, 0.5, 0.7, 0.0, 0.0, 0.0),
    "sadness": VoiceStyle(105, "fall", 0.25, 0.16, 2.0, 0.3, 2.4, 0.0, 0.0, 0.15),
    "surprise": VoiceStyle(200, "rise", 0.80, 0.60, 3.5, 0.4, 1.0, 0.0, 0.0, 0.05),
}
FACE_SHADING_RINGS = 6  # concentric ellipses from 0.8 of the skin's colour at the edge to the skin's at the centre
NEUTRAL_FACE = FaceStyle(0.0, 1.0, 0.6, 0.0, 0.0, 1.0)
FACES: dict[str, FaceStyle] = {
    "anger": FaceStyle(-0.3, 0.85, 0.6, -0.5, 1.0, 0.70),
    "disgust": FaceStyle(-0.7, 0.80, 0.6, -0.3, 0.4, 0.50),
    "fear": FaceStyle(-0.2, 1.15, 1.0, 0.7, -0.8, 1.20),
    "happiness": FaceStyle(1.0, 1.30, 0.7, 0.2, 0.0, 0.75),
    "sadness": FaceStyle(-0.9, 0.85, 0.55, 0.0, -1.0, 0.60),
    "surprise": FaceStyle(0.0, 0.80, 1.3, 0.75, 0.0, 1.15),
}
_CONTOURS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "arch": lambda u, r: 1 + r * np.sin(np.pi * u),
    "fall": lambda u, r: 1 + r * (0.5 - u),
    "rise": lambda u, r: 1 + r * u**2,
    "wave": lambda u, r: 1 + r * np.sin(2 * np.pi * u) * np.sin(np.pi * u),
}
# (F1, F2, F3) of a, e, i, o, u: each syllable gets one, so the spectrum changes as in speech.
_VOWEL_FORMANTS_HZ = ((730, 1090, 2440), (530, 1840, 2480), (390, 1990, 2550), (570, 840, 2410), (440, 1020, 2240))
_FORMANT_BANDWIDTHS_HZ = (130, 160, 220)
_SKIN_TONES = ((241, 194, 167), (224, 172, 105), (198, 134, 66), (141, 85, 36), (255, 219, 172), (234, 192, 134))
_HAIR_COLOURS = ((40, 30, 20), (90, 60, 30), (20, 20, 20), (150, 110, 60), (110, 110, 110))


@dataclass(frozen=True)
class Subject:
    """Traits that stay the same across one subject's clips."""

    number: int
    f0_scale: float
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    face_scale: float
    background: tuple[int, int, int]
    noisy_background: bool
    x_offset: float  # fraction of the frame width


def make_subject(number: int, seed: int) -> Subject:
    """Subject ``number``'s traits; odd numbers get a lower voice (by less than emotions differ)."""
    rng = np.random.default_rng([seed, number])
    return Subject(
        number=number,
        f0_scale=(0.92 if number % 2 else 1.08) * rng.uniform(0.97, 1.03),
        skin=_SKIN_TONES[rng.integers(len(_SKIN_TONES))],
        hair=_HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))],
        face_scale=rng.uniform(0.88, 1.08),
        background=tuple(int(value) for value in rng.integers(60, 200, size=3)),
        noisy_background=bool(number % 2 == 0),
        x_offset=rng.uniform(-0.08, 0.08),
    )


def vary_appearance(subject: Subject, rng: np.random.Generator) -> Subject:
    """The subject as one clip films them: background, light on the skin and framing change per clip,
    so that a model trained on two subjects learns the expression rather than the recording."""
    light = rng.uniform(0.88, 1.08)
    return replace(
        subject,
        skin=tuple(int(min(255, channel * light)) for channel in subject.skin),
        face_scale=subject.face_scale * rng.uniform(0.95, 1.05),
        background=tuple(int(value) for value in rng.integers(60, 200, size=3)),
        x_offset=rng.uniform(-0.08, 0.08),
    )


@dataclass(frozen=True)
class ClipPlan:
    """Everything random about one clip, drawn up front from the clip's own generator."""

    duration_s: float
    speech_start_s: float
    speech_end_s: float
    f0_jitter: float
    am_jitter: float
    syllables: tuple[tuple[float, float, int], ...]  # (start_s, end_s, vowel index)
    am_phase: float
    motion_phases: tuple[float, float]  # of the horizontal and vertical sway


def plan_clip(rng: np.random.Generator, seconds: tuple[float, float], fps: int) -> ClipPlan:
    """Duration (a whole number of frames), silences, syllables and jitter of one clip."""
    duration = round(rng.uniform(*seconds) * fps) / fps
    lead, trail = rng.uniform(*SILENCE_RANGE_S, size=2)
    start, end = lead, duration - trail
    n_syllables = int(rng.integers(2, 5))
    gaps = rng.uniform(0.05, 0.12, size=n_syllables - 1)
    weights = rng.uniform(0.7, 1.3, size=n_syllables)
    lengths = weights / weights.sum() * (end - start - gaps.sum())
    syllables, cursor = [], start
    for position, length in enumerate(lengths):
        syllables.append((cursor, cursor + length, int(rng.integers(len(_VOWEL_FORMANTS_HZ)))))
        cursor += length + (gaps[position] if position < len(gaps) else 0.0)
    return ClipPlan(
        duration_s=duration,
        speech_start_s=start,
        speech_end_s=end,
        f0_jitter=rng.uniform(0.96, 1.04),
        am_jitter=rng.uniform(0.9, 1.1),
        syllables=tuple(syllables),
        am_phase=rng.uniform(0, 2 * np.pi),
        motion_phases=tuple(rng.uniform(0, 2 * np.pi, size=2)),
    )


def _vowel_gain(frequency_hz: np.ndarray, formants: Sequence[float]) -> np.ndarray:
    """Formant envelope, band-limited to the speech band (roll-off below 280 Hz, above 3600 Hz)."""
    gain = 0.3 + sum(  # a floor of 0.3: vowels colour the voice less than the emotion's tilt does
        np.exp(-0.5 * ((frequency_hz - centre) / width) ** 2) for centre, width in zip(formants, _FORMANT_BANDWIDTHS_HZ)
    )
    return gain / (1 + (280 / frequency_hz) ** 4) / (1 + (frequency_hz / 3600) ** 8)


def synthesize_voice(
    voice: VoiceStyle, subject: Subject, plan: ClipPlan, sample_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """The utterance alone (zeros outside the syllables): a harmonic source shaped by formants."""
    n_samples = int(round(plan.duration_s * sample_rate))
    t = np.arange(n_samples) / sample_rate
    speech_u = np.clip((t - plan.speech_start_s) / (plan.speech_end_s - plan.speech_start_s), 0, 1)
    f0 = voice.f0_hz * subject.f0_scale * plan.f0_jitter * _CONTOURS[voice.contour](speech_u, voice.f0_range)
    f0 = f0 * (1 + voice.vibrato_depth * np.sin(2 * np.pi * voice.vibrato_hz * t))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    pulse = 1 - voice.am_depth * (0.5 - 0.5 * np.cos(2 * np.pi * voice.am_hz * plan.am_jitter * t + plan.am_phase))
    signal = np.zeros(n_samples)
    for start_s, end_s, vowel in plan.syllables:
        a, b = int(start_s * sample_rate), min(int(end_s * sample_rate), n_samples)
        harmonics = np.arange(1, int(3900 / f0[a:b].min()) + 1)[:, None]
        # Harmonic gains change slowly with f0: evaluate them every _GAIN_HOP samples and hold.
        coarse = _vowel_gain(harmonics * f0[None, a:b:_GAIN_HOP], _VOWEL_FORMANTS_HZ[vowel])
        gains = np.repeat(coarse, _GAIN_HOP, axis=1)[:, : b - a] * harmonics ** (-voice.tilt)
        voiced = (gains * np.sin(harmonics * phase[None, a:b])).sum(axis=0)
        voiced /= np.abs(voiced).max()
        breath = _band_noise(rng, b - a, sample_rate, 1000, 3400)
        envelope = np.sin(np.pi * np.linspace(0, 1, b - a)) ** 0.5 * pulse[a:b]
        signal[a:b] = ((1 - voice.breath) * voiced + voice.breath * breath) * envelope
    return (voice.loudness * signal / np.abs(signal).max()).astype(np.float32)


def _band_noise(rng: np.random.Generator, n: int, sample_rate: int, low_hz: float, high_hz: float) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    frequencies = np.fft.rfftfreq(n, 1 / sample_rate)
    spectrum[(frequencies < low_hz) | (frequencies > high_hz)] = 0
    noise = np.fft.irfft(spectrum, n)
    return noise / (np.abs(noise).max() + 1e-12)


def room_noise(rng: np.random.Generator, n_samples: int, sample_rate: int) -> np.ndarray:
    """Low background: mains hum and rumble below the speech band, and a faint hiss."""
    t = np.arange(n_samples) / sample_rate
    hum = 0.004 * np.sin(2 * np.pi * 50 * t + rng.uniform(0, 2 * np.pi))
    rumble = 0.003 * np.sin(2 * np.pi * rng.uniform(70, 110) * t + rng.uniform(0, 2 * np.pi))
    hiss = 0.0004 * rng.standard_normal(n_samples)
    return (hum + rumble + hiss).astype(np.float32)


def mouth_envelope(voice: np.ndarray, frame_times: np.ndarray, sample_rate: int, fps: float) -> np.ndarray:
    """RMS of the voice around each frame, scaled to [0, 1]: how far the mouth opens."""
    half = int(sample_rate / fps / 2)
    centres = (frame_times * sample_rate).astype(int)
    rms = np.array([np.sqrt(np.mean(voice[max(c - half, 0) : c + half + 1] ** 2)) for c in centres])
    return rms / (rms.max() + 1e-12)


def expression_weight(time_s: float, plan: ClipPlan) -> float:
    """Onset, apex, offset (Fig. 3): 0.25 at the start, full during the speech, 0.6 at the end."""
    if time_s < plan.speech_start_s:
        return 0.25 + 0.75 * time_s / plan.speech_start_s
    if time_s <= plan.speech_end_s:
        return 1.0
    return 1.0 - 0.4 * (time_s - plan.speech_end_s) / max(plan.duration_s - plan.speech_end_s, 1e-6)


def _blend(neutral: FaceStyle, target: FaceStyle, weight: float) -> FaceStyle:
    return FaceStyle(*(n + weight * (x - n) for n, x in zip(vars(neutral).values(), vars(target).values())))


def background_image(subject: Subject, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    width, height = size
    image = np.empty((height, width, 3), np.float32)
    image[:] = subject.background
    if subject.noisy_background:
        image += rng.normal(0, 14, size=(height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def draw_face(
    background: np.ndarray, subject: Subject, face: FaceStyle, mouth_open: float, centre: tuple[float, float]
) -> np.ndarray:
    """One RGB frame: hair, neck, ears, face, eye sockets, brows, eyes, nose, lips, mouth over ``background``.

    The face's shading (darker towards its edge), the dark eye sockets, lids and nostrils, and the lips are
    there for the face detector: a flat drawing without the dark eye regions and the lip band a real face
    has is missed by MTCNN in many frames (generator version 2: 38 % of the frames of 12 demo clips;
    version 3: 3 %), and its box jumps from frame to frame.
    """
    height = background.shape[0]
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    cx, cy = centre
    ry = 0.36 * height * subject.face_scale
    rx = 0.74 * ry
    skin = subject.skin
    shade = tuple(int(channel * 0.8) for channel in skin)
    deep_shade = tuple(int(channel * 0.6) for channel in skin)
    socket = tuple(int(channel * 0.68) for channel in skin)
    draw.ellipse((cx - 1.08 * rx, cy - 1.12 * ry, cx + 1.08 * rx, cy + 0.55 * ry), fill=subject.hair)
    draw.rectangle((cx - 0.45 * rx, cy + 0.7 * ry, cx + 0.45 * rx, height), fill=shade)
    for side in (-1, 1):
        draw.ellipse(
            (cx + side * rx - 0.14 * rx, cy - 0.2 * ry, cx + side * rx + 0.14 * rx, cy + 0.15 * ry), fill=shade
        )
    for ring in range(FACE_SHADING_RINGS):
        light, inset = 0.8 + 0.2 * ring / (FACE_SHADING_RINGS - 1), 1.0 - 0.06 * ring
        draw.ellipse(
            (cx - inset * rx, cy - inset * ry * (1 + 0.02 * ring), cx + inset * rx, cy + inset * ry),
            fill=tuple(int(channel * light) for channel in skin),
        )

    eye_y, brow_y = cy - 0.18 * ry, cy - 0.40 * ry - 0.14 * ry * face.brow_raise
    eye_rx, eye_ry = 0.19 * rx, max(0.08 * ry * face.eye_open, 1.5)
    for side in (-1, 1):
        eye_x = cx + side * 0.4 * rx
        draw.ellipse((eye_x - 1.35 * eye_rx, eye_y - 0.16 * ry, eye_x + 1.35 * eye_rx, eye_y + 0.11 * ry), fill=socket)
        draw.line(
            (
                cx + side * 0.14 * rx,
                brow_y + 0.14 * ry * face.brow_tilt,
                cx + side * 0.66 * rx,
                brow_y - 0.05 * ry * face.brow_tilt,
            ),
            fill=tuple(int(channel * 0.45) for channel in subject.hair),  # dark even under grey hair
            width=max(int(0.095 * ry), 2),
        )
        eye_box = (eye_x - eye_rx, eye_y - eye_ry, eye_x + eye_rx, eye_y + eye_ry)
        draw.ellipse(eye_box, fill=(200, 192, 186))
        iris = min(eye_ry, 0.12 * rx)
        draw.ellipse((eye_x - iris, eye_y - iris, eye_x + iris, eye_y + iris), fill=(55, 70, 90))
        draw.ellipse((eye_x - iris / 2, eye_y - iris / 2, eye_x + iris / 2, eye_y + iris / 2), fill=(10, 10, 10))
        draw.arc(eye_box, 180, 360, fill=(30, 22, 18), width=max(int(0.03 * ry), 2))

    nose_y = cy + 0.15 * ry
    draw.polygon(((cx, cy - 0.1 * ry), (cx - 0.12 * rx, nose_y), (cx + 0.12 * rx, nose_y)), fill=shade)
    for side in (-1, 1):
        nostril_x = cx + side * 0.07 * rx
        draw.ellipse(
            (nostril_x - 0.035 * rx, nose_y - 0.03 * ry, nostril_x + 0.035 * rx, nose_y + 0.01 * ry), fill=deep_shade
        )

    mouth_y, half_width = cy + 0.5 * ry, 0.33 * rx * face.mouth_width
    opening = (0.04 + 0.9 * mouth_open) * 0.22 * ry * face.mouth_open
    s = np.linspace(-1, 1, 17)
    centre_line = mouth_y - 0.16 * ry * face.mouth_curve * s**2
    xs = cx + half_width * s
    upper_y = centre_line - 0.25 * opening * (1 - s**2)
    lower_y = centre_line + 0.75 * opening * (1 - s**2)
    lip = 0.06 * ry * (1 - 0.5 * s**2)
    lips = list(zip(xs, upper_y - lip)) + list(zip(xs, lower_y + 1.3 * lip))[::-1]
    draw.polygon(lips, fill=(int(skin[0] * 0.75), int(skin[1] * 0.5), int(skin[2] * 0.5)))
    mouth = list(zip(xs, upper_y)) + list(zip(xs, lower_y))[::-1]
    draw.polygon(mouth, fill=(60, 15, 20), outline=(120, 40, 45), width=max(int(0.02 * ry), 1))
    return np.asarray(image)


def render_frames(
    emotion: str,
    subject: Subject,
    plan: ClipPlan,
    voice: np.ndarray,
    *,
    size: tuple[int, int],
    fps: float,
    sample_rate: int,
    rng: np.random.Generator,
) -> Iterator[np.ndarray]:
    """The clip's RGB frames: face sways slightly, nods with the voice, mouth follows the envelope."""
    n_frames = int(round(plan.duration_s * fps))
    frame_times = np.arange(n_frames) / fps
    openings = mouth_envelope(voice, frame_times, sample_rate, fps)
    background = background_image(subject, size, rng)
    width, height = size
    base_x, base_y = width * (0.5 + subject.x_offset), height * 0.5
    phase_x, phase_y = plan.motion_phases
    for time_s, opening in zip(frame_times, openings):
        face = _blend(NEUTRAL_FACE, FACES[emotion], expression_weight(time_s, plan))
        centre = (
            base_x + 0.012 * width * np.sin(2 * np.pi * 0.4 * time_s + phase_x),
            base_y + 0.008 * height * np.sin(2 * np.pi * 0.3 * time_s + phase_y) + 0.01 * height * opening,
        )
        yield draw_face(background, subject, face, opening, centre)


def write_clip(
    path: Path, audio: np.ndarray, frames: Iterator[np.ndarray], *, size: tuple[int, int], fps: int, sample_rate: int
) -> None:
    """Encode ``frames`` (H.264, or MPEG-4 part 2 without libx264; yuv420p) and ``audio`` (AAC mono)
    into ``path``, atomically."""
    # The process id keeps concurrent writers (e.g. several DDP ranks) off each other's temp file.
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with av.open(str(partial), mode="w", format="mp4") as container:
            video = container.add_stream(VIDEO_CODEC, rate=fps)
            video.width, video.height = size
            video.pix_fmt = "yuv420p"
            # One encoder thread: the same decoded frames whatever the machine's core count.
            video.codec_context.thread_count = 1
            if VIDEO_CODEC == "libx264":
                # asm=0 (x264's C code): with its assembly, the same frames came out as a different
                # bitstream after other work in the process (at 320x240 not 256x192: presumably a read
                # of uninitialised memory), so a clip depended on what was generated before it. Twice
                # as slow to encode, still a small part of generating a clip.
                video.codec_context.options = {"preset": "veryfast", "crf": "20", "x264-params": "asm=0"}
            sound = container.add_stream(AUDIO_CODEC, rate=sample_rate, layout="mono")
            audio_written = 0
            for index, rgb in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts, frame.time_base = index, Fraction(1, fps)
                container.mux(video.encode(frame))
                audio_due = min(int(round((index + 1) / fps * sample_rate)), audio.size)
                while audio_written < audio_due:
                    audio_written = _mux_audio(container, sound, audio, audio_written, sample_rate)
            while audio_written < audio.size:
                audio_written = _mux_audio(container, sound, audio, audio_written, sample_rate)
            container.mux(video.encode())
            container.mux(sound.encode())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _mux_audio(container, stream, audio: np.ndarray, start: int, sample_rate: int) -> int:
    chunk = np.ascontiguousarray(audio[start : start + _AUDIO_FRAME_SAMPLES][None, :])
    frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = sample_rate, start, Fraction(1, sample_rate)
    container.mux(stream.encode(frame))
    return start + chunk.shape[1]


def clip_path(out: Path, subject: int, code: str, k: int) -> Path:
    return out / f"s{subject}" / f"{code}{k}{CLIP_SUFFIX}"


def _jobs(out: Path, subjects: int, clips_per_emotion: int) -> list[tuple[Path, int, str, int]]:
    """(path, subject number, emotion, k) of every clip of the corpus, in generation order."""
    return [
        (clip_path(out, number, code, k), number, emotion, k)
        for number in range(1, subjects + 1)
        for code, emotion in EMOTION_CODES.items()
        for k in range(1, clips_per_emotion + 1)
    ]


def generate_clip(
    path: Path,
    subject: Subject,
    emotion: str,
    k: int,
    *,
    seconds: tuple[float, float],
    size: tuple[int, int],
    fps: int,
    sample_rate: int,
    seed: int,
) -> None:
    """Synthesize and write one clip; its randomness comes from (seed, subject, emotion, k) only."""
    emotion_index = list(EMOTION_CODES.values()).index(emotion)
    rng = np.random.default_rng([seed, subject.number, emotion_index, k])
    subject = vary_appearance(subject, np.random.default_rng([seed, subject.number, emotion_index, k, 1]))
    plan = plan_clip(rng, seconds, fps)
    voice = synthesize_voice(VOICES[emotion], subject, plan, sample_rate, rng)
    audio = np.clip(voice + room_noise(rng, voice.size, sample_rate), -1, 1).astype(np.float32)
    frames = render_frames(emotion, subject, plan, voice, size=size, fps=fps, sample_rate=sample_rate, rng=rng)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_clip(path, audio, frames, size=size, fps=fps, sample_rate=sample_rate)


def _parameters(**parameters) -> dict:
    """The generation parameters as the manifest stores them (tuples become lists), with the version."""
    return {
        "version": GENERATOR_VERSION,
        **{name: list(value) if isinstance(value, tuple) else value for name, value in parameters.items()},
    }


def _check_parameters(subjects: int, clips_per_emotion: int, seconds, size, fps: int, sample_rate: int) -> None:
    shortest = 2 * SILENCE_RANGE_S[1] + MIN_SPEECH_S
    if subjects < 1 or clips_per_emotion < 1:
        raise ValueError(f"subjects and clips_per_emotion must be >= 1, got {subjects}, {clips_per_emotion}")
    if len(seconds) != 2 or not shortest <= seconds[0] <= seconds[1]:
        raise ValueError(
            f"seconds must be (min, max) with {shortest:.1f} <= min <= max (silence of up to "
            f"{SILENCE_RANGE_S[1]} s each side of >= {MIN_SPEECH_S} s of speech), got {seconds}"
        )
    if len(size) != 2 or size[0] % 2 or size[1] % 2 or min(size) < 64:
        raise ValueError(f"size must be (width, height), even, each >= 64 (yuv420p), got {size}")
    if fps < 1 or sample_rate < 8000:
        raise ValueError(f"fps must be >= 1 and sample_rate >= 8000, got {fps}, {sample_rate}")


def _read_manifest(out: Path) -> dict | None:
    manifest = out / MANIFEST_NAME
    return json.loads(manifest.read_text()) if manifest.is_file() else None


def _write_manifest(out: Path, parameters: dict, complete: bool) -> None:
    partial = out / f".{MANIFEST_NAME}.{os.getpid()}.partial"
    partial.write_text(json.dumps({"parameters": parameters, "complete": complete}, indent=2) + "\n")
    os.replace(partial, out / MANIFEST_NAME)


def generate_demo_corpus(
    out: str | Path,
    *,
    subjects: int = 4,
    clips_per_emotion: int = 6,
    seconds: tuple[float, float] = (1.9, 2.4),
    size: tuple[int, int] = (240, 180),
    fps: int = 30,
    sample_rate: int = 16000,
    seed: int = 0,
    progress: bool = False,
) -> list[Path]:
    """Write ``subjects`` x 6 emotions x ``clips_per_emotion`` clips under ``out``; return their paths.

    Files already there are kept (they only appear once complete). A corpus folder generated with
    other parameters is refused rather than mixed with new clips.
    """
    _check_parameters(subjects, clips_per_emotion, seconds, size, fps, sample_rate)
    out = Path(out)
    parameters = _parameters(
        subjects=subjects,
        clips_per_emotion=clips_per_emotion,
        seconds=tuple(seconds),
        size=tuple(size),
        fps=fps,
        sample_rate=sample_rate,
        seed=seed,
    )
    manifest = _read_manifest(out)
    if manifest is not None and manifest["parameters"] != parameters:
        raise ValueError(
            f"{out} holds a demo corpus generated with {manifest['parameters']}, not {parameters}; "
            "delete the folder and the corpus's preprocessing cache (cache/demo by default; it would serve the "
            "old clips' features) or choose another folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    _write_manifest(out, parameters, complete=False)
    jobs = _jobs(out, subjects, clips_per_emotion)
    for path, number, emotion, k in tqdm(jobs, desc="demo corpus", unit="clip", disable=not progress):
        if not path.is_file():
            generate_clip(
                path,
                make_subject(number, seed),
                emotion,
                k,
                seconds=tuple(seconds),
                size=tuple(size),
                fps=fps,
                sample_rate=sample_rate,
                seed=seed,
            )
    _write_manifest(out, parameters, complete=True)
    return [path for path, *_ in jobs]


def ensure_demo_corpus(out: str | Path, **parameters) -> list[Path]:
    """The demo corpus under ``out``, generated only when it is not there complete; safe on every run.

    ``parameters`` are ``generate_demo_corpus``'s keywords; the manifest must record the same ones.
    """
    bound = inspect.signature(generate_demo_corpus).bind(out, **parameters)
    bound.apply_defaults()
    wanted = _parameters(**{name: value for name, value in bound.arguments.items() if name not in ("out", "progress")})
    manifest = _read_manifest(Path(out))
    if manifest is not None and manifest["complete"] and manifest["parameters"] == wanted:
        paths = [path for path, *_ in _jobs(Path(out), wanted["subjects"], wanted["clips_per_emotion"])]
        if all(path.is_file() for path in paths):
            return paths
    return generate_demo_corpus(out, **parameters)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/demo"), help="corpus folder (default data/demo)")
    parser.add_argument("--subjects", type=int, default=4)
    parser.add_argument("--clips-per-emotion", type=int, default=6)
    parser.add_argument("--seconds", type=float, nargs=2, default=(1.9, 2.4), metavar=("MIN", "MAX"))
    parser.add_argument("--size", type=int, nargs=2, default=(240, 180), metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = generate_demo_corpus(
        args.out,
        subjects=args.subjects,
        clips_per_emotion=args.clips_per_emotion,
        seconds=tuple(args.seconds),
        size=tuple(args.size),
        fps=args.fps,
        sample_rate=args.sample_rate,
        seed=args.seed,
        progress=True,
    )
    print(f"{len(paths)} clips under {args.out}")


if __name__ == "__main__":
    main()
