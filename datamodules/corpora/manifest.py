"""Index a corpus from a table of its clips (``data=manifest``): any corpus without code.

One row per clip, CSV or TSV (by the extension ``.csv`` / ``.tsv`` / ``.tab``, else sniffed), a header naming
the columns: ``path`` (relative to the table's folder, or absolute; a media file, a folder of frames or one
image), ``subject``, ``label``; optionally ``start_s`` / ``end_s`` (the clip is that span of a longer
recording, cut when it is decoded: no file is written) and ``clip_id`` (by default the path below the table's
folder and the times, filesystem-safe). Every other column is kept in ``Clip.extra``. ``label_map`` maps the
table's labels to class names; rows of labels left out by ``classes`` are excluded, counted per class.

A row that cannot be a clip (an empty or duplicated clip id, a path that does not exist, ``end_s <= start_s``,
an unknown label, an empty subject, ...) is a problem naming the row (its line in the file) and the value:
``on_error="skip"`` lists it in ``IndexResult.skipped`` and goes on, ``"raise"`` stops on the first with a
``CorpusLayoutError``. A table without a required column is an error in both modes. A cut ending past its
recording's end is found when the clip is decoded: the clip is then dropped with that reason.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from datamodules.clips import PAPER_EMOTIONS, Clip, CorpusLayoutError, IndexResult
from datamodules.corpora import (
    MediaScan,
    Problem,
    check_on_error,
    finish_index,
    require_root,
    safe_id,
)
from datamodules.corpora.table import check_label_map, default_clip_id, map_label, table_clip

REQUIRED_COLUMNS: tuple[str, ...] = ("path", "subject", "label")
OPTIONAL_COLUMNS: tuple[str, ...] = ("start_s", "end_s", "clip_id")
DELIMITERS: dict[str, str] = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
EXPECTED_LAYOUT = (
    "a table (CSV or TSV) with a header and one row per clip: columns path (relative to the table's folder, or "
    "absolute), subject, label; optional start_s, end_s (seconds) and clip_id; any other column is kept"
)


def table_path(root: Path, manifest: str | Path) -> Path:
    """The table: ``manifest`` as given when absolute, else below ``root``; ``CorpusLayoutError`` when missing."""
    path = Path(manifest).expanduser()
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise CorpusLayoutError(f"manifest table {path} does not exist (data.indexer.manifest={manifest})")
    return path


def read_table(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """The header of the table at ``path`` and its rows, each with its line number in the file; ``CorpusLayoutError``
    for a table that cannot be read or lacks a required column."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise CorpusLayoutError(f"manifest table {path} cannot be read: {error}") from error
    delimiter = DELIMITERS.get(path.suffix.lower())
    if delimiter is None:
        try:
            delimiter = csv.Sniffer().sniff(text[:8192], delimiters=",\t;|").delimiter
        except csv.Error as error:
            raise CorpusLayoutError(
                f"manifest table {path}: cannot tell its delimiter ({error}); name it .csv or .tsv"
            ) from error
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = [name.strip() for name in next(reader, [])]
    missing = [column for column in REQUIRED_COLUMNS if column not in header]
    if missing:
        raise CorpusLayoutError(
            f"manifest table {path} lacks the column(s) {', '.join(missing)} (its header: {header}); {EXPECTED_LAYOUT}"
        )
    repeated = sorted({name for name in header if header.count(name) > 1 and name})
    if repeated:
        raise CorpusLayoutError(f"manifest table {path}: column(s) {', '.join(repeated)} appear twice in the header")
    rows = []
    for cells in reader:
        if not any(cell.strip() for cell in cells):
            continue
        line = reader.line_num
        if len(cells) > len(header):
            rows.append((line, {"__cells__": (len(cells), len(header))}))
            continue
        rows.append((line, {name: cell.strip() for name, cell in zip(header, cells) if name}))
    return header, rows


def parse_seconds(row: dict, column: str) -> float | None:
    """The seconds in ``row[column]``, None when the cell is empty or absent; ``ValueError`` naming the value."""
    value = row.get(column, "")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{column}={value!r} is not a number of seconds") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{column}={value!r} is not a number of seconds >= 0")
    return seconds


def row_clip(
    row: dict, folder: Path, label_map: Mapping[str, str | None], classes: Sequence[str]
) -> tuple[Clip, str | None]:
    """The clip of one row and the rule that leaves it out (None: kept); ``ValueError`` naming the value."""
    if "__cells__" in row:
        cells, columns = row["__cells__"]
        raise ValueError(f"{cells} cells, the header names {columns} columns")
    given = row.get("path", "")
    if not given:
        raise ValueError("empty path")
    path = Path(given).expanduser()
    path = path if path.is_absolute() else folder / path
    if not path.exists():
        raise ValueError(f"path {given!r} does not exist ({path})")
    subject = row.get("subject", "")
    if not subject:
        raise ValueError(f"empty subject (path {given!r})")
    if not row.get("label", ""):
        raise ValueError(f"empty label (path {given!r})")
    label, rule = map_label(row["label"], label_map, classes)
    start_s, end_s = parse_seconds(row, "start_s"), parse_seconds(row, "end_s")
    if end_s is not None and end_s <= (start_s or 0.0):
        raise ValueError(f"end_s={row['end_s']} is not after start_s={row.get('start_s') or 0} (path {given!r})")
    if "clip_id" in row:
        clip_id = row["clip_id"]
        if not clip_id:
            raise ValueError(f"empty clip_id (path {given!r})")
        if safe_id(clip_id) != clip_id:
            raise ValueError(f"clip_id {clip_id!r} is not filesystem-safe: use letters, digits, _ . - only")
    else:
        try:
            relative = path.resolve().relative_to(folder.resolve()).as_posix()
        except ValueError:
            relative = path.as_posix().lstrip("/")
        clip_id = default_clip_id(relative, start_s, end_s)
    extra = {name: value for name, value in row.items() if name not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS}
    clip = table_clip(clip_id, path, subject, label, {**extra, "corpus_label": row["label"]}, start_s, end_s)
    return clip, rule


def index(
    root: str | Path,
    *,
    manifest: str | Path = "clips.csv",
    on_error: str = "skip",
    classes: Sequence[str] = PAPER_EMOTIONS,
    label_map: Mapping[str, str | None] | None = None,
) -> IndexResult:
    """Index the rows of the table ``manifest`` (below ``root`` or absolute) whose label is in ``classes``.

    ``label_map`` maps the table's labels onto class names (null: a label left out on purpose); a label neither
    in it nor a class name is a problem of its row, as is every other row that cannot be a clip (see the
    module's docstring): listed in ``IndexResult.skipped`` (``on_error="skip"``) or a ``CorpusLayoutError`` on
    the first (``"raise"``).
    """
    check_on_error(on_error)
    label_map = check_label_map(label_map)
    root = require_root(root, "manifest")
    table = table_path(root, manifest)
    _, rows = read_table(table)
    clips: list[Clip] = []
    problems: list[Problem] = []
    excluded: list[Problem] = []
    first_row: dict[str, int] = {}
    for line, row in rows:
        try:
            clip, rule = row_clip(row, table.parent, label_map, classes)
            if clip.clip_id in first_row:
                raise ValueError(f"clip_id {clip.clip_id!r} is already taken by row {first_row[clip.clip_id]}")
        except ValueError as reason:
            if on_error == "raise":
                raise CorpusLayoutError(
                    f"manifest table {table} row {line}: {reason}\n(pass on_error='skip' to index the other rows "
                    "and list the bad ones as skipped)"
                ) from None
            problems.append((table, f"row {line}: {reason}"))
            continue
        first_row[clip.clip_id] = line
        if rule:
            excluded.append((clip.path, rule))
        else:
            clips.append(clip)
    expected = f"{EXPECTED_LAYOUT}; table {table}; selected classes={list(classes)}"
    return finish_index(
        clips,
        problems,
        scan=MediaScan([], [], 0),
        excluded=excluded,
        corpus="manifest",
        root=root,
        expected=expected,
        on_error=on_error,
    )
