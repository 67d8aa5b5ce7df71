"""The per-clip pipeline, the content-keyed cache and the report, on real recordings."""

import copy
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from datamodules.clips import Clip
from datamodules.corpora import ravdess
from datamodules.preprocess import (
    _results_in_this_process,
    atomic_save,
    available_cores,
    cache_folder,
    cache_key,
    chunks,
    computing_with,
    load_clip,
    pool_start_method,
    prepare_corpus,
    thread_settings,
    threads_per_worker,
    worker_pool,
)

REPO = Path(__file__).resolve().parents[1]
PAPER = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "preprocess" / "paper.yaml"))


def audio_cfg() -> dict:
    cfg = copy.deepcopy(PAPER)
    cfg["video"] = False
    return cfg


def speech_clips(root: Path, n: int = 4) -> list[Clip]:
    clips = ravdess.index(root, modality="audio").clips
    return [c for c in clips if c.subject in ("actor_01", "actor_02")][:n]


class Unpicklable:
    def __reduce__(self):
        raise pickle.PicklingError("interrupted mid-write")


def test_cache_key_follows_every_parameter():
    cfg = audio_cfg()
    assert cache_key(cfg) == cache_key(copy.deepcopy(cfg))
    changed = copy.deepcopy(cfg)
    changed["vad"]["ratio_threshold"] += 0.01
    assert cache_key(changed) != cache_key(cfg)
    changed = copy.deepcopy(cfg)
    changed["mfcc"]["scale"] = "utterance"
    assert cache_key(changed) != cache_key(cfg)


def test_interrupted_write_leaves_no_file(tmp_path):
    target = tmp_path / "clip.pt"
    with pytest.raises(pickle.PicklingError):
        atomic_save({"audio": torch.zeros(3), "meta": Unpicklable()}, target)
    assert list(tmp_path.iterdir()) == []


def test_prepare_writes_skips_and_rekeys(tmp_path, ravdess_speech_root):
    clips = speech_clips(ravdess_speech_root)
    cfg = audio_cfg()
    first = prepare_corpus(clips, cfg, tmp_path, corpus="ravdess", workers=1, progress=False)
    folder = cache_folder(tmp_path, "ravdess", cfg)
    assert first.report["clips_prepared"] == len(clips) and first.report["clips_processed_now"] == len(clips)
    record = load_clip(folder / f"{clips[0].clip_id}.pt")
    assert record["audio"].dtype == torch.uint8 and record["audio"].shape[1:] == (3, 64, 64)
    assert record["segment_times"].shape == (record["audio"].shape[0], 2)
    assert "face_frames" not in record
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.pt")}

    (folder / f".{clips[1].clip_id}.pt.999.tmp").write_bytes(b"half a file")  # a killed run's leftover
    again = prepare_corpus(clips, cfg, tmp_path, corpus="ravdess", workers=1, progress=False)
    assert again.report["clips_processed_now"] == 0 and again.report["clips_prepared"] == len(clips)
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.pt")} == stamps
    assert not list(folder.glob(".*.tmp"))

    changed = audio_cfg()
    changed["vad"]["pre_s"] = 0.1
    rekeyed = prepare_corpus(clips[:1], changed, tmp_path, corpus="ravdess", workers=1, progress=False)
    assert cache_folder(tmp_path, "ravdess", changed) != folder
    assert rekeyed.report["clips_processed_now"] == 1


def test_bad_input_is_reported_and_the_run_goes_on(tmp_path, ravdess_speech_root):
    good = speech_clips(ravdess_speech_root, n=1)
    corrupt = tmp_path / "corpus" / "03-01-05-01-01-01-01.flac"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"\x00not a flac file" * 100)
    truncated = tmp_path / "corpus" / "03-01-04-01-01-01-01.flac"
    data = good[0].path.read_bytes()
    truncated.write_bytes(data[:200])
    clips = good + [
        Clip("broken", corrupt, "actor_01", "anger"),
        Clip("truncated", truncated, "actor_01", "sadness"),
    ]
    cfg = audio_cfg()
    cfg["max_failed_fraction"] = 1.0
    prepared = prepare_corpus(clips, cfg, tmp_path / "cache", corpus="ravdess", workers=2, progress=False)
    assert [c.clip_id for c in prepared.clips] == [good[0].clip_id]
    dropped = prepared.report["dropped"]
    assert set(dropped) == {"broken", "truncated"}
    assert dropped["broken"]["path"] == str(corrupt) and dropped["broken"]["step"] == "decode"
    assert dropped["broken"]["reason"].startswith("not a media file: no flac header; it begins with bytes 00 6e 6f 74")
    assert dropped["truncated"]["path"] == str(truncated) and "truncated" in dropped["truncated"]["reason"]
    folder = cache_folder(tmp_path / "cache", "ravdess", cfg)
    assert sorted(p.name for p in folder.glob("*.pt")) == [f"{good[0].clip_id}.pt"]


def test_audio_visual_clip_gives_aligned_face_segments(tmp_path, ravdess_av_clip):
    cfg = copy.deepcopy(PAPER)
    cfg["faces"]["size"] = 64
    clip = Clip("av", ravdess_av_clip, "actor_01", "disgust")
    prepared = prepare_corpus([clip], cfg, tmp_path, corpus="ravdess", workers=1, progress=False)
    record = load_clip(prepared.files["av"])
    k = record["audio"].shape[0]
    assert record["face_index"].shape == (k, 20) and record["face_index"].dtype == torch.int64
    assert record["face_frames"].dtype == torch.uint8 and record["face_frames"].shape[1:] == (3, 64, 64)
    assert int(record["face_index"].max()) < record["face_frames"].shape[0]
    assert prepared.report["face_detection_rate"] >= 0.95
    start, end = record["meta"]["vad_span_s"]
    assert 0 < start and end <= record["meta"]["duration_s"]
    assert float(record["segment_times"][0, 0]) == pytest.approx(start, abs=1e-3)


@pytest.mark.slow
def test_prepare_cli_on_ravdess_speech(tmp_path, ravdess_speech_root):
    """The issue's command: all 960 six-class clips of actors 1-20, with the printed report."""
    result = subprocess.run(
        [
            sys.executable,
            "prepare.py",
            "data=ravdess",
            f"data.root={ravdess_speech_root}",
            f"paths.cache_dir={tmp_path}",
            f"paths.output_dir={tmp_path / 'outputs'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "clips: 960 prepared of 960 indexed" in result.stdout
    report = next(tmp_path.glob("ravdess/*/report.json"))
    counts = OmegaConf.load(report)
    assert len(counts.clips_per_subject) == 20 and set(counts.clips_per_class.values()) == {160}
    assert counts.segments > 960
    shutil.rmtree(tmp_path / "ravdess")


def test_workers_compute_with_their_share_of_the_cores():
    assert threads_per_worker(2, cores=2) == 1 and threads_per_worker(4, cores=16) == 4
    assert threads_per_worker(3, cores=2) == 1
    # audio work gains nothing from threads: one per worker, however few the workers
    assert threads_per_worker(1, video=False, cores=16) == 1 and threads_per_worker(2, video=False, cores=16) == 1
    for cfg in (PAPER, audio_cfg()):
        with worker_pool(2, cfg) as pool:
            reports = [pool.submit(thread_settings).result() for _ in range(4)]
        share = threads_per_worker(2, cfg["video"])
        assert all(
            report
            == {
                "torch": share,
                "decoder": share,
                "OMP_NUM_THREADS": str(share),
                "MKL_NUM_THREADS": str(share),
                "OPENBLAS_NUM_THREADS": str(share),
            }
            for report in reports
        )


@pytest.fixture
def torch_threads_restored():
    original = torch.get_num_threads()
    yield
    torch.set_num_threads(original)


def test_audio_prepared_in_this_process_computes_with_one_thread_then_gives_the_threads_back(
    generated_ravdess, tmp_path, torch_threads_restored
):
    torch.set_num_threads(2)
    before = thread_settings()
    clips = speech_clips(generated_ravdess, n=2)
    results = _results_in_this_process(
        clips, audio_cfg(), {c.clip_id: tmp_path / f"{c.clip_id}.pt" for c in clips}, False
    )
    assert next(results).clip_id == clips[0].clip_id
    during = thread_settings()
    results.close()
    assert during == {
        "torch": 1,
        "decoder": 1,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }
    assert thread_settings() == before and torch.get_num_threads() == 2
    with computing_with(None):
        assert thread_settings() == before


def test_workers_are_forked_only_when_each_computes_with_one_thread():
    assert pool_start_method(2) == "forkserver"
    if not sys.platform.startswith("linux"):
        pytest.skip("workers are forked on Linux only")
    assert pool_start_method(1) == "fork"
    thread_settings_after_a_convolution(0)  # this process computes with several threads first: GNU OpenMP's pool exists
    with worker_pool(available_cores(), audio_cfg()) as pool:
        assert pool._mp_context.get_start_method() == "fork"
        assert all(report["torch"] == 1 for report in pool.map(thread_settings_after_a_convolution, range(4)))
    if available_cores() > 1:
        with worker_pool(1, PAPER) as pool:  # a video corpus's single worker takes every core's thread
            assert pool._mp_context.get_start_method() == "forkserver"
            assert pool.submit(thread_settings).result()["torch"] == available_cores()
        with worker_pool(1, audio_cfg()) as pool:  # an audio corpus's does not
            assert pool._mp_context.get_start_method() == "fork"
            assert pool.submit(thread_settings).result()["torch"] == 1


def thread_settings_after_a_convolution(_: int) -> dict:
    """A worker's ``thread_settings`` once it has computed: a forked worker that computes with more than one
    thread would hang here."""
    with torch.no_grad():
        torch.nn.functional.conv2d(torch.ones(8, 16, 64, 64), torch.ones(16, 16, 3, 3))
    return thread_settings()


def test_clips_are_handed_out_in_chunks_that_keep_every_worker_busy():
    runs = chunks(list(range(100)), workers=2)
    assert [item for run in runs for item in run] == list(range(100))
    sizes = [len(run) for run in runs]
    assert sizes[0] == 13 and sizes == sorted(sizes, reverse=True) and sizes[-2:] == [1, 1]
    assert chunks(list(range(3)), workers=4) == [[0], [1], [2]]
    assert max(map(len, chunks(list(range(10_000)), workers=2))) == 16


def test_two_workers_prepare_what_one_does(tmp_path, ravdess_speech_root):
    clips = speech_clips(ravdess_speech_root, n=6)
    one = prepare_corpus(clips, audio_cfg(), tmp_path / "one", corpus="ravdess", workers=1, progress=False)
    two = prepare_corpus(clips, audio_cfg(), tmp_path / "two", corpus="ravdess", workers=2, progress=False)
    assert one.metas == two.metas
    for clip in clips:
        assert torch.equal(load_clip(one.files[clip.clip_id])["audio"], load_clip(two.files[clip.clip_id])["audio"])
