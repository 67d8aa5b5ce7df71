"""Per-clip preprocessing (paper §3.1-3.3), the content-keyed clip cache, the worker pool and the report.

One clip becomes one cache file ``<cache_dir>/<corpus>/<key>/<clip_id>.pt`` where ``key`` hashes the
preprocessing config: change any parameter and the clips are prepared again into a new folder.

Every step of a clip (decode, duration, vad, mfcc, faces, save) runs under one guard: an exception in
one clip drops that clip, with the step and the reason, in the report and on the terminal, and the other
clips go on. A clip dropped for bad input leaves ``<clip_id>.dropped.json`` instead of a cache file.

Several runs may fill one cache at once (array jobs on a shared filesystem): every file is written to a
temporary name and renamed, and a clip is prepared only by the run that holds its lock (``claim_clip``);
the others go on with other clips and read it when it is done.

Modules, each importing only those above it:

- ``pipeline``: the steps of one clip (``step``, ``ClipFailure``, ``preprocess_clip``);
- ``cache_files``: the cache key and folder, cache files, verdicts and locks;
- ``workers``: thread limits, the worker pool and the task each worker runs on a clip;
- ``progress``: a bar on a terminal, whole lines in a log file;
- ``report``: the report of a prepared corpus;
- ``corpus``: ``prepare_corpus``;
- ``vad_plots``: VAD plots of a sample of clips.
"""

from datamodules.preprocess.cache_files import cache_folder, cache_key, cut_source, load_clip
from datamodules.preprocess.corpus import PreparedCorpus, TooManyFailuresError, prepare_corpus
from datamodules.preprocess.pipeline import (
    ClipFailure,
    check_failure_settings,
    decode,
    face_detector,
    frame_segments,
    segment_faces,
    segment_frames,
    silent_segments,
    speech_segments,
    step,
)
from datamodules.preprocess.progress import clip_progress
from datamodules.preprocess.report import face_counts, failure_line, format_report
from datamodules.preprocess.vad_plots import plot_vad_spans, sample_across
from datamodules.preprocess.workers import (
    available_cores,
    chunks,
    computing_with,
    limit_threads,
    pool_start_method,
    thread_settings,
    threads_per_worker,
    worker_pool,
)

__all__ = [
    "ClipFailure",
    "PreparedCorpus",
    "TooManyFailuresError",
    "available_cores",
    "cache_folder",
    "cut_source",
    "cache_key",
    "check_failure_settings",
    "chunks",
    "clip_progress",
    "computing_with",
    "decode",
    "face_counts",
    "face_detector",
    "failure_line",
    "format_report",
    "frame_segments",
    "limit_threads",
    "load_clip",
    "plot_vad_spans",
    "pool_start_method",
    "prepare_corpus",
    "sample_across",
    "segment_faces",
    "segment_frames",
    "silent_segments",
    "speech_segments",
    "step",
    "thread_settings",
    "threads_per_worker",
    "worker_pool",
]
