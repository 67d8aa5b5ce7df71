"""The three LightningModules of the two-phase training (§5) and their evaluation."""

from lightning_modules.audio_module import AudioModule
from lightning_modules.base import EmotionModule
from lightning_modules.fusion_module import FusionModule
from lightning_modules.visual_module import VisualModule

__all__ = ["AudioModule", "EmotionModule", "FusionModule", "VisualModule"]
