"""``python predict.py``: a trained run's networks on new recordings (``inference.predict``)."""

from runner.prediction.inference import predict

__all__ = ["predict"]
