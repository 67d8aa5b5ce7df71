"""Experiment tracking outside the training loop: W&B/CSV logger factories, the cross-validation summary
run, the results table and plots."""
