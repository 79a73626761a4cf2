"""A run: the training loop, checkpoints, resume, LR schedule, precision, the run dir."""
