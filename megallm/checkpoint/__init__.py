"""Checkpoints: DeepSpeed's sharded engine state plus the run's own state, published atomically."""
