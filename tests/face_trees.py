"""Look-alike CK+ trees of real, small grey png files, in the distribution's layout and in CK+48's: each class
draws a bright bar at its own place on a subject's own noisy face, so that classes are learnable across subjects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision.io import write_png

from datamodules.corpora import ck

CK_CODES = {label: code for code, label in ck.EMOTIONS.items()}


def face_image(label: str, subject: int, frame: int, size: int = 48) -> torch.Tensor:
    """uint8 grey ``[1, size, size]``: noise of the subject's brightness and a bar whose row is the class's,
    brighter as ``frame`` grows (an expression towards its apex)."""
    rng = np.random.default_rng([subject, frame])
    image = rng.normal(60 + 10 * subject, 12, (size, size))
    row = (list(ck.EMOTIONS.values()).index(label) + 1) * size // 9
    image[row : row + size // 10, size // 6 : -size // 6] += 40 + 15 * frame
    return torch.from_numpy(image.clip(0, 255).astype(np.uint8))[None]


def write_frame(path: Path, image: torch.Tensor) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(image, str(path))
    return path


def frame_name(subject: int, sequence: int, frame: int) -> str:
    return f"S{subject:03d}_{sequence:03d}_{frame:08d}"


def make_ck_distribution(root: Path, sequences: dict[tuple[int, int], tuple[str | None, int]], size: int = 48) -> None:
    """``cohn-kanade-images/S###/###/`` frames and ``Emotion/S###/###/*_emotion.txt`` labels: per (subject,
    sequence) its label (None: unlabelled) and frame count; FACS files beside, as the distribution has."""
    for (subject, sequence), (label, frames) in sequences.items():
        folder = f"S{subject:03d}/{sequence:03d}"
        for frame in range(1, frames + 1):
            image = face_image(label or "neutral", subject, frame, size)
            write_frame(root / "cohn-kanade-images" / folder / f"{frame_name(subject, sequence, frame)}.png", image)
        if label is not None:
            last = frame_name(subject, sequence, frames)
            (root / "Emotion" / folder).mkdir(parents=True, exist_ok=True)
            (root / "Emotion" / folder / f"{last}_emotion.txt").write_text(f"   {CK_CODES[label]:.7e}\n")
            (root / "FACS" / folder).mkdir(parents=True, exist_ok=True)
            (root / "FACS" / folder / f"{last}_facs.txt").write_text("   1.0000000e+00   0.0000000e+00\n")


def make_ck48(root: Path, subjects: range, labels: tuple[str, ...], frames: int = 3, size: int = 48) -> None:
    """``<emotion folder>/S###_###_########.png``: one sequence per subject and label (sequence number = the
    label's position + 1), its last ``frames`` frames (numbered from 10)."""
    for subject in subjects:
        for position, label in enumerate(labels):
            folder = "happy" if label == "happiness" else label
            for frame in range(10, 10 + frames):
                name = f"{frame_name(subject, position + 1, frame)}.png"
                write_frame(root / folder / name, face_image(label, subject, frame - 9, size))
