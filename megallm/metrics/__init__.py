"""Metric arithmetic and formatting: tokens/s, MFU, ETA, peak memory, console lines.

Where records go (console, JSONL, W&B) is decided by the training loop's callbacks
(megallm.train.callbacks); this package only computes and formats.
"""
