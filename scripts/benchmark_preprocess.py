"""Preprocessing speed and face quality on the real recordings in ../shared/data, against baselines measured in
the same run.

    python scripts/benchmark_preprocess.py [--shared ../shared/data] [--clips 960] [--copies 8]

Prints, with wall and CPU seconds (this process's only, not its workers') and the load average beside each figure:

* clips per second on RAVDESS speech and on generated demo videos with one worker computing with one thread (one
  core's speed), then with 1, 2, 4, ... workers up to the core count (each with its share of the cores' threads),
  as ratios to both;
* seconds of video per second on copies of the real audio-visual clip (640x480, 227-px crops, one worker per core)
  prepared by the keyframe option (every 10th frame, detection at <= 320 px, the segments' frames decoded) against
  the reference (MTCNN on every frame at full resolution, every frame decoded), as a ratio;
* the face boxes of the keyframe option against the reference's on the same frames (the share of the reference's
  face frames with IoU >= 0.9, and of all frames agreeing), the reference's own steadiness (its box against its
  box on the next frame: the most a setting that skips frames can agree with it), and both clip-level face
  detection rates, on the real clip and on the demo videos.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from datamodules.clips import Clip  # noqa: E402
from datamodules.corpora import demo, ravdess  # noqa: E402
from datamodules.demo_corpus import generate_demo_corpus  # noqa: E402
from datamodules.faces import EVERY_FRAME, box_iou, keyframes_of, track_faces  # noqa: E402
from datamodules.preprocess import (  # noqa: E402
    PreparedCorpus,
    available_cores,
    decode,
    face_detector,
    limit_threads,
    prepare_corpus,
    segment_frames,
    speech_segments,
    threads_per_worker,
)

PAPER = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "preprocess" / "paper.yaml"))
DEMO_SIZE = tuple(OmegaConf.load(REPO / "configs" / "data" / "demo.yaml").generator.size)  # the demo corpus's frames
# the face settings compared: the reference (MTCNN on every frame at full resolution, every frame decoded) and the
# keyframe option measured against it (MTCNN on every 10th frame at <= 320 px, the segments' frames decoded)
REFERENCE_FACES = {"keyframe_every": 1, "detect_max_side": None, "frames_decoded": "all"}
KEYFRAME_FACES = {"keyframe_every": 10, "detect_max_side": 320, "frames_decoded": "segments"}


def with_faces(cfg: dict, faces: dict) -> dict:
    """A copy of ``cfg`` whose ``faces`` settings are updated by ``faces``."""
    changed = copy.deepcopy(cfg)
    changed["faces"].update(faces)
    return changed


@dataclass(frozen=True)
class Timing:
    wall_s: float
    cpu_s: float  # this process's, not its workers'
    load: float  # one-minute load average at the end


def cpu_seconds() -> float:
    """User and system seconds of this process."""
    times = os.times()
    return times.user + times.system


def timed_prepare(clips: list[Clip], cfg: dict, workers: int) -> tuple[Timing, PreparedCorpus]:
    """Time to prepare ``clips`` into an empty cache, worker start-up included."""
    with tempfile.TemporaryDirectory() as cache:
        wall, cpu = time.perf_counter(), cpu_seconds()
        prepared = prepare_corpus(clips, cfg, Path(cache), corpus="bench", workers=workers, progress=False)
        timing = Timing(time.perf_counter() - wall, cpu_seconds() - cpu, os.getloadavg()[0])
        return timing, prepared


def worker_counts(cores: int) -> list[int]:
    """1, 2, 4, ... up to ``cores`` (and ``cores`` itself)."""
    counts = [1]
    while counts[-1] * 2 <= cores:
        counts.append(counts[-1] * 2)
    return counts + ([cores] if counts[-1] != cores else [])


def compare_workers(title: str, clips: list[Clip], cfg: dict, media: str) -> None:
    """Prepare ``clips`` with one worker computing with one thread (one core's speed, the baseline), then with
    each of ``worker_counts`` (each worker with its share of the cores' threads; one worker runs in this process
    with all of them), and print the speeds against the baseline and against one worker."""
    cores = available_cores()
    limit_threads(1)
    rows = [("1 worker, 1 thread", *timed_prepare(clips, cfg, 1))]
    limit_threads(cores)
    for workers in worker_counts(cores):
        threads = threads_per_worker(workers, cfg["video"], cores)
        label = f"{workers} worker{'s' if workers > 1 else ''}, {threads} thread{'s' if threads > 1 else ''} each"
        rows.append((label, *timed_prepare(clips, cfg, workers)))
    media_s = sum(m["duration_s"] for m in rows[0][2].metas.values())
    print(f"{title}: {len(clips)} clips, {media_s:.0f} s of {media}, {rows[0][2].report['segments']} segments")
    one_thread_s, one_worker_s = rows[0][1].wall_s, rows[1][1].wall_s
    for label, timing, _ in rows:
        print(
            f"  {label:<26}: {len(clips) / timing.wall_s:7.2f} clips/s, {media_s / timing.wall_s:7.2f} s of {media} "
            f"per s ({one_thread_s / timing.wall_s:.2f}x one thread, {one_worker_s / timing.wall_s:.2f}x one worker); "
            f"wall {timing.wall_s:.1f} s, CPU here {timing.cpu_s:.1f} s, load {timing.load:.2f}"
        )


@dataclass
class FaceQuality:
    """One clip's faces under a setting against the reference's, on the frames the setting decodes."""

    iou: np.ndarray  # per frame where the reference has a face: IoU of the setting's box (0 where it has none)
    agrees: np.ndarray  # per frame: both have a face with IoU >= 0.9, or neither has one
    extra: int  # frames where the setting follows a face and the reference detects none
    steady: np.ndarray  # per pair of neighbouring frames both with a reference face: their boxes' IoU >= 0.9
    rate: float  # the setting's clip-level face detection rate, as the pipeline counts it
    reference_rate: float  # the reference's, over every frame


def face_quality(clip: Clip, cfg: dict) -> FaceQuality:
    """``cfg``'s face boxes against the reference's (MTCNN on every frame at full resolution) on the frames ``cfg``
    decodes, and the reference's own steadiness: how often its box on a frame and on the next agree (IoU >= 0.9),
    the most a setting that does not run the detector on every frame can expect to agree with it."""
    decoded = decode(clip, cfg)
    times = speech_segments(decoded, cfg, clip.path).times
    decoded = segment_frames(decoded, clip.path, times)
    ours = track_faces(decoded.frames, face_detector(cfg), keyframes_of(cfg["faces"]))
    reference_cfg = with_faces(cfg, REFERENCE_FACES)
    reference_detector = face_detector(reference_cfg)
    reference = track_faces(decoded.frames, reference_detector, EVERY_FRAME)
    iou = box_iou(ours.boxes, reference.boxes)
    both = ours.has_face & reference.has_face
    neighbours = reference.has_face[:-1] & reference.has_face[1:]
    whole = decode(clip, reference_cfg)
    return FaceQuality(
        iou=iou[reference.has_face],
        agrees=np.where(both, iou >= 0.9, ours.has_face == reference.has_face),
        extra=int(np.sum(ours.has_face & ~reference.has_face)),
        steady=box_iou(reference.boxes[:-1], reference.boxes[1:])[neighbours] >= 0.9,
        rate=float(np.mean(ours.has_face)),
        reference_rate=float(np.mean(track_faces(whole.frames, reference_detector, EVERY_FRAME).has_face)),
    )


def print_quality(title: str, clips: list[Clip], cfg: dict) -> None:
    """The face quality of ``cfg`` against the reference (``face_quality``) over ``clips``."""
    results = [face_quality(clip, cfg) for clip in clips]
    iou = np.concatenate([r.iou for r in results])
    agrees = np.concatenate([r.agrees for r in results])
    steady = np.concatenate([r.steady for r in results])
    rates = np.array([[r.rate, r.reference_rate] for r in results])
    print(
        f"  {title}, {len(agrees)} frames of {len(clips)} clip(s):\n"
        f"    IoU >= 0.9 with the reference's box on {np.mean(iou >= 0.9):.1%} of the {len(iou)} frames where it "
        f"has one (median {np.median(iou):.3f}); the reference's box on the next frame: {np.mean(steady):.1%}\n"
        f"    agreeing on {np.mean(agrees):.1%} of all frames (IoU >= 0.9, or no face in either); "
        f"{sum(r.extra for r in results)} frames followed where the reference finds no face\n"
        f"    face detection rate {rates[:, 0].mean():.3f} (reference {rates[:, 1].mean():.3f}; largest difference "
        f"of a clip {np.abs(rates[:, 0] - rates[:, 1]).max():.3f})"
    )


def compare_faces(av_path: Path, copies: int, videos: list[Clip], video_cfg: dict) -> None:
    """The real clip's speed (``copies`` of it, one worker per core) and quality, keyframes against the reference."""
    clips = [Clip(f"av{i}", av_path, "actor_01", "disgust") for i in range(copies)]
    workers = available_cores()
    rows = [
        (label, *timed_prepare(clips, cfg, workers))
        for label, cfg in (
            ("reference: every frame, full resolution", with_faces(PAPER, REFERENCE_FACES)),
            ("keyframes: every 10th, <= 320 px, segments' frames", with_faces(PAPER, KEYFRAME_FACES)),
        )
    ]
    duration = sum(m["duration_s"] for m in rows[0][2].metas.values())
    print(
        f"Real audio-visual clip {av_path.name}, {copies} copies ({duration:.1f} s of 640x480 video, 227-px faces), "
        f"{workers} workers"
    )
    base_s = rows[0][1].wall_s
    for label, timing, prepared in rows:
        meta = prepared.metas["av0"]
        print(
            f"  {label:<48}: {duration / timing.wall_s:6.2f} s of video per s ({base_s / timing.wall_s:.2f}x); "
            f"wall {timing.wall_s:.1f} s, CPU here {timing.cpu_s:.1f} s, load {timing.load:.2f}; {meta['decoded_frames']} "
            f"frames decoded, {meta['face_searched_frames']} searched, face rate "
            f"{prepared.report['face_detection_rate']:.3f}"
        )
    print("Faces of the keyframe option against the reference (MTCNN on every frame at full resolution):")
    print_quality("real clip", clips[:1], with_faces(PAPER, KEYFRAME_FACES))
    print_quality("demo videos", videos, with_faces(video_cfg, KEYFRAME_FACES))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--clips", type=int, default=960)
    parser.add_argument("--copies", type=int, default=8)
    args = parser.parse_args()
    print(f"{available_cores()} cores, load average {os.getloadavg()[0]:.2f} at the start")

    speech = ravdess.index(args.shared / "ravdess-speech-16k", modality="audio").clips[: args.clips]
    audio_cfg = copy.deepcopy(PAPER)
    audio_cfg["video"] = False
    compare_workers("RAVDESS speech", speech, audio_cfg, "audio")

    with tempfile.TemporaryDirectory() as root:
        width, height = DEMO_SIZE
        generate_demo_corpus(Path(root), subjects=3, clips_per_emotion=2, size=DEMO_SIZE)
        videos = demo.index(root).clips
        video_cfg = copy.deepcopy(PAPER)
        video_cfg["faces"]["fallback"] = "center"
        video_cfg["faces"]["few_faces"] = "keep"
        compare_workers(f"Demo videos ({width}x{height}, 227-px faces)", videos, video_cfg, "video")
        compare_faces(args.shared / "ravdess-av" / "01-01-07-02-02-01-01.mp4", args.copies, videos, video_cfg)


if __name__ == "__main__":
    main()
