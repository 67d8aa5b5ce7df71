"""Face tracks for the visual network (paper §3.3).

Each audio segment gets 20 video frames: the frames whose times fall inside the segment, made
exactly 20 by the paper's rules 2 and 3 (``segment_frame_indices``). The face in each frame is the
largest MTCNN detection (the paper used an SSD face detector with a ResNet backbone, which has no
weights we can ship; facenet-pytorch's MTCNN does). A frame without a face takes the face of the
nearest frame that has one (rule 1, ``nearest_detected``), or only of a frame of its own segment
(``fill_faces``). Faces are cropped as squares around the detected box and resized to ``size`` x ``size``.
The track counts what a report needs to tell the truth: frames decoded, frames with a face, frames filled.

The detector runs on every decoded frame (``Keyframes(every=1)``, the reference) or on keyframes, with the
boxes followed in between (``track_faces``): every k-th frame and the frames on both sides of a scene cut are
searched, and two neighbouring searched frames whose faces overlap by ``redetect_iou`` or more have the boxes
of the frames between them interpolated; where they do not (no face on one side, or the face moved), the frame
halfway between them is searched too, until every stretch is either followed or searched frame by frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from datamodules.decode import BadInputError

FRAMES_PER_SEGMENT = 20
CENTER_BOX_FRACTION = 0.6


class NoFaceError(BadInputError):
    """No face was found in any frame a clip's segments use."""


class FewFacesError(NoFaceError):
    """A face is found in too few of a clip's frames, or is missing for too long (``faces.min_detection_rate``,
    ``faces.max_gap_s``)."""


FEW_FACES_CHOICES: tuple[str, ...] = ("drop", "keep")


@dataclass(frozen=True)
class Keyframes:
    """Where the detector runs (``faces.keyframe_every``, ``redetect_iou``, ``scene_cut`` of the config).

    ``every=1`` searches every decoded frame (the reference). Larger: every ``every``-th frame and the two
    frames of each scene cut are searched; the boxes between two searched frames are interpolated when both
    show a face and the faces overlap by at least ``redetect_iou`` (IoU), else the frame halfway is searched.
    A scene cut is a frame whose thumbnail differs from the previous one's by more than ``scene_cut`` grey
    levels on average (None: no cut detection).
    """

    every: int = 1
    redetect_iou: float = 0.8
    scene_cut: float | None = 30.0

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"faces.keyframe_every must be >= 1, got {self.every}")
        if not 0 < self.redetect_iou <= 1:
            raise ValueError(f"faces.redetect_iou must be in (0, 1], got {self.redetect_iou}")


EVERY_FRAME = Keyframes(every=1)


def keyframes_of(faces: dict) -> Keyframes:
    """The ``Keyframes`` of a config's ``faces``; a config written before keyframes existed searches every frame
    (the settings it lacks take ``Keyframes``' defaults)."""
    names = {"keyframe_every": "every", "redetect_iou": "redetect_iou", "scene_cut": "scene_cut"}
    return Keyframes(**{field: faces[key] for key, field in names.items() if key in faces})


def few_faces_reason(track: FaceTrack, min_detection_rate: float, max_gap_s: float | None) -> str | None:
    """Why a track has too few faces, in the terms of the settings, or None when it has enough."""
    if track.detection_rate < min_detection_rate:
        return (
            f"face found in {track.detected_frames} of {track.decoded_frames} frames ({track.detection_rate:.2f} < "
            f"min_detection_rate {min_detection_rate:g})"
        )
    if max_gap_s is not None and track.longest_gap_s > max_gap_s:
        return f"no face for {track.longest_gap_s:.2f} s on end (max_gap_s {max_gap_s:g})"
    return None


class FaceDetector:
    """MTCNN (facenet-pytorch) returning the largest confident face per frame.

    The network is built on first use, so a detector handed to worker processes is pickled without
    weights and each worker builds its own once.
    """

    def __init__(
        self,
        device: str = "cpu",
        min_confidence: float = 0.9,
        detect_max_side: int | None = 480,
        batch_size: int = 16,
        min_face_size: int = 40,
    ):
        self.device = device
        self.min_confidence = min_confidence
        self.detect_max_side = detect_max_side
        self.batch_size = batch_size
        self.min_face_size = min_face_size
        self._mtcnn = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_mtcnn": None}

    @property
    def mtcnn(self):
        if self._mtcnn is None:
            from facenet_pytorch import MTCNN

            # its layers draw initial weights (then replaced by the stored ones) from the global random
            # state: building the detector must not move the stream training draws from
            with torch.random.fork_rng(devices=[]):
                self._mtcnn = MTCNN(
                    keep_all=True, post_process=False, min_face_size=self.min_face_size, device=self.device
                )
            # Channels-last weights make the three networks' convolutions return channels-last maps, and torch's
            # max pooling over those is 4-15x faster on CPU than over NCHW (it was half of MTCNN's time): 1.5-1.7x
            # faster detection, the same boxes to 1e-4 px (tests/test_faces.py).
            for network in (self._mtcnn.pnet, self._mtcnn.rnet, self._mtcnn.onet):
                network.to(memory_format=torch.channels_last)
        return self._mtcnn

    def detect(self, frames: np.ndarray) -> np.ndarray:
        """Largest face with probability >= ``min_confidence`` per frame: float ``[T, 4]`` boxes.

        ``frames`` is uint8 ``[T, H, W, 3]`` RGB. Boxes are (x1, y1, x2, y2) in the frames' pixels;
        a frame without such a face gets a row of NaN. Frames whose longer side exceeds
        ``detect_max_side`` are downscaled for detection and the boxes scaled back.
        """
        n_frames, height, width = frames.shape[:3]
        boxes = np.full((n_frames, 4), np.nan, dtype=np.float64)
        scale = 1.0
        if self.detect_max_side is not None and max(height, width) > self.detect_max_side:
            scale = self.detect_max_side / max(height, width)
        for first in range(0, n_frames, self.batch_size):
            batch = torch.as_tensor(frames[first : first + self.batch_size], device=self.device)
            if scale != 1.0:
                batch = _resize_hwc(batch, round(height * scale), round(width * scale))
            for offset, (found, probs) in enumerate(zip(*self.mtcnn.detect(batch))):
                boxes[first + offset] = largest_confident_box(found, probs, self.min_confidence) / scale
        return boxes


def largest_confident_box(found: np.ndarray | None, probs: np.ndarray | None, min_confidence: float) -> np.ndarray:
    """Of one frame's MTCNN boxes ``[N, 4]`` (None: none found), the largest with probability >= ``min_confidence``;
    a row of NaN when there is none."""
    if found is None:
        return np.full(4, np.nan)
    candidates = np.asarray(found, dtype=np.float64)[np.asarray(probs, dtype=np.float64) >= min_confidence]
    if not len(candidates):
        return np.full(4, np.nan)
    areas = (candidates[:, 2] - candidates[:, 0]) * (candidates[:, 3] - candidates[:, 1])
    return candidates[np.argmax(areas)]


class WholeFrameFaces:
    """The "detector" of frames that are face crops already (CK+48, ``faces.detect: false``): every frame's
    face is the whole frame."""

    def detect(self, frames: np.ndarray) -> np.ndarray:
        """The box ``(0, 0, W, H)`` for each of ``[T, H, W, 3]`` frames: float ``[T, 4]``."""
        height, width = frames.shape[1:3]
        return np.tile(np.array([0.0, 0.0, width, height]), (len(frames), 1))


def _resize_hwc(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Antialiased bilinear resize of uint8 ``[N, H, W, 3]`` frames (torch's uint8 kernel, channels last): float
    ``[N, h, w, 3]`` in 0-255."""
    channels_last = frames.permute(0, 3, 1, 2)
    resized = F.interpolate(channels_last, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return resized.permute(0, 2, 3, 1).float()


def box_iou(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Intersection over union of boxes ``[N, 4]`` and ``[N, 4]`` (x1, y1, x2, y2), row by row; NaN boxes give 0."""
    left, top = np.maximum(first[:, 0], second[:, 0]), np.maximum(first[:, 1], second[:, 1])
    right, bottom = np.minimum(first[:, 2], second[:, 2]), np.minimum(first[:, 3], second[:, 3])
    inter = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
    area = lambda boxes: (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # noqa: E731
    union = area(first) + area(second) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nan_to_num(inter / union, nan=0.0)


def scene_cuts(frames: np.ndarray, threshold: float | None, stride: int = 8) -> np.ndarray:
    """bool ``[T]``: frame t starts a new shot, its grey thumbnail (every ``stride``-th pixel) differing from frame
    t - 1's by more than ``threshold`` levels on average (0-255). Frame 0 never does; None finds no cut."""
    cuts = np.zeros(len(frames), dtype=bool)
    if threshold is None or len(frames) < 2:
        return cuts
    thumbnails = frames[:, ::stride, ::stride].mean(axis=-1, dtype=np.float32)
    cuts[1:] = np.abs(np.diff(thumbnails, axis=0)).mean(axis=(1, 2)) > threshold
    return cuts


def first_keyframes(n_frames: int, every: int, cuts: np.ndarray) -> np.ndarray:
    """The frames searched first: 0, ``every``, 2 ``every``, ..., the last frame, and both frames of each cut."""
    cut_at = np.flatnonzero(cuts)
    chosen = np.concatenate([np.arange(0, n_frames, every), [n_frames - 1], cut_at - 1, cut_at])
    return np.unique(chosen).astype(np.int64)


def interpolated_boxes(first_box: np.ndarray, last_box: np.ndarray, steps: int) -> np.ndarray:
    """The ``steps - 1`` boxes ``[steps - 1, 4]`` strictly between ``first_box`` and ``last_box``, ``steps``
    frames apart, moving linearly."""
    weights = np.arange(1, steps)[:, None] / steps
    return (1 - weights) * first_box + weights * last_box


@dataclass
class FaceSearch:
    """Where the face of each decoded frame is, and how it was found."""

    boxes: np.ndarray  # float [T, 4], NaN where no face
    searched: np.ndarray  # bool [T]: the detector ran on the frame (else its box was followed)

    @property
    def has_face(self) -> np.ndarray:
        """bool ``[T]``: a face detected on the frame, or followed between two that agree."""
        return ~np.isnan(self.boxes[:, 0])


def track_faces(frames: np.ndarray, detector: FaceDetector | WholeFrameFaces, keyframes: Keyframes) -> FaceSearch:
    """The face of every frame of uint8 ``[T, H, W, 3]``: detected on each (``keyframes.every == 1``), or on
    keyframes and followed between them (module docstring). Each round of searches is one batched call."""
    n_frames = len(frames)
    if keyframes.every == 1:
        return FaceSearch(detector.detect(frames), np.ones(n_frames, dtype=bool))
    boxes = np.full((n_frames, 4), np.nan, dtype=np.float64)
    searched = np.zeros(n_frames, dtype=bool)
    to_search = first_keyframes(n_frames, keyframes.every, scene_cuts(frames, keyframes.scene_cut))
    while to_search.size:
        boxes[to_search] = detector.detect(frames[to_search])
        searched[to_search] = True
        searched_at = np.flatnonzero(searched)
        left, right = searched_at[:-1], searched_at[1:]
        open_gaps = (right - left > 1) & np.isnan(boxes[left + 1, 0])  # not followed yet
        left, right = left[open_gaps], right[open_gaps]
        agree = box_iou(boxes[left], boxes[right]) >= keyframes.redetect_iou
        for first, last in zip(left[agree], right[agree]):
            boxes[first + 1 : last] = interpolated_boxes(boxes[first], boxes[last], last - first)
        to_search = (left[~agree] + right[~agree]) // 2
    return FaceSearch(boxes, searched)


def nearest_detected(has_face: np.ndarray) -> np.ndarray:
    """Rule 1: for each frame, the index of the nearest frame with a detected face (ties: the earlier).

    Frames with a face map to themselves. Raises ``ValueError`` when no frame has a face.
    """
    has_face = np.asarray(has_face, dtype=bool)
    detected = np.flatnonzero(has_face)
    if detected.size == 0:
        raise ValueError("no frame has a detected face")
    positions = np.arange(has_face.size)
    after = np.clip(np.searchsorted(detected, positions), 0, detected.size - 1)
    before = np.clip(after - 1, 0, detected.size - 1)
    take_before = np.abs(positions - detected[before]) <= np.abs(detected[after] - positions)
    return np.where(take_before, detected[before], detected[after]).astype(np.int64)


def fit_to_length(indices: np.ndarray, n: int = FRAMES_PER_SEGMENT) -> np.ndarray:
    """Rules 2 and 3: exactly ``n`` frame indices from a non-empty run.

    More than ``n``: drop (m - n) // 2 from the start and the rest from the end (the centred n).
    Fewer: repeat the first and the last frame alternately, the first first, until there are ``n``.
    """
    indices = np.asarray(indices, dtype=np.int64)
    m = indices.size
    if m == 0:
        raise ValueError("cannot fit an empty run of frames")
    if m >= n:
        drop_front = (m - n) // 2
        return indices[drop_front : drop_front + n]
    missing = n - m
    front, back = (missing + 1) // 2, missing // 2
    return np.concatenate([np.repeat(indices[:1], front), indices, np.repeat(indices[-1:], back)])


def segment_frame_indices(
    frame_times: np.ndarray, start_s: float, end_s: float, n: int = FRAMES_PER_SEGMENT
) -> np.ndarray:
    """The ``n`` frames of one segment: those with ``start_s <= t < end_s``, fitted by rules 2 and 3.

    If no frame falls in the window, the frame nearest to the window's centre is repeated ``n`` times.
    """
    frame_times = np.asarray(frame_times, dtype=np.float64)
    if frame_times.size == 0:
        raise ValueError("no video frames")
    inside = np.flatnonzero((frame_times >= start_s) & (frame_times < end_s))
    if inside.size == 0:
        nearest = int(np.argmin(np.abs(frame_times - (start_s + end_s) / 2)))
        return np.full(n, nearest, dtype=np.int64)
    return fit_to_length(inside, n)


def center_boxes(frame_shape: tuple[int, ...], n_frames: int) -> np.ndarray:
    """Fallback boxes ``[n_frames, 4]``: a centred square of side 0.6 * min(H, W)."""
    height, width = frame_shape[:2]
    side = CENTER_BOX_FRACTION * min(height, width)
    x1, y1 = (width - side) / 2, (height - side) / 2
    return np.tile(np.array([x1, y1, x1 + side, y1 + side], dtype=np.float64), (n_frames, 1))


def square_crop_box(box: np.ndarray, margin: float, height: int, width: int) -> tuple[int, int, int, int]:
    """Integer square (x1, y1, x2, y2) of side max(w, h) * (1 + margin) centred on ``box``.

    A square running past the image border is shifted back inside; one larger than the image
    stays centred and the part outside is padded black by ``crop_faces``.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(round(max(x2 - x1, y2 - y1) * (1 + margin)), 1)
    left = round((x1 + x2) / 2 - side / 2)
    top = round((y1 + y2) / 2 - side / 2)
    if side <= width:
        left = min(max(left, 0), width - side)
    if side <= height:
        top = min(max(top, 0), height - side)
    return left, top, left + side, top + side


def crop_faces(
    frames: np.ndarray, boxes: np.ndarray, size: int, margin: float = 0.0, frame_indices: np.ndarray | None = None
) -> torch.Tensor:
    """Square face crops resized to ``size``: uint8 ``[N, 3, size, size]`` from uint8 ``[T, H, W, 3]`` frames, one
    per box ``[N, 4]``, cut from ``frames[frame_indices]`` (all frames when None; no copy of the frames is made).

    See ``square_crop_box`` for the square; resizing is antialiased bilinear (torch's uint8 kernel).
    """
    height, width = frames.shape[1:3]
    frame_indices = np.arange(len(frames)) if frame_indices is None else frame_indices
    crops = torch.empty((len(frame_indices), 3, size, size), dtype=torch.uint8)
    for i, frame in enumerate(frame_indices):
        left, top, right, bottom = square_crop_box(boxes[i], margin, height, width)
        image = torch.from_numpy(frames[frame]).permute(2, 0, 1)
        patch = image[:, max(top, 0) : min(bottom, height), max(left, 0) : min(right, width)]
        pad = (max(-left, 0), max(right - width, 0), max(-top, 0), max(bottom - height, 0))
        if any(pad):
            patch = F.pad(patch, pad)
        crops[i] = F.interpolate(patch[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[
            0
        ]
    return crops


FILL_RULES: tuple[str, ...] = ("nearest", "segment")


@dataclass
class FaceTrack:
    """The face crops of one clip's segments; ``face_frames[face_index]`` is ``[K, 20, 3, S, S]`` (the paper's n = 20)."""

    face_frames: torch.Tensor  # uint8 [F, 3, S, S], distinct crops
    face_index: torch.Tensor  # int64 [K, frames_per_segment], rows into face_frames
    source_frames: np.ndarray  # int64 [F], the video frame each crop was cut from
    boxes: np.ndarray  # float [F, 4], the crop's face box (x1, y1, x2, y2) in that frame
    segments: np.ndarray  # int64 [K], the input segments kept (fill="segment" drops those without a face)
    decoded_frames: int  # video frames decoded; each has a face or not (detected, or followed: ``track_faces``)
    detected_frames: int  # decoded frames with a face: detected on them, or followed between two searched frames
    searched_frames: int  # decoded frames the detector ran on (all of them with ``Keyframes(every=1)``)
    filled_frames: int  # frames used by a kept segment that show no face and take another frame's
    fallback_frames: int  # frames used by some segment that got the centre box
    segments_without_face: int  # input segments none of whose own frames shows a face
    longest_gap_s: float  # the longest run of decoded frames without a face, in seconds
    segment_has_face: np.ndarray  # bool [len(segments)]: a face was detected in one of the kept segment's own frames

    @property
    def detection_rate(self) -> float:
        """Decoded frames with a detected face over decoded frames."""
        return self.detected_frames / self.decoded_frames


def longest_gap_s(has_face: np.ndarray, frame_times: np.ndarray) -> float:
    """The longest run of frames without a face, in seconds: its frame count times the median frame interval."""
    interval = float(np.median(np.diff(frame_times))) if len(frame_times) > 1 else 0.0
    longest = run = 0
    for found in has_face:
        run = 0 if found else run + 1
        longest = max(longest, run)
    return longest * interval


def fill_faces(per_segment: np.ndarray, has_face: np.ndarray, fill: str) -> tuple[np.ndarray, np.ndarray]:
    """The frame whose face fills each slot of the segments ``[K, n]``, for the kept segments, and their indices.

    ``fill="nearest"`` (rule 1): a frame without a face takes the face of the nearest frame with one, by
    distance in frames (ties: the earlier), wherever it is; every segment is kept. ``"segment"``: only a
    frame of the same segment may lend its face; a segment with no face of its own is dropped.
    """
    if fill == "nearest":
        return nearest_detected(has_face)[per_segment], np.arange(len(per_segment))
    kept = np.asarray([k for k, frames in enumerate(per_segment) if has_face[frames].any()], dtype=np.int64)
    sources = np.zeros((len(kept), per_segment.shape[1]), dtype=np.int64)
    for row, frames in enumerate(per_segment[kept]):
        sources[row] = frames[nearest_detected(has_face[frames])]
    return sources, kept


def build_face_track(
    frames: np.ndarray,
    frame_times: np.ndarray,
    segment_times: np.ndarray | torch.Tensor,
    detector: FaceDetector | WholeFrameFaces,
    size: int,
    margin: float = 0.0,
    fallback: Literal["none", "center"] = "none",
    path: str | Path = "<frames>",
    frames_per_segment: int = FRAMES_PER_SEGMENT,
    fill: str = "nearest",
    keyframes: Keyframes = EVERY_FRAME,
) -> FaceTrack:
    """Face track for segments ``[K, 2]`` (start, end seconds on the same axis as ``frame_times``).

    Every decoded frame gets a face or none (``track_faces`` under ``keyframes``: detected on each, or on
    keyframes and followed between them), so the detection rate and the gaps are the clip's. A used frame
    without a face is filled by ``fill_faces``. If no frame has a face: ``fallback="center"`` crops a centred
    square from every used frame; ``"none"`` raises ``NoFaceError`` naming ``path``, as does ``fill="segment"``
    when no segment has a face of its own. ``segment_has_face`` tells the kept segments that show a detected
    face from those whose crops all come from other moments (rule 1) or from the centre box.
    """
    if fallback not in ("none", "center"):
        raise ValueError(f"fallback must be 'none' or 'center', got {fallback!r}")
    if fill not in FILL_RULES:
        raise ValueError(f"fill must be one of {FILL_RULES}, got {fill!r}")
    segment_times = np.asarray(segment_times, dtype=np.float64).reshape(-1, 2)
    if segment_times.shape[0] == 0:
        raise ValueError(f"{path}: no segments to build a face track for")
    per_segment = np.stack(
        [segment_frame_indices(frame_times, start, end, frames_per_segment) for start, end in segment_times]
    )
    search = track_faces(frames, detector, keyframes)
    boxes, has_face = search.boxes, search.has_face
    segments_without_face = sum(not has_face[row].any() for row in per_segment)
    fallback_frames = 0
    if has_face.any():
        source_per_slot, kept = fill_faces(per_segment, has_face, fill)
        if not len(kept):
            raise NoFaceError(path, f"no segment of its {len(per_segment)} has a face in its own frames (fill=segment)")
    elif fallback == "center":
        boxes = center_boxes(frames.shape[1:], len(frames))
        source_per_slot, kept = per_segment, np.arange(len(per_segment))
        fallback_frames = int(np.unique(per_segment).size)
    else:
        raise NoFaceError(path, f"no face detected in any of its {len(frames)} frames")

    used = np.unique(per_segment[kept])
    source_frames = np.unique(source_per_slot)
    return FaceTrack(
        face_frames=crop_faces(frames, boxes[source_frames], size, margin, frame_indices=source_frames),
        face_index=torch.as_tensor(np.searchsorted(source_frames, source_per_slot), dtype=torch.int64),
        source_frames=source_frames.astype(np.int64),
        boxes=boxes[source_frames],
        segments=kept,
        decoded_frames=len(frames),
        detected_frames=int(has_face.sum()),
        searched_frames=int(search.searched.sum()),
        filled_frames=int((~has_face[used]).sum()) if not fallback_frames else 0,
        fallback_frames=fallback_frames,
        segments_without_face=int(segments_without_face),
        longest_gap_s=longest_gap_s(has_face, frame_times),
        segment_has_face=has_face[per_segment[kept]].any(axis=1),
    )
