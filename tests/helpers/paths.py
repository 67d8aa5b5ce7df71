"""Where the repository and ../shared/data are, and how a test reaches them."""

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("AVER_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the calling test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (set AVER_SHARED_DATA or place ../shared beside the repo)")
    return path


def without_read_override(command: list[str]) -> list[str]:
    """``command`` such that file permissions bind it: as root, run through ``setpriv`` without the
    capabilities that let root read any file (skips the test when ``setpriv`` is absent); else unchanged."""
    if os.geteuid() != 0:
        return command
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a file's permissions cannot stop this process")
    capabilities = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={capabilities}", f"--bounding-set={capabilities}", *command]
