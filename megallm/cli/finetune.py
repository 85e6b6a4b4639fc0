"""`launch/finetune.py`: fine-tune a pretrained model on labelled rows (megallm.finetune).

    torchrun [--nproc_per_node N] launch/finetune.py finetune.init=RUN_OR_CHECKPOINT_OR_HF \
        finetune.task=classify finetune.train_file=train.jsonl [finetune.val_file=val.jsonl] [key=value ...]

The config is conf/finetune.yaml on the run schema (megallm/config/schema.py, FinetuneConfig);
the model's shape is the pretrained model's. The config, the pretrained model and the rows are
read and checked before any process group starts; a mistake is one line `finetune: error: ...`.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Optional

from megallm.cli import report, report_failure
from megallm.config import check_config, compose_config, config_to_yaml
from megallm.errors import ConfigError, DataError, MegallmError
from megallm.extras import require
from megallm.parallel.lifetime import die_with_parent, launched_by_torchrun

PROG = "finetune"
USAGE = """usage: torchrun [--nproc_per_node N] launch/finetune.py finetune.init=PATH finetune.train_file=FILE [key=value ...]

Fine-tune a pretrained model (finetune.init: a megallm run, checkpoint or Hugging Face Llama folder):
  finetune.task=classify   rows {text, label}: a classification head; validation accuracy and macro-F1
  finetune.task=sft        rows {prompt, response}: next-token loss on the responses only, examples packed
  finetune.val_file=FILE   validation rows (default: finetune.val_fraction of the training rows)
  --cfg                    print the composed config (every key) and exit
Files are .jsonl (one JSON object per line) or .csv with a header. Parallel layouts and every other key
as in launch/pretrain.py (parallel.*, train.*, optim.*, checkpoint.*, logging.*); defaults: conf/finetune.yaml."""


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if launched_by_torchrun():
        die_with_parent()
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex|tp_group is None).*")
    try:
        return _finetune([a for a in argv if a != "--cfg"], print_cfg="--cfg" in argv)
    except MegallmError as error:
        return report(PROG, error)


def _finetune(overrides: list[str], print_cfg: bool) -> int:
    require("eval", "launch/finetune.py")  # its validation scores (accuracy, macro-F1: megallm.evaluation)
    # deferred: torch, megatron-core and DeepSpeed (~6 s); DeepSpeed reads the accelerator chosen first
    from megallm.parallel.distributed import distributed, select_deepspeed_accelerator

    select_deepspeed_accelerator()
    # deferred: imports DeepSpeed, which reads the accelerator chosen just above
    from megallm.finetune.run import (
        build_finetune,
        pretrained_model,
        pretrained_tokenizer,
        pretrained_weights,
        read_data,
        shape_model,
    )
    from megallm.train.run_folder import RunFolder  # deferred: as the imports above

    cfg, config_yaml = compose_config(overrides, config_name="finetune",
                                      model_from=lambda composed: pretrained_model(composed.finetune.init))
    if print_cfg:
        print(config_yaml)
        return 0
    if cfg.downstream.every:
        raise ConfigError(f"downstream.every={cfg.downstream.every}: downstream evaluation plugs into pretraining "
                          "(launch/pretrain.py); a fine-tuning scores its validation rows every train.eval_every "
                          "steps: drop the downstream.* settings")
    main_rank = int(os.environ.get("RANK", 0)) == 0
    say = (lambda line: print(line, flush=True)) if main_rank else (lambda line: None)
    tokenizer_file = pretrained_tokenizer(cfg.finetune.init, cfg.data.tokenizer)
    data = read_data(cfg, tokenizer_file, say)
    shape_model(cfg, data)
    check_config(cfg, int(os.environ.get("WORLD_SIZE", 1)))
    RunFolder.checked(cfg)  # run_dir and checkpoint.dir can be written, before any process group
    config_yaml = config_to_yaml(cfg)
    weights = pretrained_weights(cfg.finetune.init) if cfg.finetune.pretrained else {}
    say(f"{cfg.finetune.task}: {data.train.rows} training and {data.val.rows} validation "
        + ("windows" if cfg.finetune.task == "sft" else f"rows, {len(data.names)} labels"))
    p = cfg.parallel
    with distributed(p.tp, p.pp, p.zero_stage) as ctx:
        try:
            trainer = build_finetune(cfg, config_yaml, ctx, weights, tokenizer_file, data)
            del weights
            trainer.fit()
        except DataError as error:
            return report(PROG, error, every_rank=True)
        except Exception as error:  # one line for the job, as pretraining's
            return report_failure(PROG, error)
    return trainer.exit_code
