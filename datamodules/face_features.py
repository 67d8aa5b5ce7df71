"""Face features for the classical baseline (``stage=baseline`` on CK+): HOG and uniform-LBP histograms.

``HogLbp`` reads a prepared clip's face crops (the clip cache, so the crops the visual network sees), turns
the last ``last_frames`` of them grey at ``size`` x ``size`` and describes each by a histogram of oriented
gradients (Dalal and Triggs, 2005) and by histograms of uniform local binary patterns over a grid of cells
(Ojala et al., 2002; Shan et al., 2009 on CK); the vectors of those frames are averaged into the clip's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from importlib.metadata import version
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from datamodules.clips import Clip
from datamodules.decode import BadInputError
from datamodules.preprocess import load_clip

if TYPE_CHECKING:
    from datamodules.datamodule import EmotionDataModule

GREY_WEIGHTS: tuple[float, float, float] = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma


def grey_faces(crops: torch.Tensor, size: int) -> np.ndarray:
    """uint8 RGB crops ``[N, 3, S, S]`` -> uint8 grey ``[N, size, size]`` (antialiased bilinear resize)."""
    grey = (crops.float() * torch.tensor(GREY_WEIGHTS).view(1, 3, 1, 1)).sum(1, keepdim=True)
    resized = F.interpolate(grey, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()


@dataclass
class HogLbp:
    """HOG (``hog_orientations`` bins over ``hog_cell``-pixel cells, L2-Hys over blocks of ``hog_block``
    cells) and uniform LBP (``lbp_points`` neighbours at ``lbp_radius``; the 58 uniform patterns and one bin
    for the rest when 8 points) histograms over ``lbp_grid`` x ``lbp_grid`` cells, each summing to 1."""

    size: int = 48
    hog_orientations: int = 9
    hog_cell: int = 8
    hog_block: int = 2
    lbp_points: int = 8
    lbp_radius: float = 1.0
    lbp_grid: int = 4
    last_frames: int = 3

    def identity(self) -> dict:
        return {"extractor": "hog_lbp", **asdict(self), "scikit-image": version("scikit-image")}

    def inputs(self, corpus: EmotionDataModule) -> dict:
        """The prepared clips (their cache folder's key), prepared first when need be."""
        corpus.prepare_data()
        return {"clips": corpus.cache_folder.name}

    def frame_vector(self, face: np.ndarray) -> np.ndarray:
        """HOG and LBP histograms of one grey face ``[size, size]``."""
        from skimage.feature import hog, local_binary_pattern  # scikit-image: only when these features are asked for

        gradients = hog(
            face,
            orientations=self.hog_orientations,
            pixels_per_cell=(self.hog_cell, self.hog_cell),
            cells_per_block=(self.hog_block, self.hog_block),
            block_norm="L2-Hys",
            feature_vector=True,
        )
        patterns = local_binary_pattern(face, self.lbp_points, self.lbp_radius, method="nri_uniform")
        bins = self.lbp_points * (self.lbp_points - 1) + 3
        cells = np.array_split(np.arange(self.size), self.lbp_grid)
        histograms = [
            np.bincount(patterns[np.ix_(rows, cols)].astype(np.int64).ravel(), minlength=bins) / (len(rows) * len(cols))
            for rows in cells
            for cols in cells
        ]
        return np.concatenate([gradients, *histograms]).astype(np.float32)

    def clip_vector(self, clip: Clip, corpus: EmotionDataModule) -> np.ndarray:
        """The mean vector of the clip's last ``last_frames`` distinct face crops; ``BadInputError`` for a clip
        that preprocessing dropped."""
        path = corpus.cache_folder / f"{clip.clip_id}.pt"
        if not path.exists():
            raise BadInputError(clip.path, "no prepared face crops: preprocessing dropped the clip (see its report)")
        faces = grey_faces(load_clip(path)["face_frames"][-self.last_frames :], self.size)
        return np.mean([self.frame_vector(face) for face in faces], axis=0)
