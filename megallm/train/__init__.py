"""The training loop, optimizer and learning-rate schedule, and the pretrain entry point."""
