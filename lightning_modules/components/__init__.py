"""Plain nn.Module building blocks: VGG fc7 extractor, statistics-pooling TDNN, small face CNN, face-sequence
encoder, LSTM with a streamed recurrent weight, attention fusion head."""

from lightning_modules.components.attention import AttentionFusionHead, ModalityAttention
from lightning_modules.components.face_cnn import FaceCNN
from lightning_modules.components.lstm import StreamingLSTM
from lightning_modules.components.tdnn import StatsPoolTDNN
from lightning_modules.components.vgg import VGGFeatureExtractor, preprocess_uint8_images
from lightning_modules.components.visual import FaceSequenceEncoder

__all__ = [
    "AttentionFusionHead",
    "FaceCNN",
    "FaceSequenceEncoder",
    "ModalityAttention",
    "StatsPoolTDNN",
    "StreamingLSTM",
    "VGGFeatureExtractor",
    "preprocess_uint8_images",
]
