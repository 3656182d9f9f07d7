"""Training: the run config, the loop, the stages in a registry, checkpoints, distributed wrapping."""
