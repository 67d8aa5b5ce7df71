"""Orchestration: the cross-validation run loop, one stage's fit and test, fold files, resume, summaries,
the classical baseline, prediction and command-line checks. Entry points (train.py, prepare.py,
predict.py) call it; it builds on datamodules/, lightning_modules/, callbacks/ and tracking/."""
