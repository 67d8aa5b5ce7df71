"""Training starts from the random state captured before ``fit``: the same numbers on a cold or warm cache."""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch


class TrainFromSeededState(L.Callback):
    """Training starts from the random state the run had just before ``fit``, whatever ran in between;
    a run resumed from a checkpoint goes on from the random state saved in it.

    ``fit`` prepares the data before it trains: on a cold cache that builds MTCNN to preprocess the
    clips (in this process when ``preprocess_workers`` is 1) or loads the
    frozen extractors to compute the fusion features; both initialise networks from the global
    generator, which a warm cache skips. ``capture`` before ``fit`` and the restore at ``on_fit_start``
    (after ``prepare_data`` and ``setup``) make shuffling, dropout and augmentation draw the same numbers
    in the first run of an experiment and in every rerun, and on every rank. Every checkpoint holds the
    random state of the moment it was saved (``state_dict``); resuming from one loads it in place of the
    captured state (``load_state_dict`` runs before ``on_fit_start``), so the epochs after a kill draw what
    they would have drawn in one uninterrupted run.
    """

    def __init__(self) -> None:
        self.states: dict | None = None

    def capture(self) -> None:
        self.states = self.state_dict()

    def state_dict(self) -> dict:
        kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
        return {
            "python": random.getstate(),
            "numpy": (kind, keys.tolist(), position, has_gauss, cached_gaussian),  # plain types: weights_only loads
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.states = state_dict

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.states is None:
            raise RuntimeError("TrainFromSeededState.capture() must be called before fit")
        kind, keys, position, has_gauss, cached_gaussian = self.states["numpy"]
        random.setstate(self.states["python"])
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached_gaussian))
        torch.set_rng_state(self.states["torch"])
        if self.states["cuda"] is not None:
            torch.cuda.set_rng_state_all(self.states["cuda"])
