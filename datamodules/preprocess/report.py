"""The report of a prepared corpus: what was found, prepared, excluded, skipped and dropped and why, per class,
subject and face; as JSON (``build_report``) and as a short table (``format_report``).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from datamodules.clips import Clip, IndexResult
from datamodules.faces import FewFacesError


def failure_summary(report: dict, max_failed_fraction: float, most: int = 5) -> str:
    """Why a run stopped: how many clips failed and the ``most`` most common reasons."""
    reasons = "\n".join(f"  {count} x {reason}" for reason, count in list(report["dropped_by_reason"].items())[:most])
    return (
        f"preprocessing of {report['corpus']} stopped: {len(report['dropped'])} of {report['clips_indexed']} clips "
        f"failed, more than max_failed_fraction={max_failed_fraction:g} of them. A fault this common is more "
        f"likely a bug or a wrong setting than a bad corpus. Most common reasons:\n{reasons}\n"
        f"report so far: {report['cache']}/report.json"
    )


def failure_line(clip_id: str, failure: dict) -> str:
    """One line on a dropped clip: its id, the step, the exception's type, the reason and the file."""
    return f"{clip_id}: {failure['step']}: {failure['error']}: {failure['reason']} ({failure['path']})"


def reason_kind(failure: dict) -> str:
    """A failure without its particulars (what follows a ";" or a " (", numbers, quoted names), so that
    failures of one kind count together."""
    generic = re.split(r";| \(", failure["reason"], maxsplit=1)[0]
    generic = re.sub(r"\d+(\.\d+)?", "N", re.sub(r"'[^']*'", "'…'", generic))
    return f"{failure['step']}: {failure['error']}: {generic}"


def build_report(
    kept: list[Clip],
    metas: dict[str, dict],
    dropped: dict[str, dict],
    indexed: IndexResult,
    *,
    corpus: str,
    key: str,
    folder: Path,
    processed_now: list[str],
    work_s: float,
    total_s: float,
) -> dict:
    """Counts a researcher checks before training: every file under the root (found, excluded by selection,
    skipped by the indexer, dropped, prepared), per class and subject, segments, faces, and the reasons."""
    kept_metas = [metas[c.clip_id] for c in kept]
    used_frames = sum(m["n_frames"] for m in kept_metas)
    new_media_s = sum(metas[c]["duration_s"] for c in processed_now)
    not_reached = len(indexed.clips) - len(kept) - len(dropped)
    return {
        "corpus": corpus,
        "cache": str(folder),
        "key": key,
        "files": {
            "found": indexed.files_found,
            "prepared": len(kept),
            "dropped": len(dropped),
            "excluded": len(indexed.excluded),
            "skipped": len(indexed.skipped),
            "other_files": indexed.other_files,
            **({"further_frames": indexed.further_frames} if indexed.further_frames else {}),
            **({"not_reached": not_reached} if not_reached else {}),
        },
        "clips_indexed": len(indexed.clips),
        "clips_prepared": len(kept),
        "clips_per_class": dict(sorted(Counter(c.label for c in kept).items())),
        "clips_per_subject": dict(sorted(Counter(c.subject for c in kept).items())),
        "segments": sum(m["n_segments"] for m in kept_metas),
        "segments_per_class": _segments_per_class(kept, metas),
        "vad_not_found": sorted(c.clip_id for c in kept if metas[c.clip_id]["vad_found"] is False),
        "face_frames": used_frames,
        **face_counts(kept, metas, dropped),
        "dropped": dict(sorted(dropped.items())),
        "dropped_by_reason": dict(Counter(reason_kind(failure) for failure in dropped.values()).most_common()),
        "excluded": [list(item) for item in indexed.excluded],
        "excluded_by_rule": dict(Counter(rule for _, rule in indexed.excluded).most_common()),
        "skipped": [list(item) for item in indexed.skipped],
        "notes": list(indexed.notes),
        "clips_processed_now": len(processed_now),
        "seconds": round(total_s, 2),
        "clips_per_second": round(len(processed_now) / work_s, 3) if processed_now else None,
        "media_seconds_per_second": round(new_media_s / work_s, 3) if processed_now else None,
    }


def face_counts(kept: list[Clip], metas: dict[str, dict], dropped: dict[str, dict]) -> dict:
    """The report's faces: frames decoded and with a face (the detection rate, over the corpus and per clip),
    frames filled from another frame, segments without a face of their own, centre-crop fallbacks, and the
    clips with too few faces, dropped (by reason) and kept (``few_faces: keep``)."""
    kept_metas = [metas[c.clip_id] for c in kept]
    decoded = sum(m["decoded_frames"] for m in kept_metas)
    detected = sum(m["face_detected_frames"] for m in kept_metas)
    return {
        "decoded_frames": decoded,
        "face_detected_frames": detected,
        "face_detection_rate": detected / decoded if decoded else None,
        "face_detection_rate_per_clip": {
            m["clip_id"]: round(m["face_detected_frames"] / m["decoded_frames"], 4)
            for m in kept_metas
            if m["decoded_frames"]
        },
        "face_filled_frames": sum(m["face_filled_frames"] for m in kept_metas),
        "segments_without_face": sum(m["segments_without_face"] for m in kept_metas),
        "face_fallback_frames": sum(m["face_fallback_frames"] for m in kept_metas),
        "few_faces": {
            "dropped": sum(failure["error"] == FewFacesError.__name__ for failure in dropped.values()),
            "kept": {m["clip_id"]: m["few_faces"] for m in kept_metas if m["few_faces"]},
        },
    }


def _segments_per_class(kept: list[Clip], metas: dict[str, dict]) -> dict[str, int]:
    counts: Counter = Counter()
    for clip in kept:
        counts[clip.label] += metas[clip.clip_id]["n_segments"]
    return dict(sorted(counts.items()))


def format_report(report: dict, listed: int = 20) -> str:
    """The report as a short human-readable table; at most ``listed`` skipped files and notes are named."""
    files = report["files"]
    lines = [
        f"corpus {report['corpus']}  cache {report['cache']}",
        f"files under the root: {files['found']} = {files['prepared']} prepared + {files['dropped']} dropped + "
        f"{files['excluded']} excluded by selection + {files['skipped']} skipped by the indexer + "
        f"{files['other_files']} other files (no recordings by name)"
        + (f" + {files['further_frames']} further frames of image sequences" if "further_frames" in files else "")
        + (f" + {files['not_reached']} not reached" if "not_reached" in files else ""),
        f"clips: {report['clips_prepared']} prepared of {report['clips_indexed']} indexed, "
        f"{report['clips_processed_now']} processed now in {report['seconds']} s"
        + (
            f" ({report['clips_per_second']} clips/s, {report['media_seconds_per_second']} s of media/s)"
            if report["clips_per_second"]
            else ""
        ),
        f"segments: {report['segments']}",
        "per class: "
        + ", ".join(
            f"{k} {v} clips/{report['segments_per_class'][k]} seg" for k, v in report["clips_per_class"].items()
        ),
        "per subject: " + ", ".join(f"{k} {v}" for k, v in report["clips_per_subject"].items()),
    ]
    if report["face_frames"]:
        few = report["few_faces"]
        lines.append(
            f"faces: {report['decoded_frames']} frames decoded, a face in {report['face_detected_frames']} (detection "
            f"rate {report['face_detection_rate']:.3f}, lowest clip "
            f"{min(report['face_detection_rate_per_clip'].values()):.3f}); {report['face_frames']} crops kept, "
            f"{report['face_filled_frames']} frames filled from another frame, {report['segments_without_face']} "
            f"segments without a face of their own, {report['face_fallback_frames']} centre-crop fallbacks; too few "
            f"faces: {few['dropped']} clips dropped, {len(few['kept'])} kept"
        )
    if report["vad_not_found"]:
        lines.append(f"VAD found no speech (whole clip kept): {len(report['vad_not_found'])}")
    lines.append(f"excluded by selection: {files['excluded']}")
    lines += [f"  {rule}: {count}" for rule, count in report["excluded_by_rule"].items()]
    lines.append(f"skipped by the indexer: {files['skipped']}")
    lines += [f"  {path}: {reason}" for path, reason in report["skipped"][:listed]]
    lines.append(f"dropped: {files['dropped']}")
    lines += [f"  {failure_line(clip_id, failure)}" for clip_id, failure in report["dropped"].items()]
    if report["notes"]:
        lines.append(f"notes: {len(report['notes'])}")
        lines += [f"  {note}" for note in report["notes"][:listed]]
    return "\n".join(lines)
