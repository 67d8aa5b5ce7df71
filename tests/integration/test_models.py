"""Model components and the three LightningModules, on CPU with random init and small sizes."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torchvision
from hydra.errors import InstantiationException
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader

from callbacks.checkpoint import SelectionScore
from lightning_modules import AudioModule, VisualModule
from lightning_modules.base import VGG
from lightning_modules.components import (
    AttentionFusionHead,
    FaceCNN,
    FaceSequenceEncoder,
    ModalityAttention,
    VGGFeatureExtractor,
    preprocess_uint8_images,
)
from lightning_modules.components.augment import FaceAugment
from lightning_modules.components.lstm import STREAMING_MIN_HIDDEN, StreamingLSTM, _LSTMLayer
from lightning_modules.components.vgg import AdaptiveAvgPool2d, adaptive_avg_pool2d_by_matmul
from tests.helpers.modules import (
    COSINE,
    FACE_SIZE,
    NUM_CLASSES,
    TINY_VGG,
    TINY_VGG_CONFIG,
    make_audio_module,
    make_fusion_module,
    make_loader,
    make_segment_rows,
    make_trainer,
    make_visual_module,
)

# ---------------------------------------------------------------- attention (Eq. 5-7)


def test_modality_attention_matches_eq_5_to_7_by_hand():
    torch.manual_seed(0)
    attention = ModalityAttention(token_dim=8, attention_dim=5)
    tokens = torch.randn(4, 3, 8)
    attended, weights = attention(tokens)
    assert attended.shape == (4, 8) and weights.shape == (4, 3)
    assert torch.allclose(weights.sum(dim=1), torch.ones(4))
    hidden = torch.tanh(tokens @ attention.projection.weight.T + attention.projection.bias)  # Eq. 5
    expected_weights = torch.softmax(hidden @ attention.context, dim=1)  # Eq. 6
    expected_attended = (expected_weights[:, :, None] * tokens).sum(dim=1)  # Eq. 7
    assert torch.allclose(weights, expected_weights, atol=1e-6)
    assert torch.allclose(attended, expected_attended, atol=1e-6)


def test_attention_context_vector_is_trained():
    attention = ModalityAttention(token_dim=4, attention_dim=3)
    attended, _ = attention(torch.randn(2, 2, 4))
    attended.sum().backward()
    assert attention.context.grad is not None and attention.context.grad.abs().sum() > 0


def test_fusion_head_two_tokens_are_the_modalities():
    torch.manual_seed(0)
    head = AttentionFusionHead(
        audio_dim=6, visual_dim=6, num_tokens=2, attention_dim=4, hidden_dims=[5], dropout=0.0, num_classes=NUM_CLASSES
    )
    audio, visual = torch.randn(3, 6), torch.randn(3, 6)
    logits, weights = head(audio, visual)
    assert logits.shape == (3, NUM_CLASSES) and weights.shape == (3, 2)
    attended, _ = head.attend(audio, visual)
    assert attended.shape == (3, 6)  # the "reduced dimensionality": one modality's size
    assert torch.allclose(attended, weights[:, :1] * audio + weights[:, 1:] * visual, atol=1e-6)
    assert head.token_audio_fraction().tolist() == [1.0, 0.0]


def test_fusion_head_finer_tokens_and_single_token():
    head = AttentionFusionHead(
        audio_dim=6, visual_dim=2, num_tokens=4, attention_dim=4, hidden_dims=[], num_classes=NUM_CLASSES
    )
    logits, weights = head(torch.randn(2, 6), torch.randn(2, 2))
    assert logits.shape == (2, NUM_CLASSES) and weights.shape == (2, 4)
    assert head.token_audio_fraction().tolist() == [1.0, 1.0, 1.0, 0.0]
    concat = AttentionFusionHead(
        audio_dim=3, visual_dim=5, num_tokens=1, attention_dim=2, hidden_dims=[], num_classes=NUM_CLASSES
    )
    audio, visual = torch.randn(2, 3), torch.randn(2, 5)
    attended, weights = concat.attend(audio, visual)
    assert torch.equal(weights, torch.ones(2, 1)) and torch.equal(attended, torch.cat([audio, visual], 1))


@pytest.mark.parametrize(
    ("audio_dim", "visual_dim", "num_tokens", "message"),
    [(4, 4, 3, "divisor"), (4, 4, 0, "divisor"), (6, 2, 2, "audio_dim == visual_dim")],
)
def test_fusion_head_rejects_bad_token_layouts(audio_dim, visual_dim, num_tokens, message):
    with pytest.raises(ValueError, match=message):
        AttentionFusionHead(audio_dim, visual_dim, num_tokens=num_tokens, attention_dim=2, num_classes=2)


# ---------------------------------------------------------------- VGG fc7 extractor


def test_preprocess_uint8_images_normalises_per_channel():
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    images[1] = 255
    out = preprocess_uint8_images(images, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    assert out.dtype == torch.float32
    assert out[0, :, 0, 0].tolist() == [-1.0, -1.0, 0.0]
    assert out[1, :, 0, 0].tolist() == [1.0, 3.0, 1.0]
    with pytest.raises(ValueError, match="uint8"):
        preprocess_uint8_images(images.float())
    with pytest.raises(ValueError, match="channels"):
        preprocess_uint8_images(torch.zeros(2, 1, 4, 4, dtype=torch.uint8))


def test_vgg_outputs_fc7_of_the_configured_size():
    vgg = VGGFeatureExtractor(**TINY_VGG).eval()
    assert vgg.out_dim == 64
    features = vgg(torch.randn(2, 3, 64, 64))
    assert features.shape == (2, 64)
    assert (features >= 0).all()  # fc7 is taken after its ReLU
    assert [type(layer) for layer in vgg.classifier] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU]


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (3, 5), (7, 7), (9, 13)])
def test_pooling_by_matmul_equals_adaptive_average_pooling(size):
    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    reference = torch.nn.functional.adaptive_avg_pool2d(x, (7, 7))
    by_matmul = adaptive_avg_pool2d_by_matmul(x, (7, 7))
    torch.testing.assert_close(by_matmul, reference)
    torch.testing.assert_close(AdaptiveAvgPool2d((7, 7))(x), reference, rtol=0, atol=0)  # at 7x7 in: x itself
    weights = torch.randn_like(reference)
    (grad,) = torch.autograd.grad((by_matmul * weights).sum(), x)
    (expected,) = torch.autograd.grad((reference * weights).sum(), x)
    torch.testing.assert_close(grad, expected)


def test_vgg_channels_last_gives_the_same_features():
    vgg = VGGFeatureExtractor(**TINY_VGG).eval()
    images = torch.randn(2, 3, 48, 48)
    expected = vgg(images)
    vgg.to(memory_format=torch.channels_last)
    assert torch.allclose(vgg(images.contiguous(memory_format=torch.channels_last)), expected, atol=1e-5)


@pytest.fixture(scope="module")
def vgg19_state_dict_file(tmp_path_factory):
    """A torchvision VGG19 state dict on disk: how ImageNet weights reach an offline cluster."""
    path = tmp_path_factory.mktemp("weights") / "vgg19.pth"
    torch.save(torchvision.models.vgg19(weights=None).state_dict(), path)
    return path


@pytest.mark.slow
def test_vgg19_loads_a_torchvision_state_dict_file(vgg19_state_dict_file):
    reference = torch.load(vgg19_state_dict_file, weights_only=True)
    vgg = VGGFeatureExtractor("vgg19", weights=str(vgg19_state_dict_file))
    assert vgg.out_dim == 4096
    assert torch.equal(vgg.features[0].weight, reference["features.0.weight"])
    assert torch.equal(vgg.features[34].weight, reference["features.34.weight"])
    assert torch.equal(vgg.classifier[3].weight, reference["classifier.3.weight"])
    assert not any(key.startswith("classifier.6") for key in vgg.state_dict())
    with pytest.raises(ValueError, match="vgg19.pth: not a torchvision vgg16 state dict"):
        VGGFeatureExtractor("vgg16", weights=str(vgg19_state_dict_file))


def test_vgg_weights_file_errors_name_the_file(tmp_path):
    not_a_state_dict = tmp_path / "garbage.pth"
    not_a_state_dict.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="garbage.pth"):
        VGGFeatureExtractor("vgg11", weights=str(not_a_state_dict))
    wrong_keys = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(1)}, wrong_keys)
    with pytest.raises(ValueError, match="wrong.pth.*not a torchvision vgg11"):
        VGGFeatureExtractor("vgg11", weights=str(wrong_keys))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        VGGFeatureExtractor("vgg11", weights=str(tmp_path / "missing.pth"))


@pytest.mark.parametrize("kwargs", [{"width": 0.5}, {"fc_dim": 1024}])
def test_vgg_scaled_sizes_need_random_weights(kwargs):
    with pytest.raises(ValueError, match="weights='none'"):
        VGGFeatureExtractor("vgg19", weights="imagenet", **kwargs)


def test_vgg_rejects_unknown_variant_and_freeze_mode():
    with pytest.raises(ValueError, match="unknown VGG variant"):
        VGGFeatureExtractor("vgg12")
    with pytest.raises(ValueError, match="freeze"):
        VGGFeatureExtractor(**TINY_VGG, freeze="classifier")


def test_vgg_freeze_features_keeps_batchnorm_in_eval_and_without_grad():
    vgg = VGGFeatureExtractor(**{**TINY_VGG, "dropout": 0.5}, batch_norm=True, freeze="features").train()
    batch_norms = [m for m in vgg.features if isinstance(m, nn.BatchNorm2d)]
    assert batch_norms and not any(bn.training for bn in batch_norms)
    assert vgg.classifier.training
    assert not any(p.requires_grad for p in vgg.features.parameters())
    assert all(p.requires_grad for p in vgg.classifier.parameters())
    running_mean = batch_norms[0].running_mean.clone()
    vgg(torch.randn(2, 3, 32, 32)).sum().backward()
    assert torch.equal(batch_norms[0].running_mean, running_mean)
    assert all(p.grad is None for p in vgg.features.parameters())
    assert vgg.classifier[0].weight.grad is not None


def test_vgg_freeze_all_is_deterministic_in_train_mode():
    vgg = VGGFeatureExtractor(**{**TINY_VGG, "dropout": 0.5}, batch_norm=True, freeze="all").train()
    assert not any(p.requires_grad for p in vgg.parameters())
    assert not any(m.training for m in vgg.modules())
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(vgg(images), vgg(images))  # dropout inactive, BN statistics fixed


# ---------------------------------------------------------------- face sequence encoder


def test_face_sequence_encoder_shapes_and_chunking():
    torch.manual_seed(0)
    encoder = FaceSequenceEncoder(VGGFeatureExtractor(**TINY_VGG), lstm_hidden=16, frames_per_chunk=7).eval()
    faces = torch.randn(2, 20, 3, FACE_SIZE, FACE_SIZE)
    features = encoder(faces)
    assert features.shape == (2, 16) and encoder.out_dim == 16
    unchunked = FaceSequenceEncoder(encoder.cnn, lstm_hidden=16, frames_per_chunk=40).eval()
    unchunked.lstm.load_state_dict(encoder.lstm.state_dict())
    assert torch.allclose(unchunked(faces), features, atol=1e-6)
    # the segment feature is the LSTM's last hidden state over the 20 frame features
    frame_features = encoder.cnn(faces.flatten(0, 1)).view(2, 20, -1)
    outputs, _ = encoder.lstm(frame_features)
    assert torch.allclose(outputs[:, -1], features, atol=1e-6)
    with pytest.raises(ValueError, match="B, T, 3, S, S"):
        encoder(faces[0])


def test_face_sequence_encoder_runs_the_vgg_once_per_run_of_repeated_frames():
    torch.manual_seed(0)
    encoder = FaceSequenceEncoder(VGGFeatureExtractor(**TINY_VGG), lstm_hidden=16).eval()
    distinct = torch.randn(2, 3, 3, FACE_SIZE, FACE_SIZE)
    faces = distinct[:, [0] * 10 + [1] + [2] * 9]  # rule 3 on a 3-frame clip
    calls = []
    handle = encoder.cnn.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    features = encoder(faces)
    handle.remove()
    assert calls == [6]
    outputs, _ = encoder.lstm(encoder.cnn(faces.flatten(0, 1)).view(2, 20, -1))
    assert torch.allclose(outputs[:, -1], features, atol=1e-6)


# ---------------------------------------------------------------- LightningModules


VAL_METRICS = {"val/loss", "val/seg_acc", "val/video_acc", "val/video_uar", "val/video_f1"}


@pytest.mark.parametrize(
    ("make_module", "with_features"),
    [(make_audio_module, False), (make_visual_module, False), (make_fusion_module, True)],
)
def test_module_trains_and_validates_with_a_real_trainer(tmp_path, make_module, with_features):
    torch.manual_seed(0)
    module = make_module()
    before = {name: p.detach().clone() for name, p in module.named_parameters()}
    rows = make_segment_rows(with_features=with_features)
    selection = SelectionScore("val/video_uar", "max", "val/loss", "min")
    trainer = make_trainer(tmp_path, fast_dev_run=True, callbacks=[selection])
    trainer.fit(module, make_loader(rows), DataLoader(rows, batch_size=len(rows)))
    assert any(not torch.equal(p, before[name]) for name, p in module.named_parameters())
    assert VAL_METRICS | {"train/loss", "train/acc"} <= set(trainer.callback_metrics)
    result = module.last_eval["val"]
    assert result["n_segments"] == 12 and result["n_clips"] == 4
    assert trainer.callback_metrics["val/video_acc"].item() == pytest.approx(result["video"]["accuracy"])
    # the checkpoint's monitor, scored from the unrounded metrics and logged at full precision
    score = trainer.callback_metrics["val/selection"]
    assert score.dtype == torch.float64
    unrounded = {"val/video_uar": result["video"]["uar"], "val/loss": result["segment"]["loss"]}
    assert score.item() == selection.score(unrounded)


def test_fusion_test_logs_attention_per_modality(tmp_path):
    torch.manual_seed(0)
    module = make_fusion_module()
    trainer = make_trainer(tmp_path)
    trainer.test(module, make_loader(make_segment_rows(with_features=True)))
    attn_audio = trainer.callback_metrics["test/attn_audio"].item()
    attn_visual = trainer.callback_metrics["test/attn_visual"].item()
    assert 0 < attn_audio < 1 and attn_audio + attn_visual == pytest.approx(1.0)
    assert module.last_eval["test"]["extra"]["attn_audio"] == pytest.approx(attn_audio)
    assert module.last_eval["test"]["n_segments"] == 12


def test_visual_module_bf16_mixed_channels_last(tmp_path):
    torch.manual_seed(0)
    module = make_visual_module(channels_last=True)
    assert module.encoder.cnn.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    rows = make_segment_rows(n_clips=2, segments_per_clip=2)
    trainer = make_trainer(tmp_path, fast_dev_run=True, precision="bf16-mixed")
    trainer.fit(module, make_loader(rows), make_loader(rows))
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    predictions = make_trainer(tmp_path, precision="bf16-mixed").predict(module, make_loader(rows))
    assert predictions[0]["features"].dtype == torch.float32


def test_predict_step_returns_features_with_segment_ids(tmp_path):
    module = make_audio_module()
    rows = make_segment_rows(n_clips=2, segments_per_clip=3)
    predictions = make_trainer(tmp_path).predict(module, make_loader(rows, batch_size=4))
    features = torch.cat([p["features"] for p in predictions])
    segment_ids = torch.cat([p["segment_id"] for p in predictions])
    assert features.shape == (6, 64)
    assert segment_ids.tolist() == [row["segment_id"].item() for row in rows]
    module.eval()
    with torch.no_grad():
        direct = module.extract_features({"audio": torch.stack([row["audio"] for row in rows])})
    assert torch.allclose(features, direct, atol=1e-5)


def test_audio_module_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    module = make_audio_module()
    rows = make_segment_rows()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/video_acc", mode="max")
    trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=1, callbacks=[checkpoint])
    trainer.fit(module, make_loader(rows), DataLoader(rows, batch_size=len(rows)))
    assert checkpoint.best_model_path
    restored = AudioModule.load_from_checkpoint(checkpoint.best_model_path)
    assert restored.class_names == ["a", "b", "c"]
    module.eval()
    restored.eval()
    batch = {"audio": torch.stack([row["audio"] for row in rows])}
    with torch.no_grad():
        assert torch.equal(module(batch), restored(batch))


@pytest.mark.parametrize(
    ("experiment", "stage", "optimizer", "schedule"),
    [
        ("ravdess_audio", "audio", "torch.optim.AdamW", "one_cycle"),  # a TDNN
        ("ck_visual", "visual", "torch.optim.AdamW", "one_cycle"),  # a face CNN
        ("demo", "fusion", "torch.optim.Adam", "cosine"),
    ],
)
def test_a_module_built_from_its_experiment_config_loads_from_its_checkpoint(
    tmp_path, experiment, stage, optimizer, schedule
):
    # the backbone, optimiser and schedule configs are the module's hparams: plain containers, loadable with
    # weights_only, from which the restored module builds the same network, optimiser and schedule
    from hydra.utils import instantiate

    from tests.helpers.configs import compose_train

    cfg = compose_train([f"experiment={experiment}"])
    torch.manual_seed(0)
    module = instantiate(cfg.model[stage].module, _convert_="all", num_classes=3, class_names=["a", "b", "c"])
    trainer = make_trainer(tmp_path)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "module.ckpt", weights_only=True)
    restored = type(module).load_from_checkpoint(tmp_path / "module.ckpt", weights_only=True)
    assert restored.hparams == module.hparams and restored.hparams["optimizer"]["_target_"] == optimizer
    assert restored.hparams["scheduler"]["_target_"] == f"lightning_modules.schedules.{schedule}"
    for built in ("optimizer_factory", "scheduler_factory"):
        original, rebuilt = getattr(module, built), getattr(restored, built)
        assert (rebuilt.func, rebuilt.keywords) == (original.func, original.keywords)
    assert restored.state_dict().keys() == module.state_dict().keys()
    assert all(torch.equal(value, module.state_dict()[key]) for key, value in restored.state_dict().items())


@pytest.mark.slow
def test_backbone_weights_are_not_reloaded_from_their_source(vgg19_state_dict_file):
    module = AudioModule(backbone={**VGG, "variant": "vgg19", "weights": str(vgg19_state_dict_file)}, num_classes=2)
    assert module.hparams["backbone"]["weights"] == "none"
    rebuilt = AudioModule(**module.hparams)  # what load_from_checkpoint does before loading the state dict
    assert rebuilt.backbone.out_dim == 4096


@pytest.mark.parametrize("name", ["torch.optim.Adam", "torch.optim.AdamW", "torch.optim.SGD"])
def test_optimizers_only_see_trainable_parameters(name):
    module = AudioModule(
        backbone={**TINY_VGG_CONFIG, "freeze": "features"},
        num_classes=NUM_CLASSES,
        optimizer={"_target_": name, "_partial_": True},
    )
    optimizer = module.configure_optimizers()
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in module.parameters() if p.requires_grad}
    assert not optimised & {id(p) for p in module.backbone.features.parameters()}


def test_cosine_and_plateau_schedulers_step(tmp_path):
    rows = make_segment_rows(with_features=True)
    cosine = make_fusion_module(scheduler=COSINE, lr=1e-2)
    make_trainer(tmp_path, max_epochs=2, enable_checkpointing=False).fit(cosine, make_loader(rows), make_loader(rows))
    assert cosine.optimizers().param_groups[0]["lr"] < 1e-2
    plateau = make_fusion_module(
        scheduler={"_target_": "lightning_modules.schedules.plateau", "_partial_": True, "patience": 0}, lr=1e-2
    )
    make_trainer(tmp_path, max_epochs=3, enable_checkpointing=False).fit(plateau, make_loader(rows), make_loader(rows))
    assert plateau.lr_schedulers().best < float("inf")


def test_module_argument_validation():
    # a misnamed optimiser, schedule or backbone fails when the module is built, not when training starts
    with pytest.raises(InstantiationException, match="torch.optim.RMSProp"):
        make_fusion_module(optimizer={"_target_": "torch.optim.RMSProp", "_partial_": True})
    with pytest.raises(InstantiationException, match="lightning_modules.schedules.step"):
        make_fusion_module(scheduler={"_target_": "lightning_modules.schedules.step", "_partial_": True})
    with pytest.raises(InstantiationException, match="ResNet"):
        AudioModule(backbone={"_target_": "lightning_modules.components.vgg.ResNet"})
    with pytest.raises(ValueError, match="_target_"):
        AudioModule(backbone=TINY_VGG)
    with pytest.raises(ValueError, match="class_names"):
        make_fusion_module(class_names=["a", "b"])


class _SaveLastEvalPerRank(L.Callback):
    """Writes pl_module.last_eval of every rank to <dirpath>/rank<N>.pt after validation."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {name: value.item() for name, value in trainer.callback_metrics.items()}
        torch.save(
            {"last_eval": pl_module.last_eval["val"], "metrics": metrics},
            f"{self.dirpath}/rank{trainer.global_rank}.pt",
        )


@pytest.mark.slow
def test_two_process_validation_logs_the_single_process_metrics_on_every_rank(tmp_path):
    torch.manual_seed(0)
    module = make_fusion_module()
    rows = make_segment_rows(with_features=True)[:11]  # odd: DistributedSampler pads one rank with a repeat
    selection = SelectionScore("val/video_uar", "max", "val/loss", "min")
    single = make_trainer(tmp_path, callbacks=[selection])
    single.validate(module, make_loader(rows, batch_size=3))
    expected = module.last_eval["val"]
    expected_score = single.callback_metrics["val/selection"].item()
    ddp = make_trainer(
        tmp_path, devices=2, strategy="ddp_spawn", callbacks=[selection, _SaveLastEvalPerRank(str(tmp_path))]
    )
    ddp.validate(module, make_loader(rows, batch_size=3))
    scores = []
    for rank in range(2):
        saved = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert saved["last_eval"]["n_segments"] == 11
        assert saved["last_eval"]["clips"] == expected["clips"]
        assert saved["last_eval"]["video"] == expected["video"]
        assert saved["metrics"]["val/loss"] == pytest.approx(expected["segment"]["loss"], rel=1e-5)
        assert saved["metrics"]["val/video_acc"] == pytest.approx(expected["video"]["accuracy"])
        scores.append(saved["metrics"]["val/selection"])
    assert scores[0] == scores[1] == pytest.approx(expected_score)  # the checkpoint decides alike on every rank


def test_modules_instantiate_from_hydra_configs_with_plain_hparams():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    config = OmegaConf.create(
        {
            "_target_": "lightning_modules.audio_module.AudioModule",
            "_recursive_": False,  # as configs/model/paper.yaml: the module builds its parts from their configs
            "backbone": {**TINY_VGG_CONFIG, "freeze": "features"},
            "num_classes": NUM_CLASSES,
            "class_names": ["a", "b", "c"],
            "input_mean": [0.5, 0.5, 0.5],
            "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True, "betas": [0.8, 0.9]},
            "scheduler": COSINE,
        }
    )
    module = instantiate(config)
    assert isinstance(module, AudioModule) and module.backbone.freeze == "features"
    assert type(module.hparams["backbone"]) is dict and type(module.hparams["input_mean"]) is list
    assert type(module.hparams["class_names"]) is list
    assert type(module.hparams["optimizer"]) is dict and type(module.hparams["optimizer"]["betas"]) is list
    assert type(module.hparams["scheduler"]) is dict
    assert module.optimizer_factory.keywords["betas"] == [0.8, 0.9]
    fusion = instantiate(
        {
            "_target_": "lightning_modules.fusion_module.FusionModule",
            "audio_dim": 8,
            "visual_dim": 8,
            "hidden_dims": OmegaConf.create([4, 4]),
            "num_classes": 2,
        }
    )
    assert type(fusion.hparams["hidden_dims"]) is list


# ---------------------------------------------------------------- face CNN, mean over frames, per-frame views


def test_face_cnn_ignores_the_brightness_and_contrast_of_each_crop():
    torch.manual_seed(0)
    cnn = FaceCNN(channels=[4, 8, 16]).eval()
    crops = torch.rand(5, 3, 48, 48)
    relit = crops * torch.linspace(0.5, 2.0, 5).view(5, 1, 1, 1) + torch.linspace(-0.3, 0.3, 5).view(5, 1, 1, 1)
    assert cnn(crops).shape == (5, 16) and cnn.out_dim == 16 and cnn.frozen_layer is None
    # equal up to the eps in each crop's std (2 % of a feature here); a mirrored crop moves them 10x as much
    assert (cnn(relit) - cnn(crops)).abs().max() < 0.02
    assert (cnn(crops.flip(3)) - cnn(crops)).abs().max() > 0.05
    with pytest.raises(ValueError, match="from scratch"):
        FaceCNN(weights="imagenet")


def test_face_cnn_pool_grid_keeps_each_region_of_the_global_average():
    torch.manual_seed(0)
    grid = FaceCNN(channels=[4, 8], pool_grid=3).eval()
    whole = FaceCNN(channels=[4, 8]).eval()
    whole.load_state_dict(grid.state_dict())
    crops = torch.rand(2, 3, 12, 12)  # a 6 x 6 last map: 3 x 3 regions of 2 x 2
    regions = grid(crops).view(2, 8, 9)
    assert grid.out_dim == 8 * 9 and whole.out_dim == 8
    # the regions partition the map: their mean is the global average, and they differ from each other
    torch.testing.assert_close(regions.mean(dim=2), whole(crops))
    assert (regions[..., 0] - regions[..., 8]).abs().max() > 0.05
    with pytest.raises(ValueError, match="pool_grid"):
        FaceCNN(pool_grid=0)


def test_mean_over_frames_has_no_lstm_and_averages_the_frame_features():
    torch.manual_seed(0)
    encoder = FaceSequenceEncoder(FaceCNN(channels=[4, 8]), temporal="mean").eval()
    assert encoder.lstm is None and encoder.out_dim == 8
    faces = torch.rand(2, 3, 3, FACE_SIZE, FACE_SIZE)[:, [0] * 10 + [1] + [2] * 9]
    expected = encoder.cnn(faces.flatten(0, 1)).view(2, 20, 8).mean(dim=1)
    assert torch.allclose(encoder(faces), expected, atol=1e-6)
    with pytest.raises(ValueError, match="temporal must be one of"):
        FaceSequenceEncoder(FaceCNN(), temporal="max")


def test_per_frame_face_augment_draws_each_distinct_frame_and_keeps_runs():
    torch.manual_seed(0)
    augment = FaceAugment(crop_scale=0.8, rotation_deg=15, per_frame=True).train()
    still = torch.randint(0, 256, (4, 1, 3, 32, 32), dtype=torch.uint8)
    faces = still[:, [0] * 10 + [0] * 10]  # one still frame: 20 copies, one run
    two = torch.cat([still[:, [0] * 10], torch.randint(0, 256, (4, 10, 3, 32, 32), dtype=torch.uint8)], dim=1)
    one_run = augment(faces)
    assert (one_run == one_run[:, :1]).all()  # a run of copies stays a run (the encoder runs the CNN once)
    out = augment(two)
    assert (out[:, :10] == out[:, :1]).all()
    same_frames = torch.cat([still[:, [0] * 10], still[:, [0] * 10] + 0], dim=1)
    same_frames[:, 10:, 0, 0, 0] ^= 1  # a second, nearly equal frame: a run of its own, drawn apart
    drawn = augment(same_frames)
    assert not torch.equal(drawn[:, 0], drawn[:, 10])
    sequence_wise = FaceAugment(crop_scale=0.8, rotation_deg=15).train()(same_frames)
    assert (sequence_wise[:, 0].int() - sequence_wise[:, 10].int()).abs().max() <= 1  # one draw per sequence


def test_checkpoints_that_name_the_frame_cnn_vgg_still_load():
    torch.manual_seed(0)
    encoder = FaceSequenceEncoder(VGGFeatureExtractor(**TINY_VGG), lstm_hidden=16)
    old = {
        key.replace("cnn.", "vgg.", 1) if key.startswith("cnn.") else key: value
        for key, value in encoder.state_dict().items()
    }
    assert any(key.startswith("vgg.") for key in old)
    fresh = FaceSequenceEncoder(VGGFeatureExtractor(**TINY_VGG), lstm_hidden=16)
    fresh.load_state_dict(old)
    for key, value in encoder.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)


# ---------------------------------------------------------------- LSTM with a streamed recurrent weight


@pytest.mark.parametrize("batch_first, layers, given_state", [(True, 1, True), (False, 2, True), (True, 2, False)])
def test_streaming_lstm_equals_torch_lstm_with_gradients(batch_first, layers, given_state):
    torch.manual_seed(0)
    reference = nn.LSTM(12, STREAMING_MIN_HIDDEN, num_layers=layers, batch_first=batch_first)
    streaming = StreamingLSTM(12, STREAMING_MIN_HIDDEN, num_layers=layers, batch_first=batch_first)
    streaming.load_state_dict(reference.state_dict())  # same parameter names: checkpoints load either way
    sequence = torch.randn(3, 5, 12) if batch_first else torch.randn(5, 3, 12)
    state = (torch.randn(layers, 3, STREAMING_MIN_HIDDEN), torch.randn(layers, 3, STREAMING_MIN_HIDDEN))
    assert streaming.streams(sequence)
    results, gradients = [], []
    for lstm in (reference, streaming):
        inputs = [sequence.clone().requires_grad_(), *(part.clone().requires_grad_() for part in state)]
        if not given_state:  # the zero state (no pass over W_hh at the first step) and no gradient for it
            inputs = inputs[:1]
        output, (h_n, c_n) = lstm(inputs[0], tuple(inputs[1:]) or None)
        (output.sin().sum() + h_n.cos().sum() + (c_n * c_n).sum()).backward()
        results.append((output, h_n, c_n))
        gradients.append([part.grad for part in inputs] + [parameter.grad for parameter in lstm.parameters()])
    for expected, actual in zip(results[0], results[1]):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    for expected, actual in zip(gradients[0], gradients[1]):
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_streaming_lstm_layer_gradients_by_finite_differences():
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 3).double()
    inputs = (
        torch.randn(2, 5, 4, dtype=torch.double),
        *lstm.parameters(),
        torch.randn(2, 3, dtype=torch.double),
        torch.randn(2, 3, dtype=torch.double),
    )
    inputs = tuple(part.detach().requires_grad_() for part in inputs)
    assert torch.autograd.gradcheck(_LSTMLayer.apply, inputs)


def test_streaming_lstm_keeps_torch_kernels_where_they_are_faster():
    small = StreamingLSTM(8, STREAMING_MIN_HIDDEN // 2, batch_first=True)
    assert not small.streams(torch.randn(2, 3, 8))  # the demo's LSTM of 128 keeps oneDNN's kernel
    bidirectional = StreamingLSTM(8, STREAMING_MIN_HIDDEN, batch_first=True, bidirectional=True)
    assert not bidirectional.streams(torch.randn(2, 3, 8))


def test_the_streaming_lstm_is_an_opt_in_and_checkpoints_load_in_either():
    torch.manual_seed(0)
    plain = VisualModule(backbone=TINY_VGG_CONFIG, lstm_hidden=STREAMING_MIN_HIDDEN, num_classes=NUM_CLASSES)
    assert type(plain.encoder.lstm) is nn.LSTM  # lstm_impl="torch", the default
    streaming = VisualModule(
        backbone=TINY_VGG_CONFIG, lstm_hidden=STREAMING_MIN_HIDDEN, num_classes=NUM_CLASSES, lstm_impl="streaming"
    )
    assert isinstance(streaming.encoder.lstm, StreamingLSTM)
    assert streaming.encoder.lstm.streams(torch.randn(2, 3, streaming.encoder.cnn.out_dim))
    streaming.load_state_dict(plain.state_dict())  # the same parameters under the same names, both ways
    plain.load_state_dict(streaming.state_dict())
    frames = torch.randn(2, 4, streaming.encoder.cnn.out_dim)
    with torch.no_grad():
        torch.testing.assert_close(
            streaming.encoder.sequence_feature(frames), plain.encoder.sequence_feature(frames), rtol=1e-5, atol=1e-5
        )
    with pytest.raises(ValueError, match="lstm_impl"):
        FaceSequenceEncoder(VGGFeatureExtractor(**TINY_VGG), lstm_hidden=16, lstm_impl="cudnn")
