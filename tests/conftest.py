import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("AVER_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the calling test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (set AVER_SHARED_DATA or place ../shared beside the repo)")
    return path


@pytest.fixture(scope="session")
def ravdess_av_clip() -> Path:
    return shared_path("ravdess-av", "01-01-07-02-02-01-01.mp4")


@pytest.fixture(scope="session")
def ravdess_speech_root() -> Path:
    return shared_path("ravdess-speech-16k")
