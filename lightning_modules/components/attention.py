"""Attention-based feature fusion, §3.4 (Eq. 5-7)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class ModalityAttention(nn.Module):
    """Soft attention over T tokens with a learned context vector, Eq. 5-7.

    h_t = tanh(W c_t + b)                 (Eq. 5)
    beta_t = softmax_t(h_t . h_hat)       (Eq. 6; the paper's "|h_t|^T" is read as the transpose h_t^T)
    q = sum_t beta_t c_t                  (Eq. 7)

    The context vector h_hat is drawn from N(0, 1/attention_dim) so the initial scores h_t . h_hat
    have roughly unit variance, and is trained jointly with the rest of the network.
    """

    def __init__(self, token_dim: int, attention_dim: int) -> None:
        super().__init__()
        self.projection = nn.Linear(token_dim, attention_dim)
        self.context = nn.Parameter(torch.randn(attention_dim) * attention_dim**-0.5)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens c `[B, T, D]` -> (q `[B, D]`, beta `[B, T]`); beta sums to 1 over T."""
        hidden = torch.tanh(self.projection(tokens))
        scores = hidden @ self.context.to(hidden.dtype)
        weights = torch.softmax(scores.float(), dim=1).to(tokens.dtype)
        attended = torch.einsum("bt,btd->bd", weights, tokens)
        return attended, weights


def _mlp(in_dim: int, hidden_dims: Sequence[int], dropout: float, out_dim: int) -> nn.Sequential:
    """Dropout -> (Linear -> ReLU -> Dropout)* -> Linear."""
    layers: list[nn.Module] = [nn.Dropout(dropout)]
    for width in hidden_dims:
        layers += [nn.Linear(in_dim, width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class AttentionFusionHead(nn.Module):
    """The fusion DNN of §3.4: concatenate, attend over tokens (Eq. 5-7), classify.

    The concatenated vector c = [audio; visual] (the paper's 8192-D fused vector) is split into
    `num_tokens` equal consecutive tokens. With num_tokens=2 the tokens are the audio and the visual
    vector, so q has the size of one modality's feature (the paper's "reduced dimensionality", 4096-D)
    and beta is the weight given to each modality. Other divisors of audio_dim + visual_dim give finer
    token layouts; num_tokens=1 makes beta = 1 and q = c, i.e. plain concatenation (no attention).
    """

    def __init__(
        self,
        audio_dim: int = 4096,
        visual_dim: int = 4096,
        num_tokens: int = 2,
        attention_dim: int = 256,
        hidden_dims: Sequence[int] = (1024,),
        dropout: float = 0.5,
        num_classes: int = 6,
    ) -> None:
        super().__init__()
        fused_dim = audio_dim + visual_dim
        if num_tokens < 1 or fused_dim % num_tokens:
            raise ValueError(
                f"num_tokens={num_tokens} must be a positive divisor of audio_dim + visual_dim = {fused_dim}"
            )
        if num_tokens == 2 and audio_dim != visual_dim:
            raise ValueError(
                f"num_tokens=2 means one token per modality, which needs audio_dim == visual_dim "
                f"(got {audio_dim} and {visual_dim})"
            )
        self.audio_dim, self.visual_dim, self.num_tokens = audio_dim, visual_dim, num_tokens
        self.token_dim = fused_dim // num_tokens
        self.attention = ModalityAttention(self.token_dim, attention_dim)
        self.classifier = _mlp(self.token_dim, list(hidden_dims), dropout, num_classes)

    def token_audio_fraction(self) -> torch.Tensor:
        """Share of each token's features that come from the audio vector, `[T]` (1, 0 for two tokens)."""
        starts = torch.arange(self.num_tokens) * self.token_dim
        audio_in_token = (self.audio_dim - starts).clamp(0, self.token_dim)
        return audio_in_token.float() / self.token_dim

    def attend(self, audio: torch.Tensor, visual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Audio `[B, audio_dim]`, visual `[B, visual_dim]` -> (q `[B, token_dim]`, beta `[B, T]`), Eq. 5-7."""
        fused = torch.cat([audio, visual.to(audio.dtype)], dim=1)
        return self.attention(fused.view(fused.shape[0], self.num_tokens, self.token_dim))

    def forward(self, audio: torch.Tensor, visual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Audio `[B, audio_dim]`, visual `[B, visual_dim]` -> (logits `[B, num_classes]`, beta `[B, T]`)."""
        attended, weights = self.attend(audio, visual)
        return self.classifier(attended), weights
