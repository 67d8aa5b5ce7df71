"""VAD plots of a sample of a corpus's clips, spread over classes and subjects, to check the VAD by eye."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from datamodules.clips import Clip
from datamodules.decode import decode_clip
from datamodules.vad import detect_speech_span, plot_vad


def sample_across(clips: list[Clip], n: int) -> list[Clip]:
    """Up to ``n`` of ``clips`` spread over classes and subjects: the classes take turns, and each picks
    its clip of the subject picked least so far (ties: the first in ``clips``)."""
    by_label: dict[str, list[Clip]] = {}
    for clip in clips:
        by_label.setdefault(clip.label, []).append(clip)
    picked: list[Clip] = []
    picks_per_subject: Counter = Counter()
    while len(picked) < min(n, len(clips)):
        for candidates in by_label.values():
            if candidates and len(picked) < n:
                choice = min(candidates, key=lambda clip: picks_per_subject[clip.subject])
                candidates.remove(choice)
                picked.append(choice)
                picks_per_subject[choice.subject] += 1
    return picked


def plot_vad_spans(clips: list[Clip], cfg: dict, out_dir: Path) -> list[Path]:
    """A VAD plot (waveform, speech-band ratio, energy, kept span) per clip, to check the VAD by eye."""
    paths = []
    vad_cfg = {k: v for k, v in cfg["vad"].items() if k != "enabled"}
    for clip in clips:
        audio = decode_clip(clip.path, sample_rate=cfg["sample_rate"], with_video=False).audio
        result = detect_speech_span(audio, cfg["sample_rate"], **vad_cfg)
        paths.append(plot_vad(audio, cfg["sample_rate"], result, Path(out_dir) / f"{clip.clip_id}.png"))
    return paths
