"""Fixtures shared by tests/unit and tests/integration; helpers live in tests/helpers."""

from pathlib import Path

import pytest

from tests.helpers.configs import compose_train, small_demo_overrides
from tests.helpers.paths import shared_path

SHARED_FIXTURES = frozenset({"ravdess_av_clip", "ravdess_speech_root", "ck48_root"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test whose fixtures read ../shared carries the ``shared`` marker (``-m "not shared"`` skips them)."""
    for item in items:
        if SHARED_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.shared)


@pytest.fixture(scope="session")
def ravdess_av_clip() -> Path:
    return shared_path("ravdess-av", "01-01-07-02-02-01-01.mp4")


@pytest.fixture(scope="session")
def ravdess_speech_root() -> Path:
    return shared_path("ravdess-speech-16k")


@pytest.fixture(scope="session")
def ck48_root() -> Path:
    return shared_path("ck48")


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> list[str]:
    """Overrides for the small generated demo corpus, prepared once."""
    from hydra.utils import instantiate

    overrides = small_demo_overrides(tmp_path_factory.mktemp("tiny_demo"))
    instantiate(compose_train(overrides).data).prepare_data()
    return overrides


@pytest.fixture(scope="session")
def generated_ravdess(tmp_path_factory) -> Path:
    """A RAVDESS-layout tree of generated audio-only speech: 4 actors x 6 paper emotions x 4 takes (wav)."""
    from datamodules.clips import PAPER_EMOTIONS
    from tests.helpers.audio_trees import make_ravdess_speech

    root = tmp_path_factory.mktemp("generated_ravdess")
    make_ravdess_speech(root, actors=range(1, 5), emotions=PAPER_EMOTIONS, takes=4)
    return root


@pytest.fixture(scope="session")
def generated_emodb(tmp_path_factory) -> Path:
    """An EmoDB-layout tree of generated speech: speakers 03, 08, 09 x 5 emotions (no surprise) x 3 sentences."""
    from tests.helpers.audio_trees import make_emodb

    root = tmp_path_factory.mktemp("generated_emodb")
    make_emodb(
        root, speakers=("03", "08", "09"), emotions=("anger", "disgust", "fear", "happiness", "sadness"), takes=3
    )
    return root
