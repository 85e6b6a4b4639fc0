"""The run's configuration: schema, composition from `conf/` with overrides, and checks.

- schema.py   RunConfig and its per-concern sections (the Hydra schema)
- compose.py  conf/ + command-line overrides -> RunConfig, Hydra's errors as one line
- checks.py   values that are well-typed but inconsistent; the batch arithmetic
"""

from megallm.config.checks import (
    OBJECTIVES,
    apply_objective,
    batch_layout,
    check_config,
    check_device_support,
    planned_world_size,
)
from megallm.config.compose import available, compose_config, config_from_yaml, config_to_yaml
from megallm.config.schema import (
    CheckpointConfig,
    DataConfig,
    FinetuneConfig,
    LoggingConfig,
    MLMConfig,
    NanGuardConfig,
    OptimConfig,
    ParallelConfig,
    RunConfig,
    TrainConfig,
    WandbConfig,
    resolved_precision,
    step_ranges,
)
from megallm.errors import ConfigError

__all__ = ["CheckpointConfig", "ConfigError", "DataConfig", "FinetuneConfig", "LoggingConfig", "MLMConfig", "NanGuardConfig", "OBJECTIVES", "OptimConfig",
           "ParallelConfig", "RunConfig", "TrainConfig", "WandbConfig", "apply_objective", "available", "batch_layout", "check_config",
           "check_device_support", "compose_config", "config_from_yaml", "config_to_yaml", "planned_world_size", "resolved_precision",
           "step_ranges"]
