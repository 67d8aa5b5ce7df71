"""Index a corpus from its file names (``data=pattern``; ``data=folder`` is the preset ``{subject}/{label}/{_}``).

``pattern`` is a format string (the ``parse`` library's) over each media file's path below the root, ``/`` between
folders: ``{subject}`` and ``{label}`` are required, every other named field is kept in ``Clip.extra`` and ``{_}``
is ignored. A field without a format spec matches within one path part (no ``/``); ``{n:d}`` (digits), ``{x:l}``
(letters) and the library's other specs hold as documented. Matching is case-sensitive and of the whole path::

    '{label}/{subject}_F{take}_{code}.wav'              URDU      Angry/SM1_F10_A010.wav
    '{subject}_{sentence}_{label}_{level}.flv'          CREMA-D   1001_DFA_ANG_XX.flv
    '{subject}.{label:l}{n:d}.{image:d}.tiff'           JAFFE     KA.AN1.39.tiff

Media files (audio, video, image suffixes) that do not match are skipped and listed with the pattern; other files
are counted. An image is a one-frame clip. ``label_map``, ``classes`` and ``on_error`` work as for
``data=manifest``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import parse

from datamodules.clips import PAPER_EMOTIONS, Clip, IndexResult
from datamodules.corpora import Problem, check_on_error, finish_index, require_root, scan_media
from datamodules.corpora.table import MEDIA_SUFFIXES, check_label_map, default_clip_id, map_label, table_clip

FOLDER_PATTERN = "{subject}/{label}/{_}"
REQUIRED_FIELDS: tuple[str, ...] = ("subject", "label")
_FIELD = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")


@parse.with_pattern(r"[^/]+")
def _path_part(text: str) -> str:
    return text


def compile_pattern(pattern: str) -> parse.Parser:
    """``pattern`` as a case-sensitive parser whose fields without a spec stay within one path part and whose
    ``{_}`` fields are anonymous; ``ValueError`` for a pattern that does not compile or lacks a required field."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"pattern must be a format string such as {FOLDER_PATTERN!r}, got {pattern!r}")

    def field(match: re.Match) -> str:
        if match.group(1) is None:
            return match.group(0)
        name, colon, spec = match.group(1).partition(":")
        name = "" if name == "_" else name
        return f"{{{name}:{spec if colon and spec else 'PathPart'}}}"

    try:
        parser = parse.compile(_FIELD.sub(field, pattern), extra_types={"PathPart": _path_part}, case_sensitive=True)
    except (ValueError, KeyError, TypeError, parse.RepeatedNameError) as error:
        raise ValueError(f"pattern {pattern!r} does not compile: {error}") from error
    missing = [name for name in REQUIRED_FIELDS if name not in parser.named_fields]
    if missing:
        raise ValueError(f"pattern {pattern!r} lacks the field(s) {', '.join('{' + m + '}' for m in missing)}")
    return parser


def path_clip(
    path: Path, root: Path, parser: parse.Parser, pattern: str, label_map: Mapping, classes: Sequence[str]
) -> tuple[Clip, str | None]:
    """The clip a file is and the rule that leaves it out (None: kept); ``ValueError`` with the reason."""
    relative = path.relative_to(root).as_posix()
    found = parser.parse(relative)
    if found is None:
        raise ValueError(f"{relative!r} does not match the pattern {pattern!r}")
    fields = dict(found.named)
    subject, raw_label = str(fields.pop("subject")), str(fields.pop("label"))
    label, rule = map_label(raw_label, label_map, classes)
    clip = table_clip(default_clip_id(relative), path, subject, label, {**fields, "corpus_label": raw_label})
    return clip, rule


def index(
    root: str | Path,
    *,
    pattern: str = FOLDER_PATTERN,
    on_error: str = "skip",
    classes: Sequence[str] = PAPER_EMOTIONS,
    label_map: Mapping[str, str | None] | None = None,
) -> IndexResult:
    """Index the media files under ``root`` whose path matches ``pattern`` and whose label is in ``classes``.

    A media file that does not match, or whose label is neither in ``label_map`` nor a class name, is listed in
    ``IndexResult.skipped`` (``on_error="skip"``) or raises ``CorpusLayoutError`` (``"raise"``).
    """
    check_on_error(on_error)
    parser = compile_pattern(pattern)
    label_map = check_label_map(label_map)
    root = require_root(root, "pattern")
    scan = scan_media(root, MEDIA_SUFFIXES)
    clips: list[Clip] = []
    problems: list[Problem] = []
    excluded: list[Problem] = []
    for path in scan.files:
        try:
            clip, rule = path_clip(path, root, parser, pattern, label_map, classes)
        except ValueError as reason:
            problems.append((path, str(reason)))
            continue
        if rule:
            excluded.append((path, rule))
        else:
            clips.append(clip)
    expected = f"media files whose path below the root matches {pattern!r}; selected classes={list(classes)}"
    return finish_index(
        clips, problems, scan=scan, excluded=excluded, corpus="pattern", root=root, expected=expected, on_error=on_error
    )
