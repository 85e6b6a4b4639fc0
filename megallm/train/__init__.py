"""Training: the loop and its callbacks, and putting a run together.

- trainer.py     Trainer: owns time (the step counter, the loop, when each hook runs)
- callbacks/     what runs at the loop's hooks: metrics, throughput, evaluation,
                 checkpoints, sample traces, console / JSONL / W&B loggers
- build.py       a run from its config: resume check, seed, engine, batches, callbacks
- run_folder.py  the files of a run folder
- dry_run.py     size, FLOPs and memory per rank of a config, without training
"""
