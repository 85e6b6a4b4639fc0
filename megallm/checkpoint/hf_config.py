"""Hugging Face Llama `config.json` <-> megallm's ModelConfig, in both layouts transformers writes.

- transformers 4 (and configs on the Hub): top-level `rope_theta`, and `rope_scaling`
  (null, or {rope_type, factor, ...});
- transformers 5: `rope_parameters` = {rope_theta, rope_type, and for "llama3" factor,
  low_freq_factor, high_freq_factor, original_max_position_embeddings}, no top-level keys.

Reading refuses, in one line naming each key and value, every setting that changes what
the model computes and that megallm's Llama does not compute (biases, another activation,
sliding windows, partial rotary, RoPE types other than default / linear / llama3, a
head_dim other than hidden / heads, dropout). Keys that transformers' LlamaConfig itself
defaults take the same default (`LLAMA_DEFAULTS`): `rms_norm_eps` 1e-6, and `rope_theta`
10000, which the config.json of Llama-2-7b-hf and TinyLlama (written by transformers
4.31) leave out; `defaulted_settings` names those a config leaves out, for a notice.

Writing (`hf_config`) starts from the config.json an imported model came from, when
there is one, and sets only what megallm knows (shape, RoPE, max_position_embeddings,
dtype), keeping its layout, special token ids and every other key; a key the original
leaves out stays out while megallm's value is the default a reader assumes for it (a
Llama 2 config gets no `head_dim`, `tie_word_embeddings` or `rope_theta`): a Hugging Face
model imported and exported again keeps its config.json. Without one, it writes the
transformers 4 layout, which transformers 4 and 5 both read.
"""

from __future__ import annotations

from typing import Any, Optional

from megallm.errors import ConversionError
from megallm.model.config import ModelConfig, RopeScaling, RopeType

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)
# Keys each RoPE type needs (transformers' modeling_rope_utils reads them without defaults).
ROPE_KEYS = {"linear": ("factor",),
             "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}
REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
# transformers' LlamaConfig defaults for keys a config.json may leave out (transformers 5 reads a missing
# rope_theta as RotaryEmbeddingConfigMixin.default_theta, 4.x as LlamaConfig's rope_theta=10000.0).
LLAMA_DEFAULTS: dict[str, Any] = {"rms_norm_eps": 1e-6, "max_position_embeddings": 2048, "initializer_range": 0.02,
                  "tie_word_embeddings": False, "hidden_act": "silu", "rope_theta": 10000.0}
# Defaults that change the logits: a config that leaves one out gets a notice (`defaulted_settings`).
NOTED_DEFAULTS = ("rope_theta", "rms_norm_eps")


def rope_from_hf(config: dict) -> tuple[float, RopeScaling, list[str]]:
    """(rope_theta, scaling, unsupported settings as `key=value`) of either layout."""
    if config.get("rope_parameters") is not None:  # transformers 5
        params, where = dict(config["rope_parameters"]), "rope_parameters"
        if any(isinstance(value, dict) for value in params.values()):
            return 0.0, RopeScaling(), [f"rope_parameters per layer type ({', '.join(params)})"]
        params.setdefault("rope_theta", config.get("rope_theta"))
    else:  # transformers 4, the Hub
        params, where = dict(config.get("rope_scaling") or {}), "rope_scaling"
        params["rope_theta"] = config.get("rope_theta")
    theta = params.get("rope_theta")
    if theta is None:
        theta = LLAMA_DEFAULTS["rope_theta"]
    unsupported = []
    partial = params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    if partial not in (None, 1, 1.0):
        unsupported.append(f"partial_rotary_factor={partial}")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return float(theta), RopeScaling(), unsupported
    if rope_type not in RopeType.values():
        return float(theta), RopeScaling(), unsupported + [f"{where}.rope_type={rope_type!r}"]
    missing = [key for key in ROPE_KEYS[rope_type] if params.get(key) is None]
    if missing:
        raise ConversionError(f"config.json's {where} of rope_type {rope_type!r} lacks {', '.join(missing)}; "
                              "megallm does not guess RoPE scaling: add it as the model's card gives it")
    scaling = RopeScaling(rope_type=rope_type, **{key: params[key] for key in ROPE_KEYS[rope_type]})
    return float(theta), scaling, unsupported


def unsupported_settings(config: dict) -> list[str]:
    """`key=value` of every setting besides RoPE that megallm's Llama does not compute."""
    found = [f"{key}=true" for key in ("attention_bias", "mlp_bias") if config.get(key)]
    act = config.get("hidden_act", LLAMA_DEFAULTS["hidden_act"])
    if act != "silu":
        found.append(f"hidden_act={act!r}")
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    if config.get("head_dim") not in (None, hidden // heads) or hidden % heads:
        found.append(f"head_dim={config.get('head_dim', hidden / heads)} (hidden_size / num_attention_heads = "
                     f"{hidden / heads:g})")
    for key in ("sliding_window", "use_sliding_window", "attention_dropout", "logits_soft_cap"):
        if config.get(key):
            found.append(f"{key}={config[key]}")
    other_layers = sorted({t for t in config.get("layer_types") or [] if t != "full_attention"})
    if other_layers:
        found.append(f"layer_types={other_layers}")
    return found


def rope_theta_given(config: dict) -> bool:
    """Whether the config sets rope_theta (top-level, or in transformers 5's rope_parameters)."""
    return config.get("rope_theta") is not None or (config.get("rope_parameters") or {}).get("rope_theta") is not None


def defaulted_settings(config: dict) -> list[str]:
    """`key=value` of each NOTED_DEFAULTS key the config leaves out, with the value it is read as."""
    given = {"rope_theta": rope_theta_given(config), "rms_norm_eps": config.get("rms_norm_eps") is not None}
    return [f"{key}={LLAMA_DEFAULTS[key]:g}" for key in NOTED_DEFAULTS if not given[key]]


def model_config_from_hf(config: dict, name: str = "hf") -> ModelConfig:
    """megallm's ModelConfig for a Hugging Face Llama `config.json` (either layout); ConversionError
    naming every unsupported setting."""
    arch = (config.get("architectures") or [config.get("model_type")])[0]
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ConversionError(f"architecture {arch!r} is not supported; megallm converts "
                              f"{', '.join(SUPPORTED_ARCHITECTURES)} only")
    missing = [key for key in REQUIRED if key not in config]
    if missing:
        raise ConversionError(f"config.json lacks {', '.join(missing)}, which a Llama config needs")
    theta, scaling, unsupported = rope_from_hf(config)
    unsupported = unsupported_settings(config) + unsupported
    if unsupported:
        raise ConversionError(f"config.json sets {', '.join(unsupported)}, which megallm's Llama does not compute "
                              "(it has no biases, SiLU, full-width RoPE of type default, linear or llama3, no sliding "
                              "window or dropout)")
    settings = {**LLAMA_DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
    heads = config["num_attention_heads"]
    return ModelConfig(
        name=name, hidden_size=config["hidden_size"], num_layers=config["num_hidden_layers"], num_heads=heads,
        num_kv_heads=settings.get("num_key_value_heads", heads), ffn_hidden_size=config["intermediate_size"],
        vocab_size=config["vocab_size"], tie_embeddings=bool(settings["tie_word_embeddings"]), rope_theta=theta,
        rope_scaling=scaling, max_position_embeddings=settings["max_position_embeddings"],
        norm_eps=float(settings["rms_norm_eps"]), init_std=float(settings["initializer_range"]),
    )


def hf_config(cfg: ModelConfig, *, bos_id: Optional[int], eos_id: Optional[int], max_positions: int,
              dtype: str = "float32", original: Optional[dict] = None) -> dict:
    """The `config.json` of a `LlamaForCausalLM` with megallm's shape: `original` (the config.json
    of an imported model) with megallm's values set, else a transformers 4 layout config.
    max_position_embeddings: the model config's, else the original's, else `max_positions`."""
    shape = {
        "hidden_size": cfg.hidden_size, "intermediate_size": cfg.ffn_hidden_size,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim, "vocab_size": cfg.vocab_size,
        "rms_norm_eps": cfg.norm_eps, "tie_word_embeddings": cfg.tie_embeddings,
    }
    original_positions = (original or {}).get("max_position_embeddings")
    shape["max_position_embeddings"] = cfg.max_position_embeddings or original_positions or max_positions
    scaling = cfg.rope_scaling.to_dict() if cfg.rope_scaling.scales else None
    if original is not None:
        config = {**original, **_differing_from_absent(shape, original, cfg)}
        if "torch_dtype" in original or "dtype" in original:
            config["torch_dtype" if "torch_dtype" in original else "dtype"] = dtype
        if original.get("rope_parameters") is not None:
            rope = {"rope_type": "default"} if scaling is None else scaling
            theta = {"rope_theta": cfg.rope_theta} if _theta_kept(original, cfg) else {}
            config["rope_parameters"] = {**original["rope_parameters"], **theta, **rope}
        else:
            config["rope_scaling"] = _merged(original.get("rope_scaling"), scaling)
            if _theta_kept(original, cfg):
                config["rope_theta"] = cfg.rope_theta
        return config
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", **shape, "rope_theta": cfg.rope_theta,
        "rope_scaling": scaling, "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
        "initializer_range": cfg.init_std, "torch_dtype": dtype, "bos_token_id": bos_id, "eos_token_id": eos_id,
    }


def _differing_from_absent(shape: dict, original: dict, cfg: ModelConfig) -> dict:
    """The keys of `shape` that `original` has, and those it lacks whose value differs from what a
    reader takes for a missing key (transformers' defaults: head_dim = hidden / heads, key/value
    heads = heads, ...): written, they would only add keys the original never had."""
    absent = {**LLAMA_DEFAULTS, "head_dim": cfg.hidden_size // cfg.num_heads, "num_key_value_heads": cfg.num_heads}
    return {key: value for key, value in shape.items()
            if key in original or key not in absent or value != absent[key]}


def _theta_kept(original: dict, cfg: ModelConfig) -> bool:
    """Whether to write rope_theta: the original has it, or megallm's differs from the default a missing one is."""
    return rope_theta_given(original) or cfg.rope_theta != LLAMA_DEFAULTS["rope_theta"]


def _merged(original: Optional[dict], scaling: Optional[dict]) -> Optional[dict]:
    """The original rope_scaling with megallm's values (keeps keys such as "type" that it spelled so)."""
    if scaling is None or original is None:
        return scaling
    merged = {**original, **scaling}
    if "rope_type" not in original and "type" in original:
        merged["type"] = merged.pop("rope_type")
    return merged
