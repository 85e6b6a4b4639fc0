"""The run's configuration: schema, composition from `conf/` with overrides, and checks.

- schema.py   RunConfig and its per-concern sections (the Hydra schema)
- compose.py  conf/ + command-line overrides -> RunConfig, Hydra's errors as one line
- checks.py   values that are well-typed but inconsistent; the batch arithmetic
"""

from megallm.config.checks import (
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
    DecayShape,
    FinetuneConfig,
    FinetunePooling,
    FinetuneTask,
    LoggingConfig,
    LRSchedule,
    MLMConfig,
    NanGuardConfig,
    NanPolicy,
    OnDamaged,
    OptimConfig,
    ParallelConfig,
    PipelinePartition,
    Precision,
    RunConfig,
    SourceConfig,
    TrainConfig,
    TrainingObjective,
    WandbConfig,
    WandbMode,
    resolved_precision,
    step_ranges,
    wandb_mode,
)
from megallm.errors import ConfigError

__all__ = ["CheckpointConfig", "ConfigError", "DataConfig", "DecayShape", "FinetuneConfig", "FinetunePooling",
           "FinetuneTask", "LRSchedule", "LoggingConfig", "MLMConfig", "NanGuardConfig", "NanPolicy", "OnDamaged",
           "OptimConfig", "ParallelConfig", "PipelinePartition", "Precision", "RunConfig", "SourceConfig", "TrainConfig",
           "TrainingObjective", "WandbConfig", "WandbMode", "apply_objective", "available", "batch_layout", "check_config",
           "check_device_support", "compose_config", "config_from_yaml", "config_to_yaml", "planned_world_size",
           "resolved_precision", "step_ranges", "wandb_mode"]
