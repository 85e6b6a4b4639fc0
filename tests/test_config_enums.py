"""Config fields with a closed set of values, declared once as `Choice` enums (megallm.config.schema,
megallm.model.config): a value outside its set stops launch/pretrain.py and launch/finetune.py at
composition with one line listing the set; every value users write today composes, reads back as
the same plain word (the run's config.yaml, a model's JSON and consolidated.pt, W&B's config), and
the config.yaml of a checkpoint written before the enums reads back unchanged."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from omegaconf import EnumNode, OmegaConf

from megallm.cli.finetune import main as finetune_main
from megallm.cli.pretrain import main as pretrain_main
from megallm.config import (
    FinetunePooling,
    RunConfig,
    compose_config,
    config_from_yaml,
    config_to_yaml,
    resolved_precision,
)
from megallm.model.config import Choice, ModelConfig, Pooling
from megallm.optim.schedule import DECAY_SHAPES
from megallm.parallel.dims import ParallelDims
from megallm.train.callbacks.loggers import wandb_config
from tests.helpers import assert_one_line_error, run_main, run_pretrain

REPO = Path(__file__).resolve().parents[1]
# config.yaml as megallm wrote it before the enums (c8700a1), every choice set away from its default
PREVIOUS_CONFIG = REPO / "tests" / "fixtures" / "config" / "c8700a1_config.yaml"

# dotted key -> its values in the order the refusal lists them, as conf/ and the README write them
CHOICES = {
    "train.precision": ["auto", "bf16", "fp32"],
    "train.objective": ["causal", "mlm"],
    "train.activation_checkpointing": ["none", "full", "selective"],
    "optim.schedule": ["cosine", "wsd"],
    "optim.decay_shape": ["1-sqrt", "linear", "cosine"],
    "nan_guard.policy": ["stop", "skip", "rollback"],
    "checkpoint.on_damaged": ["fallback", "stop"],
    "parallel.pipeline_partition": ["layers", "parameters"],
    "finetune.task": ["classify", "sft"],
    "finetune.pooling": ["auto", "last", "mean", "first"],
    "kernels.attention": ["auto", "sdpa", "flex", "flash_attn"],
    "kernels.loss": ["plain", "chunked", "liger"],
    "model.rope_scaling.rope_type": ["default", "linear", "llama3"],
    "model.pooling": ["last", "mean", "first"],
}


def _field(cfg, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _enum_fields(node, path: str = "") -> dict[str, type]:
    """dotted key -> enum type of every enum-typed field of a composed config."""
    found = {}
    for key in node.keys():
        child, full = node._get_node(key), f"{path}{key}"
        if isinstance(child, EnumNode):
            found[full] = child.enum_type
        elif OmegaConf.is_dict(child):
            found.update(_enum_fields(child, full + "."))
    return found


def test_each_closed_set_is_one_enum_whose_names_are_its_values():
    """The schema types each field of CHOICES by an enum holding exactly its values; a member's name is
    its value (OmegaConf reads and writes members by name), and the tables that implement a set cover it."""
    node = OmegaConf.structured(RunConfig(model=ModelConfig()))
    enums = _enum_fields(node)
    assert {key: list(enums[key].values()) for key in CHOICES if key in enums} == CHOICES
    for choice in {*enums.values(), *Choice.__subclasses__()}:
        assert issubclass(choice, Choice) and [m.name for m in choice] == [m.value for m in choice], choice
    assert list(FinetunePooling.values()) == ["auto", *Pooling.values()]  # model.pooling's choices, or auto
    assert set(DECAY_SHAPES) == set(CHOICES["optim.decay_shape"])  # a function per shape


@pytest.mark.parametrize("key", list(CHOICES))
def test_a_value_outside_the_set_is_refused_in_one_line_listing_it(key, tmp_path, capsys):
    """launch/pretrain.py KEY=bogus: exit 2, one line naming the key, the allowed values and the value
    given, and no run folder (finetune.* keys are part of the same config and are checked with it)."""
    result = run_main(pretrain_main, ["+model=tiny", f"{key}=bogus", f"run_dir={tmp_path}/run"], capsys)
    assert_one_line_error(result, f"{key} must be one of {', '.join(CHOICES[key])}, got 'bogus'")
    assert not (tmp_path / "run").exists()


def test_finetune_task_is_refused_with_the_rest_before_the_pretrained_model_is_read(tmp_path, capsys):
    """launch/finetune.py checks finetune.task at composition: a wrong task is named even where
    finetune.init does not exist (it was checked only after the pretrained model and data were read)."""
    result = run_main(finetune_main, [f"finetune.init={tmp_path}/nothing", "finetune.task=regress",
                                      f"finetune.train_file={tmp_path}/train.jsonl", f"run_dir={tmp_path}/run"], capsys)
    assert_one_line_error(result, "finetune.task must be one of classify, sft, got 'regress'",
                          prefix="finetune: error: ")
    result = run_main(finetune_main, [f"finetune.init={tmp_path}/nothing", "finetune.pooling=max"], capsys)
    assert_one_line_error(result, "finetune.pooling must be one of auto, last, mean, first, got 'max'",
                          prefix="finetune: error: ")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_the_script_refuses_a_precision_typo_in_one_line(tmp_path):
    """`python launch/pretrain.py +model=tiny train.precision=bf61` as users start it."""
    result = run_pretrain(["+model=tiny", "train.precision=bf61", f"run_dir={tmp_path / 'run'}"])
    assert_one_line_error(result, "train.precision must be one of auto, bf16, fp32, got 'bf61'")
    assert not (tmp_path / "run").exists()


def test_every_value_composes_and_reads_back_as_the_plain_word():
    """Each allowed value: its member in the RunConfig, equal to, hashed and formatted as the word
    (code compares `cfg.train.precision == "bf16"` and looks words up in dicts), written to
    config.yaml as the word, and read back from that YAML to the same config."""
    for i in range(max(map(len, CHOICES.values()))):  # the i-th value of every key at once
        chosen = {key: values[i % len(values)] for key, values in CHOICES.items()}
        cfg, config_yaml = compose_config(["+model=tiny", *(f"{key}={value}" for key, value in chosen.items())])
        again, again_yaml = config_from_yaml(config_yaml)
        assert again_yaml == config_yaml
        for key, value in chosen.items():
            field = _field(cfg, key)
            assert isinstance(field, Choice) and field == value and {value: 1}[field] == 1, (key, value)
            assert (f"{field}", str(field), json.dumps(field)) == (value, value, json.dumps(value))
            assert _dig(yaml.safe_load(config_yaml), key) == value, (key, value)
            assert f"{key.rpartition('.')[2]}: {value}\n" in config_yaml
            assert _field(again, key) is field, (key, value)


def _dig(tree: dict, key: str):
    for part in key.split("."):
        tree = tree[part]
    return tree


def test_a_previous_versions_checkpoint_config_reads_back_unchanged():
    """The config.yaml that the version before the enums wrote (every choice away from its default):
    each choice reads as its member, and written again it holds the same words (the keys added since,
    other sections, aside)."""
    old_text = PREVIOUS_CONFIG.read_text()
    cfg, _ = config_from_yaml(old_text)
    old = yaml.safe_load(old_text)
    for key in CHOICES:
        assert isinstance(_field(cfg, key), Choice) and _field(cfg, key) == _dig(old, key), key
    assert (cfg.train.precision, cfg.optim.decay_shape, cfg.finetune.pooling) == ("fp32", "1-sqrt", "mean")
    written = yaml.safe_load(config_to_yaml(cfg))

    def same(before: dict, after: dict, path: str = "") -> None:
        for name, value in before.items():
            if isinstance(value, dict):
                same(value, after[name], f"{path}{name}.")
            else:
                assert after[name] == value and type(after[name]) is type(value), f"{path}{name}"
    same(old, written)


def test_what_leaves_the_config_holds_plain_strings(tmp_path):
    """A model's dict (megallm_state.json, config.json, consolidated.pt), W&B's config and the resolved
    precision hold `str`, not enum members: consolidated.pt loads with torch.load(weights_only=True)."""
    cfg, _ = compose_config(["+model=1b", "model.pooling=mean", "train.precision=fp32", "optim.decay_shape=linear"])
    model = cfg.model.to_dict()
    assert type(model["pooling"]) is str and type(model["rope_scaling"]["rope_type"]) is str
    assert type(cfg.model.rope_scaling.to_dict()["rope_type"]) is str
    torch.save({"model": {}, "model_config": model}, tmp_path / "consolidated.pt")
    assert torch.load(tmp_path / "consolidated.pt", weights_only=True)["model_config"] == model
    precision = resolved_precision(cfg.train.precision, on_gpu=False)
    assert type(precision) is str and precision == "fp32"
    assert type(resolved_precision("auto", on_gpu=True)) is str
    ctx = SimpleNamespace(dims=ParallelDims.for_world(1, 1, 1, 0), world_size=1)
    logged = wandb_config(cfg, ctx, precision)
    assert not [key for key, value in logged.items() if isinstance(value, Choice)]
    assert (logged["model.pooling"], logged["optim.decay_shape"], logged["train.precision"]) == ("mean", "linear", "fp32")
