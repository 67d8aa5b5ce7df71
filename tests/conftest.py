import os
import shutil
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


def without_read_override(command: list[str]) -> list[str]:
    """``command`` such that file permissions bind it: as root, run through ``setpriv`` without the
    capabilities that let root read any file (skips the test when ``setpriv`` is absent); else unchanged."""
    if os.geteuid() != 0:
        return command
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a file's permissions cannot stop this process")
    capabilities = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={capabilities}", f"--bounding-set={capabilities}", *command]


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


TINY_MODELS = [
    "model.audio.module.backbone.fc_dim=32",
    "model.visual.module.backbone.fc_dim=32",
    "model.visual.module.lstm_hidden=32",
    "model.fusion.module.attention_dim=16",
    "model.fusion.module.hidden_dims=[32]",
]


def compose_train(overrides: list[str]):
    """configs/train.yaml composed with ``overrides``, as ``python train.py <overrides>`` would."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose("train", overrides=overrides)


def small_demo_overrides(base: Path) -> list[str]:
    """Hydra overrides for a small generated demo corpus (3 subjects x 6 emotions x 1 clip) under ``base``."""
    os.environ.setdefault("AVER_ROOT", str(REPO))
    return [
        f"paths.data_dir={base / 'data'}",
        f"paths.cache_dir={base / 'cache'}",
        f"paths.output_dir={base / 'outputs'}",
        "++data.generator.subjects=3",
        "++data.generator.clips_per_emotion=1",
        "++data.generator.seconds=[1.9,2.2]",
        "data.preprocess.faces.size=32",
        "data.preprocess.faces.detect_max_side=160",
        "callbacks.progress_bar=null",
    ]


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
    from audio_trees import make_ravdess_speech

    from datamodules.clips import PAPER_EMOTIONS

    root = tmp_path_factory.mktemp("generated_ravdess")
    make_ravdess_speech(root, actors=range(1, 5), emotions=PAPER_EMOTIONS, takes=4)
    return root


@pytest.fixture(scope="session")
def generated_emodb(tmp_path_factory) -> Path:
    """An EmoDB-layout tree of generated speech: speakers 03, 08, 09 x 5 emotions (no surprise) x 3 sentences."""
    from audio_trees import make_emodb

    root = tmp_path_factory.mktemp("generated_emodb")
    make_emodb(
        root, speakers=("03", "08", "09"), emotions=("anger", "disgust", "fear", "happiness", "sadness"), takes=3
    )
    return root
