"""megallm weights <-> Hugging Face Llama (`LlamaForCausalLM`) tensors, config and folder.

Both directions work on the canonical single-process weights (megallm.model.llama's
names, vocabulary rows trimmed to `model.vocab_size`), which any layout consolidates to
(megallm.checkpoint.portable). What needs care, and is done here only:
- QKV: megallm keeps one matrix whose rows are grouped per key/value head,
  `[q heads of group g | k_g | v_g]` for each group g (so TP splits whole groups);
  Hugging Face keeps `q_proj`, `k_proj`, `v_proj` with heads in order.
- gate/up: megallm's `gate_up` is `[gate; up]`; Hugging Face has `gate_proj`, `up_proj`.
- Rotary: both use the "rotate half" convention, so no permutation of q/k rows.
- Tied embeddings: `tie_word_embeddings` and no `lm_head.weight`. A tied folder whose file
  also holds an `lm_head.weight` is read when that equals the embeddings, and refused
  when it differs: the folder then does not say which is the output layer (transformers 5
  uses the file's head, a tied model the embeddings).
- Vocabulary padding (megallm pads rows for TP): trimmed on export, restored by the
  model builder on import.
config.json is megallm.checkpoint.hf_config's; reading one that leaves out a setting
transformers defaults and that changes the logits (Llama 2's missing `rope_theta`) says
so in one line. A config.json, generation_config.json or safetensors file that does not
parse is a one-line ConversionError naming it. A folder's own files besides the weights
travel with the model: the tokenizer files (tokenizer.json and its side files, kept
beside the tokenizer in corpora and checkpoints) and `HF_MODEL_FILES` (config.json,
generation_config.json: kept in the checkpoint's RunState.hf_model_files), so an export
of an imported model keeps its special token ids, chat template and config.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Callable, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from megallm.checkpoint.hf_config import defaulted_settings, hf_config, model_config_from_hf
from megallm.data.tokenizer import SpecialTokens, special_tokens
from megallm.errors import ConversionError, DataError
from megallm.files import HF_CONFIG_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, TOKENIZER_SIDE_FILES, writing_folder
from megallm.model.config import ModelConfig

HF_INDEX_FILE = "model.safetensors.index.json"
GENERATION_CONFIG_FILE = "generation_config.json"
HF_MODEL_FILES = (HF_CONFIG_FILE, GENERATION_CONFIG_FILE)  # JSON files about the model, kept by an import


def _split_qkv(qkv: torch.Tensor, cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    assert cfg.num_kv_heads is not None  # ModelConfig.__post_init__ fills None with num_heads
    d, groups, per_group = cfg.head_dim, cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads
    grouped = qkv.view(groups, per_group + 2, d, cfg.hidden_size)
    q = grouped[:, :per_group].reshape(cfg.num_heads * d, cfg.hidden_size)
    k = grouped[:, per_group].reshape(groups * d, cfg.hidden_size)
    v = grouped[:, per_group + 1].reshape(groups * d, cfg.hidden_size)
    return q, k, v


def _join_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    assert cfg.num_kv_heads is not None  # ModelConfig.__post_init__ fills None with num_heads
    d, groups, per_group = cfg.head_dim, cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads
    h = cfg.hidden_size
    grouped = torch.cat([q.reshape(groups, per_group, d, h), k.reshape(groups, 1, d, h),
                         v.reshape(groups, 1, d, h)], dim=1)
    return grouped.reshape(groups * (per_group + 2) * d, h)


# Tensors that only change name: canonical megallm name <-> Hugging Face name.
_RENAMED = {"embedding.weight": "model.embed_tokens.weight", "final_norm.weight": "model.norm.weight",
            "output.weight": "lm_head.weight"}
_RENAMED_IN_BLOCK = {"attn_norm": "input_layernorm", "attn.out": "self_attn.o_proj",
                     "mlp_norm": "post_attention_layernorm", "mlp.down": "mlp.down_proj"}


def _renamed(cfg: ModelConfig) -> dict[str, str]:
    """{megallm name: Hugging Face name} of every tensor that is only renamed."""
    names = {ours: theirs for ours, theirs in _RENAMED.items() if ours != "output.weight" or not cfg.tie_embeddings}
    for i in range(cfg.num_layers):
        names.update({f"blocks.{i}.{ours}.weight": f"model.layers.{i}.{theirs}.weight"
                      for ours, theirs in _RENAMED_IN_BLOCK.items()})
    return names


def to_hf_state_dict(weights: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Canonical megallm weights -> `LlamaForCausalLM` state dict (new tensors, contiguous)."""
    out = {theirs: weights[ours] for ours, theirs in _renamed(cfg).items()}
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        if name in out:
            out[name] = out[name][: cfg.vocab_size]
    for i in range(cfg.num_layers):
        src, dst = f"blocks.{i}", f"model.layers.{i}"
        q, k, v = _split_qkv(weights[f"{src}.attn.qkv.weight"], cfg)
        gate, up = weights[f"{src}.mlp.gate_up.weight"].chunk(2, dim=0)
        out.update({f"{dst}.self_attn.q_proj.weight": q, f"{dst}.self_attn.k_proj.weight": k,
                    f"{dst}.self_attn.v_proj.weight": v, f"{dst}.mlp.gate_proj.weight": gate,
                    f"{dst}.mlp.up_proj.weight": up})
    return {name: tensor.detach().clone().contiguous() for name, tensor in out.items()}


def from_hf_state_dict(hf: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """`LlamaForCausalLM` state dict -> canonical megallm weights (inverse of `to_hf_state_dict`)."""
    out = {ours: hf[theirs] for ours, theirs in _renamed(cfg).items()}
    for i in range(cfg.num_layers):
        src, dst = f"model.layers.{i}", f"blocks.{i}"
        attn, mlp = f"{src}.self_attn", f"{src}.mlp"
        out[f"{dst}.attn.qkv.weight"] = _join_qkv(hf[f"{attn}.q_proj.weight"], hf[f"{attn}.k_proj.weight"],
                                                 hf[f"{attn}.v_proj.weight"], cfg)
        out[f"{dst}.mlp.gate_up.weight"] = torch.cat([hf[f"{mlp}.gate_proj.weight"], hf[f"{mlp}.up_proj.weight"]])
    return {name: tensor.detach().clone().contiguous() for name, tensor in out.items()}


def to_hf_names(cfg: ModelConfig) -> list[str]:
    """Every tensor name of a `LlamaForCausalLM` of this shape."""
    names = list(_renamed(cfg).values())
    for i in range(cfg.num_layers):
        names += [f"model.layers.{i}.{n}.weight"
                  for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")]
    return names


def write_hf_folder(weights: dict[str, torch.Tensor], cfg: ModelConfig, out: Path, *, tokenizer_file: Path,
                    max_positions: int, original: Optional[dict] = None, max_shard_bytes: int = 2 << 30) -> Path:
    """Write a `from_pretrained`-loadable folder: config, generation config, sharded safetensors with
    an index, the tokenizer with its side files. `original`: the imported model's HF_MODEL_FILES
    ({name: JSON}), kept with megallm's values set; `max_positions`: max_position_embeddings when
    the model config has none. Written to `<out>.partial` and published: no half-written output."""
    out = Path(out)
    if out.exists():
        raise ConversionError(f"{out} exists already; choose a new output folder or remove it")
    original = original or {}
    tokens = _special_tokens_or_none(tokenizer_file)
    bos = tokens.document_start_id if tokens else None  # megallm's own tokenizers: documents begin after eos
    eos = tokens.eos_id if tokens else None
    tensors = to_hf_state_dict(weights, cfg)
    shards: list[dict[str, torch.Tensor]] = []
    current: dict[str, torch.Tensor] = {}
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = tensor
        size += nbytes
    shards.append(current)
    index: dict[str, dict] = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
             "weight_map": {}}
    dtype = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    config = hf_config(cfg, bos_id=bos, eos_id=eos, max_positions=max_positions, dtype=dtype,
                       original=original.get(HF_CONFIG_FILE))
    generation = original.get(GENERATION_CONFIG_FILE) or {"bos_token_id": bos, "eos_token_id": eos, "do_sample": False}
    with writing_folder(out) as partial:
        for i, shard in enumerate(shards):
            file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(partial / file), metadata={"format": "pt"})
            index["weight_map"].update({name: file for name in shard})
        (partial / HF_INDEX_FILE).write_text(json.dumps(index, indent=1))
        (partial / HF_CONFIG_FILE).write_text(json.dumps(config, indent=1))
        (partial / GENERATION_CONFIG_FILE).write_text(json.dumps(generation, indent=1))
        shutil.copyfile(tokenizer_file, partial / TOKENIZER_FILE)
        for name in TOKENIZER_SIDE_FILES:
            if Path(tokenizer_file).with_name(name).is_file():
                shutil.copyfile(Path(tokenizer_file).with_name(name), partial / name)
        if not (partial / TOKENIZER_CONFIG_FILE).is_file():
            (partial / TOKENIZER_CONFIG_FILE).write_text(json.dumps(_tokenizer_config(tokenizer_file, bos, eos),
                                                                    indent=1))
    return out


def _special_tokens_or_none(tokenizer_file: Path) -> Optional[SpecialTokens]:
    try:
        return special_tokens(tokenizer_file)
    except DataError:  # a tokenizer that names no end-of-document token: the config says none
        return None


def _tokenizer_config(tokenizer_file: Path, bos_id: Optional[int], eos_id: Optional[int]) -> dict:
    """tokenizer_config.json for a tokenizer.json that came without one (megallm's own)."""
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1 << 30,
              "clean_up_tokenization_spaces": False}
    added = {t["id"]: t["content"] for t in json.loads(Path(tokenizer_file).read_text()).get("added_tokens", [])}
    for key, token_id in (("bos_token", bos_id), ("eos_token", eos_id)):
        if token_id in added:
            config[key] = added[token_id]
    return config


def read_json(path: Path) -> dict:
    """A Hugging Face folder's JSON file (an object, as config.json and generation_config.json are);
    ConversionError naming it when it does not parse or holds another JSON value."""
    try:
        fields = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConversionError(f"{path} is not valid JSON ({exc}): it is damaged or was cut short; "
                              "download or write it again") from None
    if not isinstance(fields, dict):
        raise ConversionError(f"{path} holds a JSON {type(fields).__name__}, not an object of settings; "
                              "download or write it again")
    return fields


def read_hf_model_files(folder: Path) -> dict:
    """{name: JSON} of the folder's HF_MODEL_FILES that exist (kept by an import, used by its export)."""
    return {name: read_json(Path(folder) / name) for name in HF_MODEL_FILES if (Path(folder) / name).is_file()}


def read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except SafetensorError as exc:
        raise ConversionError(f"{file} is not a readable safetensors file ({exc}): it is damaged or was cut short; "
                              "download or write it again") from None


def _notice(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def read_hf_folder(folder: Path, log: Callable[[str], None] = _notice) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """A Hugging Face Llama folder -> (canonical megallm weights, ModelConfig); `log` gets a line naming
    the settings config.json leaves out and megallm reads as transformers' defaults."""
    folder = Path(folder)
    if not (folder / HF_CONFIG_FILE).is_file():
        raise ConversionError(f"{folder} is not a Hugging Face model folder ({HF_CONFIG_FILE} missing)")
    config = read_json(folder / HF_CONFIG_FILE)
    cfg = model_config_from_hf(config)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConversionError(f"{folder} holds no .safetensors weights; save the model with safe_serialization=True")
    hf = {}
    for file in files:
        hf.update(read_safetensors(file))
    missing = [n for n in to_hf_names(cfg) if n not in hf]
    if missing:
        raise ConversionError(f"{folder} lacks {len(missing)} tensor(s) a Llama of this config has, e.g. {missing[0]}")
    _check_tied_head(hf, cfg, folder)
    defaulted = defaulted_settings(config)
    if defaulted:  # said once the folder is read: an error stays the one line
        log(f"{folder / HF_CONFIG_FILE} leaves out {', '.join(key.split('=')[0] for key in defaulted)}: read as "
            f"{', '.join(defaulted)}, transformers' Llama default{'s' if len(defaulted) > 1 else ''}")
    return from_hf_state_dict(hf, cfg), cfg


def _check_tied_head(hf: dict[str, torch.Tensor], cfg: ModelConfig, folder: Path) -> None:
    """A tied model's file may hold an lm_head.weight only if it is the embeddings (module docstring)."""
    head, embedding = hf.get("lm_head.weight"), hf["model.embed_tokens.weight"]
    if cfg.tie_embeddings and head is not None and not torch.equal(head, embedding):
        raise ConversionError(
            f"{folder}: config.json ties the output layer to the embeddings (tie_word_embeddings true), but the "
            "weights hold an lm_head.weight that differs from model.embed_tokens.weight, so the folder does not say "
            "which is the output layer (transformers 5 uses the file's lm_head.weight, a tied model the "
            "embeddings); set tie_word_embeddings to false to keep that head, or remove lm_head.weight from the "
            "weights to tie")
