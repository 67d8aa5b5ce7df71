"""Epoch time of the paper-size visual stage with and without the frozen-feature cache, in one run.

    python scripts/benchmark_visual.py [--segments 8] [--batch 8] [--shift 9] [--size 227] [--frames-per-chunk N]
                                       [--device cpu|cuda] [--precision 32|bf16-mixed] [--channels-last]
                                       [--lstm-impl streaming|torch]

The paper's visual network (VGG19 with its convolutions frozen, ``freeze: features``; fc6, fc7, an LSTM of
4096 and the head trained) on the same segments twice: two training epochs reading the face crops (every
crop of every segment through the frozen convolutions, as without the cache), and two reading the frozen
part's cached pool5 output; plus the one-off cost of filling the cache (each distinct crop once) and the
backbone's images per second in it. Segments overlap as the paper's do (20 frames every ``shift`` frames:
at 30 fps, 655 ms every 300 ms), so neighbouring segments share crops. Random weights: the time of a
network does not depend on its values. Each phase is timed in wall seconds and in this process's CPU seconds
(the second is what the phase costs when other jobs share the cores). The ratio compares the second epochs,
as every epoch of a fit but its first runs: the first also allocates Adam's state (2 GB at this size), which
a fit does once; the first epochs' ratio is printed beside it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from datamodules.feature_cache import FeatureCache  # noqa: E402
from lightning_modules.components.visual import LSTM_IMPLS  # noqa: E402
from lightning_modules.visual_module import VisualModule  # noqa: E402
from runner.host_memory import keep_freed_memory  # noqa: E402

PAPER_BACKBONE = {
    "_target_": "lightning_modules.components.vgg.VGGFeatureExtractor",
    "variant": "vgg19",
    "batch_norm": False,
    "weights": "none",
    "width": 1.0,
    "fc_dim": 4096,
    "dropout": 0.5,
    "freeze": "features",
    "pool": "7x7",
}


def overlapping_segments(segments: int, shift: int, frames: int = 20) -> torch.Tensor:
    """``[K, frames]`` rows into the distinct crops: segment k holds crops k*shift ... k*shift + frames - 1."""
    return torch.arange(segments)[:, None] * shift + torch.arange(frames)[None]


class Timer:
    """Wall and CPU seconds of the block (its GPU work finished)."""

    def __enter__(self) -> Timer:
        synchronize()
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *_: object) -> None:
        synchronize()
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    def __str__(self) -> str:
        return f"{self.wall:8.2f} s wall, {self.cpu:8.2f} s CPU"


def synchronize() -> None:
    """Wait for the GPU's queued work, so that a timer sees it (no-op without CUDA)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def train_epochs(
    module: VisualModule, batches: list[dict[str, torch.Tensor]], bf16: bool, epochs: int = 2
) -> list[Timer]:
    """``epochs`` training epochs (forward, backward, optimiser step per batch) over ``batches`` with one
    optimiser, as a fit runs them, each timed; ``bf16``: forward under bfloat16 autocast (bf16-mixed)."""
    optimizer = module.configure_optimizers()  # training's own: Adam, fused
    module.train()
    timers = []
    for _ in range(epochs):
        with Timer() as timer:
            for batch in batches:
                with torch.autocast(module.device.type, dtype=torch.bfloat16, enabled=bf16):
                    loss = torch.nn.functional.cross_entropy(module(batch), batch["label"])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        timers.append(timer)
    return timers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=8)
    parser.add_argument("--shift", type=int, default=9, help="frames between segment starts (300 ms at 30 fps)")
    parser.add_argument("--size", type=int, default=227, help="face crop side (the paper's 227)")
    parser.add_argument("--batch", type=int, default=8, help="segments per batch (model=paper's visual batch_size)")
    parser.add_argument(
        "--frames-per-chunk",
        type=int,
        default=None,
        help="face crops per VGG19 call on the crops' path (default: VisualModule's)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", default="32", choices=["32", "bf16-mixed"])
    parser.add_argument("--channels-last", action="store_true", help="the convolutions in channels-last layout")
    parser.add_argument(
        "--lstm-impl",
        default="streaming",
        choices=sorted(LSTM_IMPLS),
        help="model.visual.module.lstm_impl (streaming: the README's figures)",
    )
    args = parser.parse_args()
    keep_freed_memory()  # as train.py keep_freed_memory=true
    torch.manual_seed(0)
    chunking = {} if args.frames_per_chunk is None else {"frames_per_chunk": args.frames_per_chunk}
    module = VisualModule(
        backbone=PAPER_BACKBONE,
        lstm_hidden=4096,
        lstm_impl=args.lstm_impl,
        num_classes=6,
        channels_last=args.channels_last,
        **chunking,
    ).to(args.device)
    bf16 = args.precision == "bf16-mixed"
    index = overlapping_segments(args.segments, args.shift).to(args.device)
    crops = torch.randint(0, 256, (int(index.max()) + 1, 3, args.size, args.size), dtype=torch.uint8)
    crops = crops.to(args.device)
    labels = torch.arange(args.segments, device=args.device) % 6
    rows = [slice(first, first + args.batch) for first in range(0, args.segments, args.batch)]
    print(
        f"paper-size visual stage: VGG19 (convolutions frozen), {args.size} px, LSTM 4096 ({args.lstm_impl}); "
        f"{args.segments} segments of 20 frames every {args.shift} frames = {index.numel()} crop slots, "
        f"{len(crops)} distinct crops; "
        f"{module.encoder.frames_per_chunk} crops per VGG19 call; {args.device} "
        f"({torch.cuda.get_device_name() if module.device.type == 'cuda' else f'{torch.get_num_threads()} threads'}), "
        f"precision {args.precision}{', channels-last' if args.channels_last else ''}"
    )

    first, images = train_epochs(module, [{"faces": crops[index[part]], "label": labels[part]} for part in rows], bf16)
    print(f"epoch reading the crops:   {images} (first epoch: {first})")

    with tempfile.TemporaryDirectory() as folder:
        cache = FeatureCache(folder, module.frozen_key(), batch_rows=8)
        module.eval()
        with Timer() as fill:  # in float32, as training fills it (runner/stage.py)
            cache.fill([("clip", {"faces": crops})], module.frozen_extractor(), total=1)
        frozen = cache.load()["clip"].to(args.device)
    print(
        f"filling the cache (once):  {fill} ({len(crops) / fill.wall:.2f} images/s wall, "
        f"{len(crops) / fill.cpu:.2f} per CPU second through VGG19's convolutions; {frozen.shape[1]} fp16 values a crop)"
    )

    first_cached, cached = train_epochs(
        module, [{"frame_features": frozen[index[part]], "label": labels[part]} for part in rows], bf16
    )
    print(f"epoch reading the cache:   {cached} (first epoch: {first_cached})")
    print(
        f"per epoch with the cache: {images.wall / cached.wall:.1f}x faster in wall time, "
        f"{images.cpu / cached.cpu:.1f}x less CPU time (first epochs: {first.wall / first_cached.wall:.1f}x, "
        f"{first.cpu / first_cached.cpu:.1f}x); the fill costs {fill.cpu / cached.cpu:.1f} cached epochs of CPU"
    )


if __name__ == "__main__":
    main()
