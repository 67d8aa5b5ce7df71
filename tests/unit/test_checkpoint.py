"""The best checkpoint: ties on a saturated validation objective go to the lower validation loss."""

from __future__ import annotations

import math
import operator

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from callbacks.checkpoint import SelectionScore
from callbacks.confusion_matrix import becomes_best_checkpoint

# (val/video_uar, val/loss) per epoch: the objective saturates at epoch 1; epoch 3 has the lowest loss among the
# tied; epoch 5 has a lower loss than all but a lower objective
SCRIPTED = [(0.5, 1.0), (1.0, 0.6), (1.0, 0.7), (1.0, 0.2), (1.0, 0.4), (0.9, 0.1)]


class ScriptedValidation(L.LightningModule):
    """A real (tiny) training loop whose validation logs the scripted metrics of its epoch and, as
    EmotionModule does, their ``selection_score``; it records what the confusion-matrix callback's rule says
    before the checkpoint is written."""

    selection_score = None

    def __init__(self, scripted: list[tuple[float, float]] = SCRIPTED) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.scripted = scripted
        self.predicted_best: list[bool] = []

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        pass

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking:
            return
        uar, loss = self.scripted[self.current_epoch]
        logged = {"val/video_uar": uar, "val/loss": loss}
        self.log_dict(logged)
        self.log("val/selection", torch.tensor(self.selection_score(logged), dtype=torch.float64))

    def on_validation_end(self):
        if not self.trainer.sanity_checking:
            self.predicted_best.append(becomes_best_checkpoint(self.trainer))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def selection_callbacks(tmp_path, tie_break: str | None) -> list[L.Callback]:
    """configs/callbacks/default.yaml's selection and best checkpoint, and last.ckpt."""
    return [
        SelectionScore("val/video_uar", "max", tie_break, "min"),
        ModelCheckpoint(
            dirpath=tmp_path,
            filename="best",
            monitor="val/selection",
            mode="max",
            save_top_k=1,
            enable_version_counter=False,
        ),
        ModelCheckpoint(dirpath=tmp_path, filename="last", enable_version_counter=False),
    ]


def fit(
    tmp_path,
    tie_break: str | None,
    epochs: int | None = None,
    ckpt_path=None,
    scripted: list[tuple[float, float]] = SCRIPTED,
) -> tuple[ModelCheckpoint, ScriptedValidation]:
    """Trains ``epochs`` (default: all scripted) with the selection callbacks; (best checkpoint, module)."""
    data = DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)
    callbacks = selection_callbacks(tmp_path, tie_break)
    module = ScriptedValidation(scripted)
    trainer = L.Trainer(
        max_epochs=epochs or len(scripted),
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train_dataloaders=data, val_dataloaders=data, ckpt_path=ckpt_path)
    assert trainer.callback_metrics["val/selection"].dtype == torch.float64
    return callbacks[1], module


def saved_epoch(path) -> int:
    return torch.load(path, weights_only=False)["epoch"]


def test_ties_on_the_objective_go_to_the_lowest_validation_loss(tmp_path):
    best, module = fit(tmp_path / "tie", tie_break="val/loss")
    # epoch 1 replaces epoch 0 (better UAR, better loss), 3 replaces 1 (tied, lower loss); 5 has the lowest loss
    # but a lower UAR
    assert saved_epoch(best.best_model_path) == 3
    assert 1.0 - 1e-7 < best.best_model_score.item() < 1.0
    # the confusion-matrix callback's "this epoch becomes the best" agrees with the checkpoint, epoch by epoch
    assert module.predicted_best == [True, True, False, True, False, False]

    first, module = fit(tmp_path / "first", tie_break=None)
    assert saved_epoch(first.best_model_path) == 1  # ModelCheckpoint's own rule: the first of the tied epochs
    assert first.best_model_score.item() == 1.0
    assert module.predicted_best == [True, True, False, False, False, False]


def test_a_better_objective_wins_over_a_better_loss(tmp_path):
    # (UAR, loss): each later epoch is better on the UAR by the smallest step of a small validation set and
    # worse on the loss, the last by far
    scripted = [(5 / 7, 0.01), (5 / 7 + 1 / 42, 0.5), (6 / 7, 2.0), (6 / 7 + 1 / 1e6, math.inf)]
    best, module = fit(tmp_path, tie_break="val/loss", scripted=scripted)
    assert saved_epoch(best.best_model_path) == 3 and module.predicted_best == [True] * 4


def test_the_tie_break_survives_a_resume_from_last_ckpt(tmp_path):
    stopped, _ = fit(tmp_path, tie_break="val/loss", epochs=3)  # killed after epoch 2: best = epoch 1, loss 0.6
    assert saved_epoch(stopped.best_model_path) == 1
    best, module = fit(tmp_path, tie_break="val/loss", ckpt_path=tmp_path / "last.ckpt")
    # the resumed checkpoint callback knows the best's score, so the tied epoch 3 (loss 0.2) replaces it and
    # epoch 4 does not
    assert saved_epoch(best.best_model_path) == 3 and module.predicted_best == [True, False, False]


@pytest.mark.parametrize("mode", ["max", "min"])
@pytest.mark.parametrize("tie_break_mode", ["max", "min"])
def test_the_score_orders_by_the_metric_then_by_the_tie_break(mode, tie_break_mode):
    score = SelectionScore("val/video_uar", mode, "val/loss", tie_break_mode).score
    # neighbouring float32 values (at zero, below a power of two, below 1) and others
    below = [np.nextafter(np.float32(x), np.float32(0)) for x in (0.5, 1.0)]
    metrics = sorted(
        [0.0, float(np.nextafter(np.float32(0), np.float32(1))), 1 / 3, 0.5, 1.0, *map(float, below)],
        reverse=mode == "min",
    )  # the worst first
    tie_breaks = [-math.inf, -1e6, -1.0, 0.0, 0.2, 0.2000001, 7.0, 1e6, math.inf]
    if tie_break_mode == "min":
        tie_breaks.reverse()  # the worst first
    scores = [score({"val/video_uar": m, "val/loss": t}) for m in metrics for t in tie_breaks]
    better = operator.gt if mode == "max" else operator.lt
    assert all(better(b, a) for a, b in zip(scores, scores[1:]))
    for m in metrics:  # a NaN tie-break is the worst
        worst = score({"val/video_uar": m, "val/loss": tie_breaks[0]})
        assert score({"val/video_uar": m, "val/loss": math.nan}) == worst


def test_without_a_tie_break_the_score_is_the_metric_as_logged():
    assert SelectionScore("val/video_uar", "max").score({"val/video_uar": 1 / 3}) == float(np.float32(1 / 3))
    # a NaN metric stays NaN, the worst for ModelCheckpoint
    assert math.isnan(
        SelectionScore("val/loss", "min", "val/video_uar", "max").score({"val/loss": math.nan, "val/video_uar": 1.0})
    )


class RecordsTestedWeights(ScriptedValidation):
    def test_step(self, batch, batch_idx):
        pass

    def on_test_start(self):
        self.tested = {name: value.clone() for name, value in self.state_dict().items()}


def test_with_ema_the_test_after_fit_sees_the_average_that_was_validated_and_checkpointed(tmp_path):
    from callbacks.ema import EMAWeights

    data = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=2)
    selection, best, _ = selection_callbacks(tmp_path, "val/loss")
    module = RecordsTestedWeights()
    trainer = L.Trainer(
        max_epochs=4,
        callbacks=[selection, best, EMAWeights(decay=0.9)],
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
