import subprocess
import sys
from pathlib import Path

import pytest

from lightning_modules.host_memory import ON_GLIBC

REUSE = """
import resource, sys, torch
from lightning_modules.host_memory import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
faults = []
for _ in range(8):  # 256 MB made, every page written, and freed, as a training step's buffers are
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(64 * 2**20)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(kept, sum(faults[3:]))
"""
BLOCK_PAGES = 64 * 2**20 * 4 // 4096  # 65,536 pages of 4 KB
REPO = Path(__file__).resolve().parents[1]


def page_faults_after_settling(mode: str) -> tuple[str, int]:
    """(whether the setting took, page faults of the last 5 of 8 successive 256 MB tensors), in a fresh
    interpreter (the setting is process-wide)."""
    out = subprocess.run(
        [sys.executable, "-c", REUSE, mode], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    kept, faults = out.split()
    return kept, int(faults)


@pytest.mark.skipif(not ON_GLIBC, reason="mallopt is glibc's")
def test_freed_memory_is_reused_without_page_faults():
    _, default_faults = page_faults_after_settling("default")
    assert default_faults >= 5 * BLOCK_PAGES  # glibc's default maps every block afresh
    kept, faults = page_faults_after_settling("keep")
    assert kept == "True"
    # measured: the first two blocks are faulted in, the rest reuse them (at most one more, rarely)
    assert faults <= BLOCK_PAGES
