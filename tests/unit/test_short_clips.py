"""``data.preprocess.mfcc.short``: audio shorter than one window is dropped (the default, as before the setting),
or padded to exactly one window by repeating the utterance or by appending silence; on generated audio."""

import copy

import numpy as np
import pytest
import torch

from datamodules.clips import Clip
from datamodules.mfcc import SHORT_CHOICES, frame_count, mfcc_frames, mfcc_images, pad_with_silence, segment_mfcc
from datamodules.preprocess import cache_key
from datamodules.preprocess.pipeline import ClipFailure, preprocess_clip
from tests.helpers.audio_trees import SAMPLE_RATE, voice, write_wav
from tests.helpers.configs import audio_cfg, compose_train
from tests.helpers.paths import REPO

RECIPE = {"window": 192, "shift": 30, "representation": "logmel", "scale": "utterance"}  # 1.935 s windows


def one_second() -> np.ndarray:
    """A generated utterance of 1.0 s: shorter than the recipe's 192-frame window."""
    return voice("anger", 1, 0)[:SAMPLE_RATE].astype(np.float32)  # 1.4-1.7 s, cut to 1.0 s


def test_repeat_tiles_the_utterance_and_edge_holds_its_last_frame():
    features = torch.arange(5.0).reshape(1, 1, 5)
    assert segment_mfcc(features, 8, 3, "repeat").flatten().tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    assert segment_mfcc(features, 8, 3).flatten().tolist() == [0, 1, 2, 3, 4, 4, 4, 4]  # the default, as before
    assert torch.equal(
        segment_mfcc(torch.arange(10.0).reshape(1, 1, 10), 8, 3, "repeat"),
        segment_mfcc(torch.arange(10.0).reshape(1, 1, 10), 8, 3),
    )  # a span of one window or more is not padded
    with pytest.raises(ValueError, match="pad"):
        segment_mfcc(features, 8, 3, "mirror")


def test_a_short_utterance_becomes_exactly_one_window():
    audio = one_second()
    n_frames = frame_count(audio.size, SAMPLE_RATE)
    assert n_frames < RECIPE["window"]
    frames = mfcc_frames(audio, SAMPLE_RATE, representation="logmel")
    for short in ("repeat", "zeros"):
        images, times = mfcc_images(audio, SAMPLE_RATE, short=short, **RECIPE)
        assert images.shape == (1, 3, 64, 192) and images.dtype == torch.uint8
        assert torch.allclose(times, torch.tensor([[0.0, 1.935]]))
    repeated, _ = mfcc_images(audio, SAMPLE_RATE, short="repeat", **RECIPE)
    # the utterance's own frames, then the same frames again from its start: its statistics, nothing new
    assert torch.equal(repeated[0, ..., n_frames : 2 * n_frames], repeated[0, ..., : 192 - n_frames])
    static = repeated[0, 0].float()
    assert static.amax() == 255 and static.amin() == 0
    assert static.argmax() % 192 < n_frames and frames.shape[-1] == n_frames
    silent, _ = mfcc_images(audio, SAMPLE_RATE, short="zeros", **RECIPE)
    tail = silent[0, 0, :, n_frames + 3 :]  # past the delta window's reach of the last speech frame
    assert tail.float().std() == 0 and tail.max() == 0  # silence: the floor, 80 dB below the loudest frame
    with pytest.raises(ValueError, match="short"):
        mfcc_images(audio, SAMPLE_RATE, short="pad", **RECIPE)


def test_silence_fills_the_audio_to_one_window_and_no_further():
    audio = one_second()
    padded = pad_with_silence(audio, SAMPLE_RATE, 192)
    assert padded.size == round(1.935 * SAMPLE_RATE) and not padded[audio.size :].any()
    assert frame_count(padded.size, SAMPLE_RATE) == 192
    long = np.ones(40000, dtype=np.float32)
    assert pad_with_silence(long, SAMPLE_RATE, 192) is long
    assert pad_with_silence(torch.from_numpy(audio), SAMPLE_RATE, 192).shape == (padded.size,)


@pytest.mark.parametrize("short", SHORT_CHOICES)
def test_a_generated_short_clip_is_dropped_by_default_and_padded_on_request(tmp_path, short):
    path = write_wav(tmp_path / "short.wav", one_second())
    cfg = audio_cfg()
    cfg["mfcc"].update(RECIPE, short=short)
    clip = Clip("short", path, "s1", "anger")
    if short == "drop":
        with pytest.raises(ClipFailure, match="too short: 1.000 s of audio.*short=repeat pads it") as failure:
            preprocess_clip(clip, cfg, None)
        assert failure.value.step == "duration"
        return
    record = preprocess_clip(clip, cfg, None)
    assert record["audio"].shape == (1, 3, 64, 192) and record["meta"]["n_segments"] == 1


def test_the_default_drops_as_before_and_keeps_the_cache_keys():
    cfg = audio_cfg()
    assert cfg["mfcc"]["short"] == "drop"
    before = copy.deepcopy(cfg)
    del before["mfcc"]["short"]  # a config from before the setting: its caches stay valid
    assert cache_key(cfg) == cache_key(before)
    keys = set()
    for short in SHORT_CHOICES:
        cfg["mfcc"]["short"] = short
        keys.add(cache_key(cfg))
    assert len(keys) == 3  # part of the key


@pytest.mark.parametrize("experiment", sorted(path.stem for path in (REPO / "configs" / "experiment").glob("*.yaml")))
def test_only_urdu_pads_among_the_built_in_experiments(experiment):
    short = compose_train([f"experiment={experiment}"]).data.preprocess.mfcc.short
    assert short == ("repeat" if experiment == "urdu_audio" else "drop")
