"""The recipes' switches: SpecAugment, mixup, modality dropout, face augmentation, the globally pooled VGG head,
the one-cycle schedule, the statistics-pooling TDNN."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lightning_modules.components.augment import FaceAugment, ModalityDropout, SpecAugment, mix_tensor
from lightning_modules.components.vgg import VGGFeatureExtractor
from tests.helpers.modules import (
    make_audio_module,
    make_fusion_module,
    make_loader,
    make_segment_rows,
    make_trainer,
    make_visual_module,
)


def test_spec_augment_masks_whole_rows_and_frames_shared_by_the_channels():
    torch.manual_seed(0)
    images = torch.randn(16, 3, 64, 64) + 10.0  # no value is the fill value 0
    augment = SpecAugment(freq_masks=2, freq_width=8, time_masks=2, time_width=10)
    masked = augment.train()(images) == 0
    assert masked.any()
    assert torch.equal(masked[:, 0], masked[:, 1]) and torch.equal(masked[:, 0], masked[:, 2])
    for example in masked[:, 0]:
        rows, frames = example.all(dim=1), example.all(dim=0)
        assert torch.equal(example, rows[:, None] | frames[None, :])  # bands only, no scattered cells
        assert rows.sum() <= 16 and frames.sum() <= 20
    assert torch.equal(augment.eval()(images), images)
    assert torch.equal(SpecAugment().train()(images), images)


def test_mixup_mixes_inputs_and_labels_by_the_same_weight():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    permutation = torch.tensor([1, 0, 3, 2])
    assert torch.equal(mix_tensor(images, permutation, 1.0), images)
    mixed = mix_tensor(images, permutation, 0.25)
    assert mixed.dtype == torch.uint8
    expected = (0.25 * images.float() + 0.75 * images[permutation].float()).round()
    assert torch.equal(mixed.float(), expected)

    batch = next(iter(make_loader(make_segment_rows(), batch_size=6)))
    torch.manual_seed(3)
    module = make_audio_module(mixup_alpha=0.4).eval()  # eval: no dropout, so the loss is a pure function of the mix
    torch.manual_seed(4)
    loss = module.training_step(batch, 0)
    torch.manual_seed(4)
    weight = float(torch.distributions.Beta(0.4, 0.4).sample())
    permutation = torch.randperm(6)
    logits = module({**batch, "audio": mix_tensor(batch["audio"], permutation, weight)})
    labels = batch["label"]
    expected = weight * F.cross_entropy(logits, labels) + (1 - weight) * F.cross_entropy(logits, labels[permutation])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    module.mixup_alpha = 0.0
    assert module.training_step(batch, 0).item() == pytest.approx(F.cross_entropy(module(batch), labels).item())
    assert module.training_step(batch, 0).item() != pytest.approx(loss.item())


def test_modality_dropout_zeroes_one_modality_of_a_dropped_segment_in_training_only():
    torch.manual_seed(0)
    audio, visual = torch.rand(4000, 8) + 0.1, torch.rand(4000, 6) + 0.1
    dropout = ModalityDropout(p=0.5)
    kept_audio, kept_visual = dropout(audio, visual)
    audio_gone, visual_gone = (kept_audio == 0).all(dim=1), (kept_visual == 0).all(dim=1)
    assert not (audio_gone & visual_gone).any()  # never both
    assert ((kept_audio == audio).all(dim=1) | audio_gone).all() and (
        (kept_visual == visual).all(dim=1) | visual_gone
    ).all()
    assert abs(float((audio_gone | visual_gone).float().mean()) - 0.5) < 0.03
    assert abs(float(audio_gone.float().mean()) - float(visual_gone.float().mean())) < 0.03
    dropout.eval()
    assert all(torch.equal(a, b) for a, b in zip(dropout(audio, visual), (audio, visual)))
    assert all(torch.equal(a, b) for a, b in zip(ModalityDropout(p=0.0)(audio, visual), (audio, visual)))
    with pytest.raises(ValueError, match="must be in"):
        ModalityDropout(p=1.5)


def test_fusion_module_applies_modality_dropout_to_its_inputs():
    module = make_fusion_module(modality_dropout=1.0)
    batch = {
        "audio_feat": torch.rand(64, module.hparams.audio_dim) + 0.1,
        "visual_feat": torch.rand(64, module.hparams.visual_dim) + 0.1,
    }
    module.train()
    first, _ = module.segment_outputs(batch)
    module.eval()
    plain, _ = module.segment_outputs(batch)
    assert not torch.allclose(first, plain)
    module.modality_dropout.p = 0.0
    module.train()
    module.head.eval()  # the head's own dropout aside
    assert torch.allclose(module.segment_outputs(batch)[0], plain)


def _face_sequences(batch: int = 6, frames: int = 5) -> torch.Tensor:
    """uint8 ``[B, T, 3, 32, 32]``: a bright square left of centre on a noisy background, moving along T."""
    torch.manual_seed(0)
    faces = (torch.rand(batch, frames, 3, 32, 32) * 80).to(torch.uint8)
    for t in range(frames):
        faces[:, t, :, 8:16, 4 + t : 10 + t] = 220
    return faces


def test_face_augment_moves_and_lights_every_frame_of_a_sequence_alike():
    faces = _face_sequences()
    augment = FaceAugment(crop_scale=0.8, flip=True, rotation_deg=10, brightness=0.3, contrast=0.3, saturation=0.3)
    torch.manual_seed(1)
    out = augment(faces)
    assert out.dtype == torch.uint8 and out.shape == faces.shape
    assert not torch.equal(out, faces)
    # one draw per sequence: two frames that were equal stay equal, so the whole clip got one transform
    still = faces[:, :1].repeat(1, 3, 1, 1, 1)
    torch.manual_seed(2)
    moved = augment(still)
    assert all(torch.equal(moved[:, 0], moved[:, t]) for t in range(3))
    assert not torch.equal(moved[0, 0], moved[1, 0])  # and another draw for the next sequence
    augment.eval()
    assert torch.equal(augment(faces), faces)
    assert torch.equal(FaceAugment().train()(faces), faces)


def test_face_augment_erase_fills_one_rectangle_with_the_mean_colour_on_every_frame_alike():
    faces = torch.randint(0, 256, (64, 1, 3, 32, 32), dtype=torch.uint8).repeat(1, 3, 1, 1, 1)
    torch.manual_seed(0)
    out = FaceAugment(erase=0.5)(faces)
    changed = (out != faces).any(dim=2)  # [B, T, H, W]
    assert all(torch.equal(changed[:, 0], changed[:, t]) for t in range(3))  # one rectangle for the sequence
    erased = torch.nonzero(changed[:, 0].flatten(1).any(dim=1)).flatten()
    assert 16 < len(erased) < 48  # erase = 0.5 of the sequences
    for b in erased:
        rows, cols = torch.nonzero(changed[b, 0], as_tuple=True)
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        assert 0.02 <= (bottom - top) * (right - left) / 32**2 <= 0.34
        patch = out[b, 0, :, top:bottom, left:right].flatten(1)
        assert (patch == patch[:, :1]).all()  # one colour inside the rectangle, and outside it nothing changed
        mean = faces[b, 0].float().mean(dim=(1, 2))
        assert torch.allclose(patch[:, 0].float(), mean, atol=1.0)
    assert torch.equal(FaceAugment(erase=1.0).eval()(faces), faces)
    with pytest.raises(ValueError, match="erase"):
        FaceAugment(erase=1.5)


def test_face_augment_flip_mirrors_exactly_and_colour_jitter_keeps_the_geometry():
    faces = _face_sequences(batch=64)
    torch.manual_seed(0)
    flipped = FaceAugment(flip=True)(faces)
    mirrored = torch.tensor([torch.equal(f, x.flip(-1)) for f, x in zip(flipped, faces)])
    kept = torch.tensor([torch.equal(f, x) for f, x in zip(flipped, faces)])
    assert (mirrored | kept).all() and 16 < int(mirrored.sum()) < 48
    lit = FaceAugment(brightness=0.5)(faces.float() / 255)
    ratio = lit / (faces.float() / 255).clamp_min(1e-6)
    per_clip = ratio[faces > 0].view(-1)
    assert lit.dtype == torch.float32 and float(per_clip.std()) > 0.05  # clips get different factors
    assert torch.allclose(
        ratio[0][faces[0] > 0], ratio[0][faces[0] > 0][0].expand(int((faces[0] > 0).sum())), atol=1e-4
    )  # one factor within a clip
    with pytest.raises(ValueError, match="crop_scale"):
        FaceAugment(crop_scale=0.0)


def test_visual_module_augments_faces_in_training_only():
    module = make_visual_module(face_augment={"flip": True, "brightness": 0.4})
    assert isinstance(module.augment, FaceAugment) and module.hparams.face_augment["flip"] is True
    batch = {"faces": _face_sequences(batch=4).repeat_interleave(4, dim=1)[:, :20]}
    module.eval()
    plain = module.extract_features(batch)
    assert torch.equal(module.extract_features(batch), plain)
    module.train()
    module.encoder.eval()  # the encoder's own dropout aside: what differs is the augmented input
    torch.manual_seed(0)
    assert not torch.allclose(module.extract_features(batch), plain)
    assert make_visual_module().augment.crop_scale == 1.0  # the paper: no augmentation


def test_globally_pooled_vgg_has_a_small_fc6_and_the_same_output():
    pooled = VGGFeatureExtractor("vgg11", batch_norm=True, width=0.125, fc_dim=32, pool="global")
    full = VGGFeatureExtractor("vgg11", batch_norm=True, width=0.125, fc_dim=32)
    assert pooled.classifier[0].in_features * 49 == full.classifier[0].in_features
    assert pooled(torch.randn(2, 3, 64, 64)).shape == (2, 32)
    with pytest.raises(ValueError, match="pool"):
        VGGFeatureExtractor("vgg11", pool="none")
    with pytest.raises(ValueError, match="pool=global"):
        VGGFeatureExtractor("vgg11", weights="imagenet", pool="global")


def test_one_cycle_warms_up_then_decays_per_step(tmp_path):
    rows = make_segment_rows(with_features=True)
    one_cycle = {"_target_": "lightning_modules.schedules.one_cycle", "_partial_": True}
    module = make_fusion_module(scheduler=one_cycle, lr=1e-2)
    seen = []

    class RecordLr(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    make_trainer(tmp_path, max_epochs=4, enable_checkpointing=False, callbacks=[RecordLr()]).fit(
        module, make_loader(rows), make_loader(rows)
    )
    peak = seen.index(max(seen))
    assert len(seen) == 12 and 0 < peak < len(seen) - 1
    assert max(seen) == pytest.approx(1e-2, rel=0.05) and seen[0] < 1e-3 and seen[-1] < 1e-3


def test_stats_pool_tdnn_pools_over_frames_of_any_length_and_names_a_row_mismatch():
    from lightning_modules.components.tdnn import StatsPoolTDNN

    torch.manual_seed(0)
    tdnn = StatsPoolTDNN(rows=16, channels=8, fc_dim=12).eval()
    images = torch.randn(3, 3, 16, 40)
    assert tdnn(images).shape == (3, 12)
    assert tdnn(torch.randn(2, 3, 16, 192)).shape == (2, 12)
    # statistics pooling: with frame-wise layers only, the output cannot depend on the order of the frames
    pointwise = StatsPoolTDNN(rows=16, channels=8, context=[[1, 1]], fc_dim=12).eval()
    with torch.no_grad():
        assert torch.allclose(pointwise(images), pointwise(images[..., torch.randperm(40)]), atol=1e-5)
    with pytest.raises(ValueError, match="backbone.rows"):
        tdnn(torch.randn(2, 3, 64, 40))
    with pytest.raises(ValueError, match="no pretrained weights"):
        StatsPoolTDNN(weights="imagenet")


def test_audio_module_trains_a_tdnn_backbone_and_restores_it_from_the_checkpoint(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader

    from lightning_modules import AudioModule
    from lightning_modules.components.tdnn import StatsPoolTDNN

    torch.manual_seed(0)
    tdnn = {"_target_": "lightning_modules.components.tdnn.StatsPoolTDNN", "rows": 64, "channels": 16, "fc_dim": 8}
    module = AudioModule(backbone=tdnn, num_classes=3)
    assert isinstance(module.backbone, StatsPoolTDNN) and module.backbone.out_dim == 8
    rows = [
        {
            "audio": torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8),
            "label": torch.tensor(k // 2 % 3),
            "clip_index": torch.tensor(k // 2),
            "segment_id": torch.tensor(k),
        }
        for k in range(8)
    ]
    before = {name: p.detach().clone() for name, p in module.named_parameters()}
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val/video_uar", mode="max")
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[checkpoint],
        default_root_dir=tmp_path,
    )
    trainer.fit(module, DataLoader(rows, batch_size=4), DataLoader(rows, batch_size=8))
    assert any(not torch.equal(p, before[name]) for name, p in module.named_parameters())
    restored = AudioModule.load_from_checkpoint(checkpoint.best_model_path).eval()
    batch = {"audio": torch.stack([row["audio"] for row in rows])}
    with torch.no_grad():
        assert torch.equal(module.eval()(batch), restored(batch))
