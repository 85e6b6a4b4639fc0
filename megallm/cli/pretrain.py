"""`launch/pretrain.py`: compose and check the config, then dry-run or train.

Everything that can be checked without a process group (config, corpus, tokenizer,
vocabulary) is checked first, so mistakes cost a second, not a cluster allocation.
Errors a user can fix end the program with one line on stderr and exit code 2.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Optional

from megallm.cli import report, report_failure
from megallm.config import (
    ConfigError,
    RunConfig,
    available,
    check_config,
    check_device_support,
    compose_config,
    config_to_yaml,
)
from megallm.data.mixture import Mixture, open_run_data
from megallm.errors import DataError, MegallmError
from megallm.evaluation.downstream import downstream_callbacks, downstream_tasks
from megallm.parallel.lifetime import die_with_parent, launched_by_torchrun, orphaned_by_launcher

PROG = "megallm"
USAGE = """usage: torchrun [--nproc_per_node N] launch/pretrain.py +model=NAME [key=value ...] [--cfg]

Pretrain a Llama-style model. NAME is one of: {models}.
Overrides use Hydra syntax, e.g. train.steps=2000 parallel.zero_stage=2 data.path=data/mycorpus.
  train.dry_run=true   build on the meta device and print parameters, FLOPs and memory per rank
  --cfg                print the composed config (every key) and exit
  --multirun, -m       a sweep, as in Hydra: +model=a,b train.steps=100,200 (see launch/sweep.py --help)
Keys and their meaning: megallm/config/schema.py; model shapes: conf/model/."""


def resolve_vocab(cfg: RunConfig, corpus_vocab: int) -> None:
    model = cfg.model
    if model.vocab_size is None:
        model.vocab_size = corpus_vocab
    elif model.vocab_size < corpus_vocab:
        raise ConfigError(
            f"model.vocab_size={model.vocab_size} is smaller than the corpus tokenizer's {corpus_vocab} tokens; "
            f"set model.vocab_size={corpus_vocab} (or null to follow the tokenizer)"
        )


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if launched_by_torchrun():  # first, before any slow import or start-up wait: a torchrun that dies
        die_with_parent()       # at any moment (SIGKILL, SIGUSR1) takes its ranks along
        if orphaned_by_launcher():
            return report(PROG, MegallmError("torchrun exited before this rank started; nothing to do"))
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE.format(models=", ".join(available("model"))))
        return 0
    if any(a in ("-m", "--multirun") for a in argv):  # Hydra's sweep flag: launch/sweep.py's job
        from megallm.cli.sweep import main as sweep  # deferred: only sweeps need it

        if launched_by_torchrun():
            return report(PROG, ConfigError("a sweep starts its own runs: use python launch/pretrain.py --multirun "
                                            "... --nproc N (each run then uses torchrun), not torchrun"))

        return sweep([a for a in argv if a not in ("-m", "--multirun")])
    print_cfg = "--cfg" in argv
    overrides = [a for a in argv if a != "--cfg"]
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex|tp_group is None).*")
    try:
        cfg, config_yaml = compose_config(overrides)
        if print_cfg:
            print(config_yaml)
            return 0
        check_config(cfg, world_size)
        downstream = downstream_tasks(cfg)  # the downstream section's own checks (an application's)
        mixture = None
        if not (cfg.train.dry_run and cfg.model.vocab_size is not None):
            mixture = open_run_data(cfg)
            corpus = mixture.primary
            resolve_vocab(cfg, corpus.manifest.vocab_size)
            if cfg.train.objective == "mlm":
                corpus.manifest.require_mask_token(cfg.data.path)
            config_yaml = config_to_yaml(cfg)  # the run folder's config.yaml holds the vocabulary trained with
        if cfg.train.dry_run:
            return _dry_run(cfg, world_size)
        assert mixture is not None, "a run that trains opened its corpus above"
        return _train(cfg, config_yaml, mixture, downstream)
    except MegallmError as error:
        return report(PROG, error)


def _dry_run(cfg: RunConfig, world_size: int) -> int:
    # deferred: torch and megatron-core, ~5 s of imports that config mistakes should not wait for
    from megallm.train.dry_run import describe_dry_run

    description = describe_dry_run(cfg, world_size)
    if int(os.environ.get("RANK", 0)) == 0:
        print(description)
    return 0


def _train(cfg: RunConfig, config_yaml: str, mixture: Mixture, downstream: list) -> int:
    # deferred: torch, megatron-core and DeepSpeed take ~6 s to import; config mistakes need not wait
    import torch

    from megallm.parallel.distributed import distributed, select_deepspeed_accelerator

    check_device_support(cfg, on_gpu=torch.cuda.is_available())
    select_deepspeed_accelerator()
    # deferred: imports DeepSpeed, which reads the accelerator chosen just above
    from megallm.train.build import build_trainer, check_start

    check_start(cfg, mixture)  # the run's folders and the corpus's windows, before any process group
    corpus = mixture.primary
    plugged_in = downstream_callbacks(cfg, corpus, downstream)  # downstream evaluation, when on
    p = cfg.parallel
    with distributed(p.tp, p.pp, p.zero_stage) as ctx:
        if ctx.is_main and cfg.model.vocab_size is not None and cfg.model.vocab_size > corpus.manifest.vocab_size:
            print(f"note: model.vocab_size={cfg.model.vocab_size} exceeds the tokenizer's "
                  f"{corpus.manifest.vocab_size} tokens; the extra embedding rows are never used", flush=True)
        try:
            trainer = build_trainer(cfg, config_yaml, mixture, ctx, extra_callbacks=plugged_in)
            trainer.fit()
        except DataError as error:  # may be one rank's shard: every rank says which
            return report(PROG, error, every_rank=True)
        except Exception as error:  # one line for the job; the loader workers are stopped already
            return report_failure(PROG, error)
    return trainer.exit_code  # 0, or PREEMPTED_EXIT_CODE after a stop signal
