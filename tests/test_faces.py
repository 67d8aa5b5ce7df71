"""Face alignment rules (paper §3.3), the detection rate and the rules on clips with too few faces, and MTCNN face
tracks on the real RAVDESS clip."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.clips import Clip
from datamodules.decode import BadInputError, decode_clip
from datamodules.demo_corpus import FACES, background_image, draw_face, make_subject
from datamodules.faces import (
    EVERY_FRAME,
    FaceDetector,
    Keyframes,
    NoFaceError,
    box_iou,
    build_face_track,
    center_boxes,
    crop_faces,
    few_faces_reason,
    largest_confident_box,
    nearest_detected,
    segment_frame_indices,
    track_faces,
)
from datamodules.mfcc import mfcc_images
from datamodules.preprocess import face_counts
from datamodules.vad import detect_speech_span

CROP = 112


# ---------------------------------------------------------------- the three rules


def test_rule1_nearest_detected_frame():
    has_face = np.array([0, 0, 1, 0, 0, 0, 1, 0, 0], dtype=bool)
    # frame 4 is 2 from both 2 and 6: the earlier wins
    assert nearest_detected(has_face).tolist() == [2, 2, 2, 2, 2, 6, 6, 6, 6]
    assert nearest_detected(np.ones(3, bool)).tolist() == [0, 1, 2]
    with pytest.raises(ValueError):
        nearest_detected(np.zeros(3, bool))


def test_rule2_more_frames_keeps_centred_20():
    frame_times = np.arange(100) / 30.0
    indices = segment_frame_indices(frame_times, 10 / 30 - 1e-6, 33 / 30 - 1e-6)  # frames 10..32: 23 frames
    assert indices.tolist() == list(range(11, 31))  # (23-20)//2 = 1 dropped at the start, 2 at the end


def test_rule3_fewer_frames_duplicates_first_and_last():
    frame_times = np.arange(100) / 25.0  # eNTERFACE's 25 fps: a 0.68 s window holds 17 frames
    indices = segment_frame_indices(frame_times, 0.2, 0.88)
    assert indices.tolist() == [5, 5] + list(range(5, 22)) + [21]
    assert len(indices) == 20


def test_window_without_frames_takes_nearest_frame():
    frame_times = np.arange(10) / 25.0
    assert segment_frame_indices(frame_times, 5.0, 5.655).tolist() == [9] * 20


def test_center_boxes():
    boxes = center_boxes((480, 640, 3), 2)
    assert boxes.shape == (2, 4)
    assert boxes[0].tolist() == pytest.approx([176.0, 96.0, 464.0, 384.0])


def test_crop_of_box_larger_than_image_is_padded_black():
    frames = np.full((1, 40, 60, 3), 200, np.uint8)
    crops = crop_faces(frames, np.array([[0.0, 0.0, 60.0, 40.0]]), size=30)  # a 60 px square on a 40 px tall image
    assert crops.shape == (1, 3, 30, 30)
    assert crops[0, :, 15, 15].tolist() == [200, 200, 200]
    assert crops[0, :, 0, 15].max() < 100 and crops[0, :, -1, 15].max() < 100


# ---------------------------------------------------------------- real clip


@pytest.fixture(scope="module")
def detector():
    return FaceDetector(detect_max_side=480)


@pytest.fixture(scope="module")
def av_clip(ravdess_av_clip):
    return decode_clip(ravdess_av_clip)


@pytest.fixture(scope="module")
def real_track(av_clip, detector, ravdess_av_clip):
    """Face track of the first two speech segments, on the clip's time axis."""
    span = detect_speech_span(av_clip.audio, av_clip.sample_rate)
    first = round(span.start_s * av_clip.sample_rate)
    last = round(span.end_s * av_clip.sample_rate)
    _, times = mfcc_images(av_clip.audio[first:last], av_clip.sample_rate)
    segment_times = times[:2].double() + span.start_s
    track = build_face_track(
        av_clip.frames, av_clip.frame_times, segment_times, detector, size=CROP, margin=0.2, path=ravdess_av_clip
    )
    return track, segment_times


@pytest.mark.shared
@pytest.mark.slow  # 4 s on an idle 2-core CPU, 20 s when the cores are shared
def test_face_track_on_real_clip(real_track, av_clip):
    track, segment_times = real_track
    n_used = track.face_frames.shape[0]
    assert track.face_frames.dtype == torch.uint8 and track.face_frames.shape[1:] == (3, CROP, CROP)
    assert track.face_index.dtype == torch.int64 and track.face_index.shape == (2, 20)
    assert int(track.face_index.max()) < n_used
    # the two segments span 0.655 + 0.3 s, about 29 frames at 29.97 fps
    assert 27 <= n_used <= 30
    assert track.detected_frames >= 0.95 * n_used and track.fallback_frames == 0
    # each segment's 20 frames are its own consecutive frames, in time order
    for row, (start, end) in zip(track.face_index, segment_times.tolist()):
        source = track.source_frames[row.numpy()]
        assert np.all(np.diff(source) == 1)
        assert np.all((av_clip.frame_times[source] >= start) & (av_clip.frame_times[source] < end))
    # the face sits in the middle of this clip's frames
    height, width = av_clip.frames.shape[1:3]
    centres = (track.boxes[:, :2] + track.boxes[:, 2:]) / 2
    assert np.all(np.abs(centres[:, 0] - width / 2) < 0.15 * width)
    assert np.all(np.abs(centres[:, 1] - height / 2) < 0.15 * height)


@pytest.mark.shared
@pytest.mark.slow  # 4 s on an idle 2-core CPU, 20 s when the cores are shared
def test_crops_are_centred_on_the_face(real_track, detector):
    track, _ = real_track
    crops = track.face_frames[::6].permute(0, 2, 3, 1).numpy()
    boxes = detector.detect(crops)
    assert not np.isnan(boxes).any(), "a face must be found again inside every crop"
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    assert np.all(np.abs(centres - CROP / 2) < 0.15 * CROP)
    sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    assert np.all((sides > 0.5 * CROP) & (sides < 1.1 * CROP))  # margin 0.2: the face fills ~1/1.2 of the crop


@pytest.mark.shared
def test_frames_without_face_take_the_nearest_face(av_clip, detector):
    frames = av_clip.frames[30:50].copy()  # one segment's 20 frames
    frames[[3, 4, 5]] = 128  # no face in these three
    segments = np.array([[0.0, 20 / 30], [3 / 30, 6 / 30]])  # the second: the three frames without a face
    track = build_face_track(frames, np.arange(20) / 30.0, segments, detector, size=32)
    assert track.detected_frames == 17 and track.decoded_frames == 20 and track.fallback_frames == 0
    assert track.segment_has_face.tolist() == [True, False]
    assert track.source_frames.tolist() == [0, 1, 2] + list(range(6, 20))
    sources = track.source_frames[track.face_index[0].numpy()]
    assert sources.tolist() == [0, 1, 2, 2, 2, 6] + list(range(6, 20))  # 4 ties between 2 and 6: the earlier


def test_flat_grey_frames_use_centre_fallback(detector):
    frames = np.full((12, 120, 160, 3), 128, np.uint8)
    frame_times = np.arange(12) / 25.0
    track = build_face_track(frames, frame_times, np.array([[0.0, 0.655]]), detector, size=32, fallback="center")
    assert track.detected_frames == 0 and track.fallback_frames == 12 == track.decoded_frames
    assert track.segment_has_face.tolist() == [False]
    assert track.face_frames.shape == (12, 3, 32, 32) and track.face_index.shape == (1, 20)
    assert track.face_index[0].tolist() == [0, 0, 0, 0] + list(range(12)) + [11, 11, 11, 11]
    assert np.allclose(track.boxes, center_boxes((120, 160), 12))
    assert (track.face_frames == 128).all()


def test_no_face_without_fallback_names_the_file(detector):
    frames = np.full((5, 120, 160, 3), 128, np.uint8)
    with pytest.raises(NoFaceError, match="clip_without_face.avi") as error:
        build_face_track(
            frames, np.arange(5) / 25.0, np.array([[0.0, 0.655]]), detector, size=32, path="clip_without_face.avi"
        )
    assert isinstance(error.value, BadInputError) and "no face" in error.value.reason


def test_channels_last_detector_finds_the_boxes_of_the_stock_mtcnn(detector):
    """FaceDetector runs MTCNN's networks channels-last (faster pooling); the boxes must be the stock ones."""
    from facenet_pytorch import MTCNN

    subject = make_subject(1, seed=0)
    background = background_image(subject, (320, 240), np.random.default_rng(0))
    frames = np.stack(
        [draw_face(background, subject, face, 0.5, (150 + 4 * i, 118)) for i, face in enumerate(FACES.values())]
    )
    ours = detector.detect(frames)
    assert next(detector.mtcnn.onet.parameters()).is_contiguous(memory_format=torch.channels_last)
    stock = MTCNN(keep_all=True, post_process=False, min_face_size=detector.min_face_size)
    expected = np.stack(
        [
            largest_confident_box(found, probs, detector.min_confidence)
            for found, probs in zip(*stock.detect(torch.as_tensor(frames)))
        ]
    )
    assert np.sum(~np.isnan(expected[:, 0])) >= 5
    np.testing.assert_allclose(ours, expected, atol=1e-3)


def test_detector_pickles_without_weights(detector):
    detector.detect(np.full((1, 60, 80, 3), 128, np.uint8))  # builds the network
    clone = pickle.loads(pickle.dumps(detector))
    assert clone._mtcnn is None and clone.min_confidence == detector.min_confidence


# ---------------------------------------------------------------- detection that reports the truth


class BrightCentreDetector:
    """A face wherever a frame's centre pixel is bright: a detector whose answer the test decides."""

    def detect(self, frames: np.ndarray) -> np.ndarray:
        height, width = frames.shape[1:3]
        found = frames[:, height // 2, width // 2, 0] > 128
        return np.where(found[:, None], np.array([[width / 4, height / 4, 3 * width / 4, 3 * height / 4]]), np.nan)


def partly_faceless(n_frames: int, hidden: slice) -> np.ndarray:
    frames = np.full((n_frames, 40, 40, 3), 200, np.uint8)
    frames[hidden] = 50
    return frames


def test_the_detection_rate_is_frames_with_a_face_over_frames_decoded():
    frames = partly_faceless(40, slice(10, 26))  # 16 of 40 frames without a face
    segments = np.array([[0.0, 0.655], [0.3, 0.955]])  # frames 0-19 and 9-28 at 30 fps
    track = build_face_track(frames, np.arange(40) / 30.0, segments, BrightCentreDetector(), size=16)
    assert track.decoded_frames == 40 and track.detected_frames == 24 and track.detection_rate == 0.6
    assert track.longest_gap_s == pytest.approx(16 / 30)
    assert track.filled_frames == 16 and track.segments_without_face == 0
    assert few_faces_reason(track, 0.5, 1.0) is None
    assert few_faces_reason(track, 0.7, None) == "face found in 24 of 40 frames (0.60 < min_detection_rate 0.7)"
    assert few_faces_reason(track, 0.5, 0.5) == "no face for 0.53 s on end (max_gap_s 0.5)"


def test_fill_segment_takes_faces_from_the_segment_only_and_drops_a_segment_without_one():
    frames = partly_faceless(60, slice(20, 45))
    segments = np.array([[0.0, 0.655], [0.7, 1.355], [1.0, 1.655]])  # frames 0-19, 21-40, 30-49
    nearest = build_face_track(frames, np.arange(60) / 30.0, segments, BrightCentreDetector(), size=16)
    assert nearest.segments.tolist() == [0, 1, 2] and nearest.segments_without_face == 1
    by_segment = build_face_track(
        frames, np.arange(60) / 30.0, segments, BrightCentreDetector(), size=16, fill="segment"
    )
    assert by_segment.segments.tolist() == [0, 2] and by_segment.face_index.shape == (2, 20)
    sources = by_segment.source_frames[by_segment.face_index[1].numpy()]
    assert set(sources.tolist()) == set(range(45, 50))  # segment 2's own faces, frames 45-49
    with pytest.raises(NoFaceError, match="no segment of its 1 has a face"):
        build_face_track(frames, np.arange(60) / 30.0, segments[1:2], BrightCentreDetector(), size=16, fill="segment")


def test_the_report_counts_frames_decoded_filled_and_clips_with_too_few_faces():
    meta = {
        "decoded_frames": 40,
        "face_detected_frames": 24,
        "face_filled_frames": 16,
        "face_fallback_frames": 0,
        "segments_without_face": 0,
    }
    metas = {
        "a": {**meta, "clip_id": "a", "few_faces": None},
        "b": {**meta, "clip_id": "b", "face_detected_frames": 10, "few_faces": "face found in 10 of 40 frames"},
    }
    clips = [Clip(clip_id, Path(clip_id), "s1", "anger") for clip_id in metas]
    dropped = {"c": {"error": "FewFacesError"}, "d": {"error": "BadInputError"}}
    counts = face_counts(clips, metas, dropped)
    assert counts["face_detection_rate"] == 34 / 80 and counts["face_detection_rate_per_clip"] == {"a": 0.6, "b": 0.25}
    assert counts["face_filled_frames"] == 32
    assert counts["few_faces"] == {"dropped": 1, "kept": {"b": "face found in 10 of 40 frames"}}


@pytest.mark.shared
def test_mtcnn_rate_on_a_real_clip_whose_face_is_hidden_for_part_of_the_frames(av_clip, detector):
    frames = av_clip.frames[:60].copy()
    frames[15:39] = 128  # 24 of 60 frames show no face
    track = build_face_track(frames, av_clip.frame_times[:60], np.array([[0.0, 0.655]]), detector, size=32)
    assert track.decoded_frames == 60 and track.detected_frames == 36 and track.detection_rate == 0.6
    assert track.longest_gap_s == pytest.approx(24 / 29.97, rel=0.01)


# ---------------------------------------------------------------- keyframes and tracking


class BrightSquareDetector:
    """The box of a frame's bright pixels (> 200) as its face, and the frames it was asked about."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def detect(self, frames: np.ndarray) -> np.ndarray:
        self.calls.append(len(frames))
        boxes = np.full((len(frames), 4), np.nan)
        for i, frame in enumerate(frames):
            rows, cols = np.nonzero(frame[:, :, 0] > 200)
            if rows.size:
                boxes[i] = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
        return boxes


def moving_face(n_frames: int, positions: np.ndarray, side: int = 40, shape: tuple[int, int] = (120, 160)) -> tuple:
    """Frames with a bright ``side``-px square at ``positions[t]`` (x, y) on a grey background, and its true boxes."""
    frames = np.full((n_frames, *shape, 3), 90, np.uint8)
    boxes = np.zeros((n_frames, 4))
    for t, (x, y) in enumerate(np.round(positions).astype(int)):
        frames[t, y : y + side, x : x + side] = 230
        boxes[t] = [x, y, x + side, y + side]
    return frames, boxes


def test_keyframes_follow_a_moving_face_between_searches():
    positions = np.stack([10 + 0.4 * np.arange(60), 30 + 0.2 * np.arange(60)], axis=1)  # 4 px per 10 frames
    frames, truth = moving_face(60, positions, side=60)
    detector = BrightSquareDetector()
    search = track_faces(frames, detector, Keyframes(every=10, redetect_iou=0.8))
    assert search.has_face.all()
    assert box_iou(search.boxes, truth).min() >= 0.95
    assert search.searched.sum() == 7 == sum(detector.calls)  # frames 0, 10, ..., 50 and the last, 59
    assert len(detector.calls) == 1, "the keyframes are searched in one batch"
    fast = track_faces(*moving_face(60, positions * [6, 1], side=60)[:1], BrightSquareDetector(), Keyframes(every=10))
    assert 7 < fast.searched.sum() < 60, "a face moving 24 px per 10 frames is searched between the keyframes"


def test_a_jump_of_the_face_is_searched_again_where_it_happened():
    positions = np.array([[20.0, 30.0]] * 37 + [[100.0, 60.0]] * 23)  # the face jumps at frame 37
    frames, truth = moving_face(60, positions)
    search = track_faces(frames, BrightSquareDetector(), Keyframes(every=10, redetect_iou=0.8, scene_cut=None))
    assert box_iou(search.boxes, truth).min() == pytest.approx(1.0)
    assert search.searched[[36, 37]].all(), "halving the stretch 30-40 finds both sides of the jump"
    assert search.searched.sum() < 20


def test_a_face_hidden_between_two_keyframes_is_found_missing_through_the_scene_cut():
    frames, _ = moving_face(40, np.array([[50.0, 40.0]] * 40))
    frames[22:25] = 90  # no face on frames 22-24, while keyframes 20 and 30 show the same face
    search = track_faces(frames, BrightSquareDetector(), Keyframes(every=10, redetect_iou=0.8, scene_cut=5.0))
    assert np.flatnonzero(~search.has_face).tolist() == [22, 23, 24]
    blind = track_faces(frames, BrightSquareDetector(), Keyframes(every=10, redetect_iou=0.8, scene_cut=None))
    assert blind.has_face.all(), "without cut detection the gap is followed over: what scene_cut is for"


def test_every_frame_is_the_reference_and_keyframes_report_what_was_searched():
    frames, _ = moving_face(30, np.array([[50.0, 40.0]] * 30))
    reference = track_faces(frames, BrightSquareDetector(), EVERY_FRAME)
    assert reference.searched.all()
    segments = np.array([[0.0, 0.655]])
    track = build_face_track(
        frames, np.arange(30) / 30.0, segments, BrightSquareDetector(), size=16, keyframes=Keyframes(every=10)
    )
    assert track.decoded_frames == 30 and track.detected_frames == 30 and track.searched_frames == 4
    with pytest.raises(ValueError, match="keyframe_every"):
        Keyframes(every=0)
