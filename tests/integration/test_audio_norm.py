"""data.audio_norm: per-utterance and per-speaker statistics carried by the segments, the AudioModule
standardising by them, and the recipe experiment (TDNN, speaker normalisation) through the real configs."""

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from datamodules.mfcc import audio_statistics
from lightning_modules import AudioModule
from runner.loop import run
from tests.helpers.configs import compose_train

TDNN = {"_target_": "lightning_modules.components.tdnn.StatsPoolTDNN"}  # configs/audio_backbone/tdnn.yaml's class


def test_audio_statistics_are_the_mean_and_std_of_each_channel_and_row_over_all_frames():
    generator = torch.Generator().manual_seed(0)
    clips = [torch.randint(0, 256, (k, 3, 4, 10), dtype=torch.uint8, generator=generator) for k in (2, 3)]
    stats = audio_statistics(clips)
    frames = torch.cat([c.float().div(255).permute(0, 3, 1, 2).reshape(-1, 3, 4) for c in clips])
    assert stats.shape == (2, 3, 4)
    assert torch.allclose(stats[0], frames.mean(0)) and torch.allclose(stats[1], frames.std(0))
    flat = torch.full((1, 3, 4, 10), 7, dtype=torch.uint8)
    assert (audio_statistics([flat])[1] == 1e-3).all()  # a constant row is not divided by zero


@pytest.fixture(scope="module")
def ravdess_overrides(generated_ravdess, tmp_path_factory) -> list[str]:
    base = tmp_path_factory.mktemp("audio_norm")
    return [
        "experiment=ravdess_audio",
        f"data.root={generated_ravdess}",
        f"paths.cache_dir={base / 'cache'}",
        f"paths.output_dir={base / 'outputs'}",
        "logger=none",
        "data.num_workers=0",
        "callbacks.progress_bar=null",
        # the generated utterances last 1.4-1.7 s: the paper's 64-frame windows, not the recipe's 1.93 s
        "data.preprocess.mfcc.window=64",
    ]


@pytest.mark.parametrize("norm", ["speaker", "utterance"])
def test_segments_carry_their_speakers_or_their_clips_statistics(ravdess_overrides, norm):
    data = instantiate(compose_train([*ravdess_overrides, f"data.audio_norm={norm}"]).data)
    data.prepare_data()
    data.setup()
    dataset = data.dataset([clip.clip_id for clip in data.clips])
    items = [dataset[k] for k in range(len(dataset))]
    by_clip = {int(item["clip_index"]): item["audio_stats"] for item in items}
    for position, clip in enumerate(data.clips):
        if norm == "speaker":
            group = [r["audio"] for c, r in zip(data.clips, data.records) if c.subject == clip.subject]
        else:
            group = [data.records[position]["audio"]]
        assert torch.allclose(by_clip[position], audio_statistics(group))
    subjects = {clip.subject for clip in data.clips}
    distinct = {tuple(stats.flatten()[:4].tolist()) for stats in by_clip.values()}
    assert len(distinct) == (len(subjects) if norm == "speaker" else len(data.clips))


def test_no_audio_norm_adds_nothing_and_an_unknown_one_is_refused(ravdess_overrides):
    data = instantiate(compose_train([*ravdess_overrides, "data.audio_norm=none"]).data)
    data.prepare_data()
    data.setup()
    assert "audio_stats" not in data.dataset([data.clips[0].clip_id])[0]
    with pytest.raises(Exception, match="audio_norm must be one of"):
        instantiate(compose_train([*ravdess_overrides, "data.audio_norm=bogus"]).data)


def test_a_speaker_normalised_module_standardises_by_the_batch_statistics_and_needs_them():
    images = torch.randint(0, 256, (4, 3, 16, 20), dtype=torch.uint8)
    stats = audio_statistics([images])
    module = AudioModule(backbone={**TDNN, "rows": 16, "channels": 8, "fc_dim": 8}, input_norm="speaker")
    standard = module.standardise({"audio": images, "audio_stats": stats.expand(4, -1, -1, -1)})
    frames = standard.permute(0, 3, 1, 2).reshape(-1, 3, 16)
    assert torch.allclose(frames.mean(0), torch.zeros(3, 16), atol=1e-5)
    assert torch.allclose(frames.std(0), torch.ones(3, 16), atol=1e-4)
    with pytest.raises(ValueError, match="data.audio_norm=speaker"):
        module.standardise({"audio": images})
    with pytest.raises(ValueError, match="input_norm must be one of"):
        AudioModule(input_norm="bogus")


def test_the_recipe_experiment_composes_a_speaker_normalised_tdnn(ravdess_overrides):
    cfg = compose_train(ravdess_overrides)
    module_cfg = cfg.model.audio.module
    assert module_cfg.backbone._target_ == TDNN["_target_"]
    assert module_cfg.input_norm == "speaker" == cfg.data.audio_norm
    assert module_cfg.backbone.rows == cfg.data.preprocess.mfcc.n_mels
    assert "variant" not in module_cfg.backbone  # the VGG's keys are not merged into the TDNN's
    cross = compose_train([*ravdess_overrides, "cv=cross_corpus", "+test_data=emodb", "test_data.root=/emodb"])
    assert cross.test_data.audio_norm == "speaker"  # the test speakers standardised by their own statistics
    paper = compose_train(["experiment=paper_rml_loso"]).model.audio.module
    assert paper.backbone._target_.endswith("VGGFeatureExtractor")
    assert paper.backbone.variant == "vgg19" and paper.input_norm == "none"
    paper_ravdess = compose_train(["experiment=paper_ravdess_kfold"])
    assert paper_ravdess.data.name == "ravdess" and paper_ravdess.cv.folds.group_by == "subject"
    backbone = paper_ravdess.model.audio.module.backbone
    assert (backbone.variant, backbone.weights, backbone.width) == ("vgg19", "imagenet", 1.0)
    assert paper_ravdess.data.preprocess.mfcc.window == 64 and paper_ravdess.data.audio_norm == "none"


@pytest.mark.slow
def test_the_recipe_trains_a_fold_and_saves_a_speaker_normalised_tdnn(ravdess_overrides):
    cfg = compose_train(
        [
            *ravdess_overrides,
            "stage=audio",
            "fold=0",
            "cv.folds.k=2",
            "model.audio.trainer.max_epochs=1",
            "model.audio.module.backbone.channels=16",
            "model.audio.module.backbone.fc_dim=16",
        ]
    )
    (fold,) = run(cfg)["audio"]["test"]["folds"]
    assert fold["n_clips"] > 0
    fold_dir = Path(cfg.paths.run_dir) / "audio" / "fold_0"
    saved = AudioModule.load_from_checkpoint(fold_dir / "checkpoints" / "best.ckpt")
    assert saved.input_norm == "speaker" and saved.hparams["backbone"]["_target_"] == TDNN["_target_"]
    assert json.loads((fold_dir / "metrics.json").read_text())["test"]["n_clips"] == fold["n_clips"]


def test_mixup_of_a_speaker_normalised_module_mixes_the_statistics_with_the_images():
    torch.manual_seed(0)
    module = AudioModule(
        backbone={**TDNN, "rows": 8, "channels": 8, "fc_dim": 8}, input_norm="speaker", mixup_alpha=0.4, num_classes=2
    )
    assert module.input_keys == ("audio", "audio_stats")
    batch = {
        "audio": torch.randint(0, 256, (4, 3, 8, 12), dtype=torch.uint8),
        "audio_stats": torch.rand(4, 2, 3, 8) + 0.1,
        "label": torch.tensor([0, 1, 0, 1]),
    }
    assert torch.isfinite(module.training_step(batch, 0))
    assert AudioModule(backbone={**TDNN, "rows": 8}).input_keys == ("audio",)
