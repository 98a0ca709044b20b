"""The training engine: trainer, evaluation, checkpoints and export."""
