"""Sweeps: one command over model sizes x token budgets (or any other keys), in Hydra's syntax.

- plan.py     the overrides expanded into runs (Hydra's sweep grammar), each with its folder named
              from its swept values; WSD runs that differ only in train.steps become one trunk and
              cool-down branches resumed from its stable phase; the compute that saves
- execute.py  the runs one after another on this machine (finished ones skipped, interrupted ones
              resumed), or a SLURM job array with one task per trunk and its branches
"""
