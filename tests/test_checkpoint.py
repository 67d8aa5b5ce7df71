"""The best checkpoint: ties on a saturated validation objective go to the lower validation loss."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from callbacks.checkpoint import BestCheckpoint
from callbacks.confusion_matrix import becomes_best_checkpoint

# (val/video_uar, val/loss) per epoch: the objective saturates at epoch 1; epoch 3 has the lowest loss among the tied
SCRIPTED = [(0.5, 1.0), (1.0, 0.6), (1.0, 0.7), (1.0, 0.2), (1.0, 0.4), (0.9, 0.1)]


class ScriptedValidation(L.LightningModule):
    """A real (tiny) training loop whose validation logs the scripted metrics of its epoch, and records what
    the checkpoint callback's rule says before the checkpoint is written."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.predicted_best: list[bool] = []

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        pass

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking:
            return
        uar, loss = SCRIPTED[self.current_epoch]
        self.log_dict({"val/video_uar": uar, "val/loss": loss})

    def on_validation_end(self):
        if not self.trainer.sanity_checking:
            self.predicted_best.append(becomes_best_checkpoint(self.trainer))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def fit(tmp_path, tie_break: str | None, epochs: int = len(SCRIPTED), ckpt_path=None):
    data = DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)
    best = BestCheckpoint(
        dirpath=tmp_path,
        filename="best",
        monitor="val/video_uar",
        mode="max",
        save_top_k=1,
        enable_version_counter=False,
        tie_break=tie_break,
    )
    last = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="last", enable_version_counter=False)
    module = ScriptedValidation()
    trainer = L.Trainer(
        max_epochs=epochs,
        callbacks=[best, last],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train_dataloaders=data, val_dataloaders=data, ckpt_path=ckpt_path)
    return best, module


def saved_epoch(path) -> int:
    return torch.load(path, weights_only=False)["epoch"]


def test_ties_on_the_objective_go_to_the_lowest_validation_loss(tmp_path):
    best, module = fit(tmp_path / "tie", tie_break="val/loss")
    assert saved_epoch(best.best_model_path) == 3
    assert best.best_model_score == 1.0 and best.best_tie_break_score == pytest.approx(0.2)
    # the confusion-matrix callback's "this epoch becomes the best" agrees with the checkpoint, epoch by epoch
    assert module.predicted_best == [True, True, False, True, False, False]

    first, module = fit(tmp_path / "first", tie_break=None)
    assert saved_epoch(first.best_model_path) == 1  # ModelCheckpoint's own rule: the first of the tied epochs
    assert module.predicted_best == [True, True, False, False, False, False]


def test_the_tie_break_survives_a_resume_from_last_ckpt(tmp_path):
    stopped, _ = fit(tmp_path, tie_break="val/loss", epochs=3)  # killed after epoch 2: best = epoch 1, loss 0.6
    assert saved_epoch(stopped.best_model_path) == 1
    best, _ = fit(tmp_path, tie_break="val/loss", ckpt_path=tmp_path / "last.ckpt")
    # the resumed callback knows the best's loss, so the tied epoch 3 (loss 0.2) replaces it and epoch 4 does not
    assert saved_epoch(best.best_model_path) == 3 and best.best_tie_break_score == pytest.approx(0.2)


def test_ties_are_never_broken_on_a_test_metric():
    with pytest.raises(ValueError, match="validation metric"):
        BestCheckpoint(monitor="val/video_uar", mode="max", tie_break="test/loss")
    with pytest.raises(ValueError, match="save_top_k=1"):
        BestCheckpoint(monitor="val/video_uar", mode="max", save_top_k=3, tie_break="val/loss")


class RecordsTestedWeights(ScriptedValidation):
    def test_step(self, batch, batch_idx):
        pass

    def on_test_start(self):
        self.tested = {name: value.clone() for name, value in self.state_dict().items()}


def test_with_ema_the_test_after_fit_sees_the_average_that_was_validated_and_checkpointed(tmp_path):
    from callbacks.ema import EMAWeights

    data = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=2)
    best = BestCheckpoint(
        dirpath=tmp_path,
        filename="best",
        monitor="val/video_uar",
        mode="max",
        save_top_k=1,
        enable_version_counter=False,
        tie_break="val/loss",
    )
    module = RecordsTestedWeights()
    trainer = L.Trainer(
        max_epochs=4,
        callbacks=[best, EMAWeights(decay=0.9)],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train_dataloaders=data, val_dataloaders=data)
    trainer.test(module, dataloaders=data, ckpt_path=best.best_model_path)
    saved = torch.load(best.best_model_path, weights_only=False)
    assert saved["epoch"] == 3
    average, raw = saved["state_dict"], saved["current_model_state"]
    assert not torch.allclose(average["layer.weight"], raw["layer.weight"])
    for name, value in module.tested.items():
        assert torch.equal(value, average[name]), name
    with pytest.raises(ValueError, match="decay"):
        EMAWeights(decay=1.0)
