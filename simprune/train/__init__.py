"""Training: config, loop, optimiser schedules, checkpoints, distributed helpers."""
