"""Hydra composition of a RunConfig from `conf/` and command-line overrides.

Hydra's own errors are several lines with a stack-trace hint; here each becomes one
`ConfigError` sentence that names the bad key or value and the fix (for a field typed by a
`Choice` enum, the values it allows). `model` is kept out
of the defaults list so that `+model=NAME` (Hydra's append) works exactly as written;
parallel layouts (`conf/parallel/`) are appended the same way, `+parallel=tp2`, or set
key by key, `parallel.tp=2`.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from pathlib import Path
from typing import Callable, Optional

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import DictConfig, EnumNode, OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError

from megallm.config.checks import apply_objective
from megallm.config.schema import RunConfig
from megallm.errors import ConfigError
from megallm.model.config import ModelConfig

CONF_DIR = Path(os.environ.get("MEGALLM_CONF_DIR", Path(__file__).resolve().parents[2] / "conf"))


def available(group: str) -> list[str]:
    names = [p.stem for p in (CONF_DIR / group).glob("*.yaml")]
    return sorted(names, key=_listing_key)


def _listing_key(name: str):
    """tiny, then sizes by parameters (125m ... 70b), then named families (smollm2_135m, tinyllama_1b)."""
    match = re.fullmatch(r"(\d+)([mb])", name)
    if match:
        return (1, int(match.group(1)) * (1000 if match.group(2) == "b" else 1), name)
    return (0 if name == "tiny" else 2, 0, name)


def _register_schema() -> None:
    ConfigStore.instance().store(name="megallm_schema", node=RunConfig)


def _known_keys(node_path: str) -> list[str]:
    node = OmegaConf.structured(RunConfig)
    for part in [p for p in node_path.split(".") if p]:
        node = node.get(part) if part in node else None
        if node is None or not OmegaConf.is_config(node):
            return []
    return list(node.keys())


def _explain(exc: Exception, overrides: list[str]) -> str:
    refused = _refused_choice(exc)
    if refused:
        return refused
    text = "\n".join(str(e) for e in (exc, exc.__cause__) if e is not None)
    missing = re.search(r"Could not find '(\w+)/([^']+)'", text)
    if missing:
        group, name = missing.groups()
        return f"unknown {group} {name!r}: choose one of {', '.join(available(group))} (files in conf/{group}/)"
    group_without_plus = re.search(r"Could not override '(model|parallel)'", text)
    if group_without_plus:
        group = group_without_plus.group(1)
        return (f"choose the {group} config with +{group}=NAME (with the plus sign), NAME one of "
                f"{', '.join(available(group))}")
    key = re.search(r"full_key: ([\w.]+)", text) or re.search(r"Could not (?:override|append to) '([\w.]+)'", text)
    if key and ("not in struct" in text or "No match" in text or "Key '" in text):
        return _unknown_key_message(key.group(1))
    first_lines = [line.strip() for line in text.splitlines() if line.strip()][:2]
    return "invalid configuration: " + "; ".join(first_lines)


def _refused_choice(exc: BaseException) -> Optional[str]:
    """"KEY must be one of A, B, C, got VALUE" where OmegaConf refused a value of an enum-typed field
    (a Choice: its members' names are the values users write)."""
    error: Optional[BaseException] = exc
    while error is not None:
        if isinstance(error, ValidationError) and isinstance(error.child_node, EnumNode):
            allowed = ", ".join(error.child_node.enum_type.__members__)
            return f"{error.full_key} must be one of {allowed}, got {error.value!r}"
        error = error.__cause__ or error.__context__
    return None


def _unknown_key_message(full: str) -> str:
    parent, _, leaf = full.rpartition(".")
    hint = difflib.get_close_matches(leaf, _known_keys(parent), n=1)
    suggestion = f" (did you mean {'.'.join(filter(None, [parent, hint[0]]))}?)" if hint else ""
    return f"unknown config key {full!r}{suggestion}; `python launch/pretrain.py +model=tiny --cfg` prints every key"


def _keys_outside_schema(node, path: str = "") -> list[str]:
    """Keys of a composed config that its schema's dataclasses lack: Hydra's `+key=value` adds
    them past the schema's struct flag (`+train.foo=1`), and nothing would ever read them."""
    schema = OmegaConf.get_type(node)
    fields = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    found = []
    for key in node.keys():
        full = f"{path}.{key}" if path else str(key)
        if fields is not None and key not in fields:
            found.append(full)
        elif OmegaConf.is_dict(child := node._get_node(key)):
            found += _keys_outside_schema(child, full)
    return found


def compose_config(overrides: list[str], config_name: str = "config",
                   model_from: Optional[Callable[[DictConfig], dict]] = None):
    """Compose and type-check; returns (RunConfig, resolved YAML text).

    `config_name`: the primary config in conf/ (config.yaml: pretraining; finetune.yaml). `model_from`:
    where no +model=NAME is given, the model's shape from the composed config (fine-tuning takes the
    pretrained model's); without it a model must be chosen.
    """
    _register_schema()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = compose(config_name=config_name, overrides=overrides)
        if OmegaConf.is_missing(cfg, "model") and model_from is not None:
            cfg.model = OmegaConf.structured(ModelConfig(**model_from(cfg)))
        if OmegaConf.is_missing(cfg, "model"):
            raise ConfigError(f"no model chosen: add +model=NAME, NAME one of {', '.join(available('model'))}")
        unknown = _keys_outside_schema(cfg)
        if unknown:
            raise ConfigError(_unknown_key_message(unknown[0]))
        run_config = _run_config(OmegaConf.to_object(cfg))
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise ConfigError(_explain(exc, overrides)) from exc
    apply_objective(run_config)
    return run_config, config_to_yaml(run_config)


def config_from_yaml(config_yaml: str, overrides: Optional[dict] = None) -> tuple[RunConfig, str]:
    """A RunConfig from resolved YAML (a checkpoint's config.yaml) with `overrides`
    ({dotted key: value}) applied; returns it and its YAML."""
    merged = OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.create(config_yaml))
    for key, value in (overrides or {}).items():
        OmegaConf.update(merged, key, value)
    return _run_config(OmegaConf.to_object(merged)), OmegaConf.to_yaml(merged)


def _run_config(obj: object) -> RunConfig:
    """OmegaConf.to_object of a config on RunConfig's schema: a RunConfig (typed so for the checker)."""
    assert isinstance(obj, RunConfig), type(obj)
    return obj


def config_to_yaml(cfg: RunConfig) -> str:
    """The YAML of a RunConfig object (after values were resolved in code, e.g. the vocabulary)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
