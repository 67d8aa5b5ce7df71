"""Prediction speed on the real audio-visual clip in ../shared/data, with the baseline measured in the same run.

    python scripts/benchmark_predict.py [--run outputs/demo/loso] [--shared ../shared/data] [--copies 4]

Prints seconds of media per second of prediction on the clip (the run's networks loaded once beforehand and
a warm-up file done; decoding, VAD, MFCC, face detection, every fold's networks, the timeline figures and the
CSV/JSON timed): the clip alone, and ``--copies`` copies of it one after the other (``prefetch=0``, the
baseline) against with the next file prepared while the current one is inferred (``prefetch=1``, the
default). On the CPU, and on the GPU when torch sees one.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from lightning_modules.prediction import load_run, predict_files  # noqa: E402

CLIP = "01-01-07-02-02-01-01.mp4"


def media_per_second(run, files: list[Path], prefetch: int, out: Path) -> tuple[float, float]:
    """(seconds of media per second, seconds) of predicting ``files`` with ``prefetch``."""
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("predict", overrides=["input=-", "run=-", f"out={out}", f"prefetch={prefetch}"])
    start = time.perf_counter()
    report = predict_files(run, files, [], out, cfg)
    seconds = time.perf_counter() - start
    if report["failed"]:
        sys.exit(f"benchmark: {report['failed']}")
    return sum(entry["duration_s"] for entry in report["files"]) / seconds, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=REPO / "outputs" / "demo" / "loso")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--copies", type=int, default=4)
    args = parser.parse_args()
    clip = args.shared / "ravdess-av" / CLIP
    if not args.run.is_dir():
        sys.exit(f"no run folder {args.run}: train one first (make demo), or name one with --run")
    devices = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    with tempfile.TemporaryDirectory() as scratch:
        copies = [Path(scratch) / f"copy_{k}.mp4" for k in range(args.copies)]
        for copy in copies:
            copy.symlink_to(clip)
        for device in devices:
            run = load_run(args.run, None, "all", torch.device(device), [])
            media_per_second(run, [clip], 1, Path(scratch) / "warm-up")
            one, one_s = media_per_second(run, [clip], 1, Path(scratch) / "one")
            serial, serial_s = media_per_second(run, copies, 0, Path(scratch) / "serial")
            overlapped, overlapped_s = media_per_second(run, copies, 1, Path(scratch) / "overlapped")
            print(
                f"\n{CLIP} (4.0 s, 640x480) with the {run.stage} model of {args.run} (folds "
                f"{', '.join(map(str, run.folds))}) on {device}; load average {os.getloadavg()[0]:.1f} "
                f"on {os.cpu_count()} cores"
            )
            rows = [
                ("1 file", one, f"{one_s:.1f} s"),
                (f"{args.copies} files, one after the other", serial, f"{serial_s:.1f} s, baseline"),
                (
                    f"{args.copies} files, next one prepared ahead",
                    overlapped,
                    f"{overlapped_s:.1f} s, {serial_s / overlapped_s:.2f}x",
                ),
            ]
            for label, speed, detail in rows:
                print(f"  {label:<38}: {speed:5.2f} s of media per s ({detail})")


if __name__ == "__main__":
    main()
