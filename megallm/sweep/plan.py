"""A sweep's runs: Hydra's sweep grammar expanded, folders named, WSD branches planned.

`+model=ladder_2,ladder_4 train.steps=100,200,400` is 6 runs, in the order Hydra's basic
sweeper gives them (the cartesian product, the first key slowest). Each run's folder is
`<run_dir>/<swept key=value,...>` (Hydra's `override_dirname` of the swept keys), so its name
says what differs; `run_dir` (default runs/sweep) is the sweep's folder, whose name is the runs'
W&B group (unless logging.wandb.group or WANDB_RUN_GROUP says otherwise).

Runs under optim.schedule=wsd that differ only in train.steps, or in their anneal mixture
(data.anneal, which applies from a run's own decay on), share their stable phase: the longest is
trained (the trunk, saving a checkpoint where each other run's decay starts) and each other one is
a cool-down branched from that checkpoint, which gives the same weights as training it alone
(megallm.optim.schedule, megallm.data.mixture) at a fraction of the cost: "which anneal mix" is a
sweep axis of cool-downs.

Mixture weights sweep like any key: `+data.sources.code.weight=1,3,9` is 3 runs. Weights are normalised,
so two runs whose swept weights differ only in scale (`a.weight=1,2 b.weight=1,2`: 1:1 and 2:2) would
train the same mixture twice: the plan refuses them in one line naming both.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

from megallm.checkpoint.state import tag_for
from megallm.config import RunConfig, check_config, compose_config
from megallm.data.shards import Manifest
from megallm.errors import ConfigError, DataError
from megallm.model.flops import flops_per_token
from megallm.optim.schedule import decay_start
from megallm.run_layout import SWEEP_PLAN_FILE
from megallm.train.run_folder import RunFolder

DEFAULT_SWEEP_DIR = "runs/sweep"
PLAN_FILE = SWEEP_PLAN_FILE


@dataclass
class PlannedRun:
    name: str  # the swept key=value pairs: the run's folder name under the sweep's
    overrides: list[str]  # what launch/pretrain.py is given (the sweep's fixed ones, then this run's)
    run_dir: Path
    checkpoints: Path  # its checkpoint folder (checkpoint.dir, else <run_dir>/checkpoints)
    steps: int
    tokens: int  # trained in the run's schedule (train.steps x global batch)
    flops: Optional[float]  # training FLOPs of the schedule; None when the vocabulary is unknown
    group: int  # runs that differ only in train.steps (one SLURM array task)
    branch_of: Optional[str] = None  # the trunk this cool-down resumes from
    branch_step: int = 0  # the trunk's step it resumes from (0: trained from scratch)
    branch_checkpoint: Optional[Path] = None
    at_steps: list[int] = field(default_factory=list)  # a trunk's branch points

    @property
    def trained_flops(self) -> Optional[float]:
        """FLOPs this run itself trains: all its steps, or a branch's steps after its branch point."""
        return None if self.flops is None else self.flops * (self.steps - self.branch_step) / self.steps


@dataclass
class SweepPlan:
    sweep_dir: Path
    runs: list[PlannedRun]

    @property
    def groups(self) -> list[list[PlannedRun]]:
        return [[run for run in self.runs if run.group == g] for g in sorted({run.group for run in self.runs})]

    def compute(self) -> tuple[Optional[float], Optional[float]]:
        """(training FLOPs of the sweep as planned, of the same runs each trained from scratch)."""
        separate = [run.flops for run in self.runs if run.flops is not None]
        if len(separate) < len(self.runs):
            return None, None
        trained = [run.trained_flops for run in self.runs if run.trained_flops is not None]  # every run's
        return sum(trained), sum(separate)

    def to_json(self) -> str:
        planned, separate = self.compute()
        return json.dumps({
            "sweep_dir": str(self.sweep_dir), "flops_planned": planned, "flops_separate_runs": separate,
            "runs": [{"name": r.name, "run_dir": str(r.run_dir), "overrides": r.overrides, "steps": r.steps,
                      "tokens": r.tokens, "flops": r.flops, "trained_flops": r.trained_flops, "group": r.group,
                      "branch_of": r.branch_of, "branch_step": r.branch_step} for r in self.runs],
        }, indent=1)


def expand(overrides: list[str]) -> tuple[list[str], list[list[tuple[str, str]]]]:
    """(the fixed overrides, each run's swept (key, value) pairs) in Hydra's basic-sweeper order."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as error:
        raise ConfigError(f"cannot parse the sweep's overrides: {str(error).splitlines()[0]}") from None
    fixed: list[str] = []
    axes = []
    for override in parsed:
        if override.is_sweep_override():
            axes.append([(override.get_key_element(), value) for value in override.sweep_string_iterator()])
        else:
            assert override.input_line is not None  # parse_overrides keeps each override's text
            fixed.append(override.input_line)
    return fixed, [list(combination) for combination in itertools.product(*axes)]


def run_name(swept: list[tuple[str, str]]) -> str:
    """Hydra's override_dirname of the swept keys: `model=ladder_2,train.steps=100` (no `+`, no `/`)."""
    if not swept:
        return "run"
    return ",".join(f"{key.lstrip('+~')}={value}".replace("/", "_") for key, value in sorted(swept))


def quoted(path: Path) -> str:
    """A path as a Hydra override value: quoted, since run names hold `=` and `,`."""
    return "'" + str(path).replace("\\", "\\\\").replace("'", "\\'") + "'"


def plan_sweep(overrides: list[str], world_size: int = 1, branch: bool = True) -> SweepPlan:
    """Expand `overrides` (Hydra's sweep grammar) into runs, each composed and checked now, so a
    mistake in any of them is found before the first starts."""
    fixed, combinations = expand(overrides)
    sweep_dir = Path(next((o.split("=", 1)[1] for o in fixed if o.startswith("run_dir=")), DEFAULT_SWEEP_DIR))
    fixed = [o for o in fixed if not o.startswith("run_dir=")]
    if not any(o.startswith("logging.wandb.group=") for o in fixed) and not os.environ.get("WANDB_RUN_GROUP"):
        fixed.append(f"logging.wandb.group={sweep_dir.name}")  # W&B shows the sweep's runs together
    if any(key.lstrip("+~") == "run_dir" for swept in combinations for key, _ in swept):
        raise ConfigError("run_dir names the sweep's folder and cannot be swept; each run gets a folder in it")
    runs: list[PlannedRun] = []
    groups: dict[tuple[tuple[str, str], ...], int] = {}
    configs: dict[str, RunConfig] = {}
    for swept in combinations:
        name = run_name(swept)
        run_overrides = [*fixed, *(f"{key}={value}" for key, value in swept), f"run_dir={quoted(sweep_dir / name)}"]
        cfg = _composed(run_overrides, name, world_size)
        # Runs that differ in train.steps, or in the anneal mixture alone (data.anneal applies from a run's
        # own WSD decay, after the branch point), share a group: their stable phase is one trunk's.
        group_key = tuple(sorted((k, v) for k, v in swept if k != "train.steps" and not _anneal_key(k)))
        runs.append(PlannedRun(name=name, overrides=run_overrides, run_dir=sweep_dir / name,
                               checkpoints=RunFolder.of(cfg).checkpoints, steps=cfg.train.steps,
                               tokens=cfg.train.steps * cfg.train.global_batch_tokens,
                               flops=_flops(cfg), group=groups.setdefault(group_key, len(groups))))
        configs[name] = cfg
    _refuse_same_mixtures(runs, combinations, configs)
    if branch:
        for group in {run.group for run in runs}:
            _plan_branches([run for run in runs if run.group == group], configs)
    # A group's trunk before its branches; groups in the sweep's order.
    runs.sort(key=lambda r: (r.group, r.branch_of is not None, -r.steps))
    return SweepPlan(sweep_dir, runs)


def _composed(overrides: list[str], name: str, world_size: int) -> RunConfig:
    try:
        cfg, _ = compose_config(overrides)
        check_config(cfg, world_size)
    except ConfigError as error:
        raise ConfigError(f"run {name}: {error}") from None
    return cfg


def _refuse_same_mixtures(runs: list[PlannedRun], combinations: list[list[tuple[str, str]]],
                          configs: dict[str, RunConfig]) -> None:
    """A ConfigError naming two runs that differ only in the scale of their swept source weights."""
    seen: dict[tuple, str] = {}
    for run, swept in zip(runs, combinations):
        sources = configs[run.name].data.source_settings()
        if not any(_swept_weight(key) for key, _ in swept) or not sources:
            continue
        total = sum(s.weight for s in sources.values())
        mixture = tuple((name, round(s.weight / total, 12)) for name, s in sources.items())
        key = (tuple((k, v) for k, v in swept if not _swept_weight(k)), mixture)
        if key in seen:
            shares = ", ".join(f"{name} {share:.4g}" for name, share in mixture)
            raise ConfigError(f"runs {seen[key]} and {run.name} train the same mixture ({shares}): weights are "
                              "normalised; sweep fewer weights (fix one source's weight and sweep the others)")
        seen[key] = run.name


def _swept_weight(key: str) -> bool:
    parts = key.lstrip("+~").split(".")
    return len(parts) == 4 and parts[:2] == ["data", "sources"] and parts[3] == "weight"


def _flops(cfg: RunConfig) -> Optional[float]:
    """Training FLOPs of the run's schedule; the vocabulary comes from the corpus (a mixture's first source,
    whose tokenizer every source shares) when the model leaves it open."""
    model = cfg.model
    if model.vocab_size is None:
        sources = cfg.data.source_settings()
        corpus = next(iter(sources.values())).path if sources else cfg.data.path
        try:
            vocab = Manifest.load(corpus).vocab_size
        except (DataError, OSError):  # no corpus there (yet): the plan shows no FLOPs
            return None
        model = type(model)(**{**model.to_dict(), "vocab_size": vocab})
    return float(flops_per_token(model, cfg.train.seq_len) * cfg.train.steps * cfg.train.global_batch_tokens)


def _anneal_key(key: str) -> bool:
    return key.lstrip("+~").startswith("data.anneal.")


def _plan_branches(group: list[PlannedRun], configs: dict[str, RunConfig]) -> None:
    """The longest WSD run of `group` trains; each shorter one branches where its own decay starts."""
    trunk = max(group, key=lambda r: r.steps)
    trunk_cfg = configs[trunk.name]
    if trunk_cfg.optim.schedule != "wsd" or len(group) < 2:
        return
    for run in group:
        if run is trunk:
            continue
        point = decay_start(configs[run.name].optim, run.steps)
        if not 0 < point <= decay_start(trunk_cfg.optim, trunk.steps):
            continue  # no stable phase to share (all decay, or a decay longer than the trunk's plateau)
        run.branch_of, run.branch_step = trunk.name, point
        run.branch_checkpoint = trunk.checkpoints / tag_for(point)
        trunk.at_steps.append(point)
    if trunk.at_steps:
        trunk.at_steps.sort()
        trunk.overrides.append(f"checkpoint.at_steps=[{','.join(map(str, trunk.at_steps))}]")
