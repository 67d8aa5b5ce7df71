"""Preprocessing speed on the real recordings in ../shared/data, with baselines measured in the same run.

    python scripts/benchmark_preprocess.py [--shared ../shared/data] [--clips 48]

Prints clips per second on RAVDESS speech and on generated demo videos (1 worker, the baseline,
against 2 workers), and seconds of video per second on the real audio-visual clip (full-resolution
face detection, the baseline, against detection on frames downscaled to 480 px, the default).
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from datamodules.clips import Clip  # noqa: E402
from datamodules.corpora import demo, ravdess  # noqa: E402
from datamodules.demo_corpus import generate_demo_corpus  # noqa: E402
from datamodules.preprocess import PreparedCorpus, prepare_corpus  # noqa: E402

PAPER = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "preprocess" / "paper.yaml"))


def timed_prepare(clips: list[Clip], cfg: dict, workers: int) -> tuple[float, PreparedCorpus]:
    """Seconds to prepare ``clips`` into an empty cache (worker start-up included)."""
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        prepared = prepare_corpus(clips, cfg, Path(cache), corpus="bench", workers=workers, progress=False)
        return time.perf_counter() - start, prepared


def compare_workers(title: str, clips: list[Clip], cfg: dict, media: str) -> None:
    """Prepare ``clips`` with 1 worker (the baseline) and with 2, and print both speeds."""
    one_s, _ = timed_prepare(clips, cfg, workers=1)
    two_s, prepared = timed_prepare(clips, cfg, workers=2)
    media_s = sum(m["duration_s"] for m in prepared.metas.values())
    print(f"{title}: {len(clips)} clips, {media_s:.0f} s of {media}, {prepared.report['segments']} segments")
    print(f"  1 worker : {len(clips) / one_s:7.2f} clips/s, {media_s / one_s:7.2f} s of {media} per s (baseline)")
    print(f"  2 workers: {len(clips) / two_s:7.2f} clips/s, {media_s / two_s:7.2f} s of {media} per s "
          f"({one_s / two_s:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--clips", type=int, default=480)
    args = parser.parse_args()

    speech = ravdess.index(args.shared / "ravdess-speech-16k", modality="audio").clips[: args.clips]
    audio_cfg = copy.deepcopy(PAPER)
    audio_cfg["video"] = False
    compare_workers("RAVDESS speech", speech, audio_cfg, "audio")

    with tempfile.TemporaryDirectory() as root:
        generate_demo_corpus(Path(root), subjects=1, clips_per_emotion=2)
        videos = demo.index(root).clips
        video_cfg = copy.deepcopy(PAPER)
        video_cfg["faces"]["fallback"] = "center"
        compare_workers("Demo videos (320x240, 227-px faces)", videos, video_cfg, "video")

    av_path = args.shared / "ravdess-av" / "01-01-07-02-02-01-01.mp4"
    clip = Clip("av", av_path, "actor_01", "disgust")
    rows = []
    for label, max_side in (("full-resolution detection (640 px)", 100_000), ("detection at <= 480 px (default)", 480)):
        cfg = copy.deepcopy(PAPER)
        cfg["faces"]["detect_max_side"] = max_side
        seconds, prepared = timed_prepare([clip], cfg, workers=1)
        rows.append((label, seconds, prepared.report))
    duration = prepared.metas["av"]["duration_s"]
    print(f"Real audio-visual clip {av_path.name} ({duration:.1f} s, 640x480, 227-px faces)")
    base_s = rows[0][1]
    for label, seconds, report in rows:
        print(
            f"  {label:<36}: {duration / seconds:5.2f} s of video per s, {seconds:5.1f} s, "
            f"face rate {report['face_detection_rate']:.3f} ({base_s / seconds:.2f}x)"
        )


if __name__ == "__main__":
    main()
