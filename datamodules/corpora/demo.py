"""Index the built-in demo corpus: the RML layout (``<root>/s<N>/<emo><k>.mp4``), see ``demo_corpus``."""

from __future__ import annotations

from pathlib import Path

from datamodules.clips import IndexResult
from datamodules.corpora import rml
from datamodules.demo_corpus import CLIP_SUFFIX


def index(root: str | Path, *, on_error: str = "skip") -> IndexResult:
    """Index a corpus written by ``datamodules.demo_corpus.generate_demo_corpus``."""
    return rml.index(root, on_error=on_error, extensions=(CLIP_SUFFIX,))
