"""Fusion network, §3.4: precomputed audio and visual segment features -> attention DNN (Eq. 5-7)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lightning_modules.base import Batch, EmotionModule, plain_training_args
from lightning_modules.components.attention import AttentionFusionHead
from lightning_modules.components.augment import ModalityDropout


class FusionModule(EmotionModule):
    """batch["audio_feat"] `[B, audio_dim]`, batch["visual_feat"] `[B, visual_dim]` -> AttentionFusionHead.

    The features come from the frozen audio and visual networks (the paper's second training phase).
    Evaluation also logs `<stage>/attn_audio` and `<stage>/attn_visual`: the mean attention weight on
    the audio and visual features (for num_tokens=2, the mean beta of each modality token).

    Args:
        audio_dim, visual_dim, num_tokens, attention_dim, hidden_dims, dropout, num_classes:
            AttentionFusionHead's.
        modality_dropout: training only, the probability that a segment loses its audio or its visual
            features (``ModalityDropout``); 0 is the paper.
        training: EmotionModule's arguments (class_names, optimizer, lr, scheduler, ...; channels_last has no
            effect here).
    """

    input_keys = ("audio_feat", "visual_feat")

    def __init__(
        self,
        audio_dim: int = 4096,
        visual_dim: int = 4096,
        num_tokens: int = 2,
        attention_dim: int = 256,
        hidden_dims: Sequence[int] = (1024,),
        dropout: float = 0.5,
        num_classes: int = 6,
        modality_dropout: float = 0.0,
        **training: Any,
    ) -> None:
        # plain containers, so that hparams.yaml and checkpoints hold no tuples or OmegaConf objects
        hidden_dims = list(hidden_dims)
        plain_training_args(training)
        super().__init__(num_classes, **training)
        self.save_hyperparameters()
        self.head = AttentionFusionHead(
            audio_dim, visual_dim, num_tokens, attention_dim, hidden_dims, dropout, num_classes
        )
        self.modality_dropout = ModalityDropout(modality_dropout)
        self._finish_init()

    def extract_features(self, batch: Batch) -> torch.Tensor:
        """The attended fused vector q `[B, token_dim]` (Eq. 7)."""
        attended, _ = self.head.attend(batch["audio_feat"], batch["visual_feat"])
        return attended

    def segment_outputs(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, weights = self.head(*self.modality_dropout(batch["audio_feat"], batch["visual_feat"]))
        return logits, {"attention": weights}

    def modality_weights(self, attention: torch.Tensor) -> torch.Tensor:
        """Per segment, the attention weight (beta, Eq. 6) on the audio and on the visual features `[B, 2]`
        from the token weights `[B, T]`: each token's beta split by the share of audio features in it.
        Each row sums to 1."""
        audio_share = self.head.token_audio_fraction().to(attention.device, torch.float64)
        on_audio = attention.double() @ audio_share
        return torch.stack([on_audio, attention.double().sum(dim=1) - on_audio], dim=1)

    def extra_evaluation(self, rows: dict[str, torch.Tensor]) -> dict[str, float]:
        """Mean attention weight on audio and on visual features over the evaluated segments."""
        attn_audio, attn_visual = self.modality_weights(rows["attention"]).mean(dim=0).tolist()
        return {"attn_audio": attn_audio, "attn_visual": attn_visual}
