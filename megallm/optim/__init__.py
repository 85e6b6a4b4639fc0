"""The optimizer and its policy: AdamW, which weights decay, the learning-rate schedule.

- schedule.py  LR multiplier per step: linear warmup, then cosine decay
- adamw.py     weight-decay groups, the AdamW + LambdaLR pair, settings kept across a load
"""
