"""Tiny Hugging Face Llama folders in the published configurations of two families, built locally
(nothing downloaded) with `transformers` and `tokenizers`:

- "llama3": Llama 3.2-style: llama3 RoPE scaling (with original_max_position_embeddings 32,
  so the scaling matters at short lengths), tied embeddings, grouped-query attention, a
  byte-level BPE whose special tokens `<|begin_of_text|>` / `<|end_of_text|>` come after the
  vocabulary (as 128000 / 128001 do) and whose post-processor prepends `<|begin_of_text|>`
  (ByteLevel + TemplateProcessing, as Llama 3's tokenizer.json), a chat template.
- "llama2": Llama 2-style: plain RoPE, untied, multi-head attention, a SentencePiece-like BPE
  (Metaspace) with `<unk>` / `<s>` / `</s>` at ids 0 / 1 / 2 and a post-processor prepending `<s>`.

`save_family(family, folder, layout)` writes the folder with the config.json layout of
transformers 5 (`rope_parameters`, as the installed transformers writes it) or of
transformers 4 (top-level `rope_theta` / `rope_scaling`, rewritten from it).
`save_published(config, folder)` writes a model with a published config.json as it is
(Llama-2-7b-hf's, sizes shrunk), beside the Llama 2-style tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

FAMILIES = ("llama3", "llama2")
LAYOUTS = ("transformers5", "transformers4")
TEXT = ["def read_config(path):\n    with open(path) as f:\n        return json.load(f)\n",
        "class Model:\n    def forward(self, x):\n        return self.layer(x) + x\n",
        "The quick brown fox jumps over the lazy dog. " * 3,
        "for i in range(10):\n    print(i * i)\n"] * 20
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                 "{{ m['content'] }}<|eot_id|>{% endfor %}")
MODEL = {  # tiny shapes, family features as published
    "llama3": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, tie_word_embeddings=True, rms_norm_eps=1e-5, max_position_embeddings=1024,
                   rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                    "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 32}),
    "llama2": dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=4, tie_word_embeddings=False, rms_norm_eps=1e-5, max_position_embeddings=4096,
                   rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
}
SPECIAL = {"llama3": ("<|begin_of_text|>", "<|end_of_text|>"), "llama2": ("<s>", "</s>")}


def build_tokenizer(family: str):
    """The family's tokenizer (a `tokenizers.Tokenizer`) and its tokenizer_config.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    bos, eos = SPECIAL[family]
    if family == "llama3":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        tok.add_special_tokens([bos, eos, "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"])
        template = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                 special_tokens=[(bos, tok.token_to_id(bos))])
        tok.post_processor = processors.Sequence([processors.ByteLevel(trim_offsets=False), template])
        config = {"bos_token": bos, "eos_token": eos, "chat_template": CHAT_TEMPLATE,
                  "model_max_length": 131072, "tokenizer_class": "PreTrainedTokenizerFast"}
    else:
        tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        tok.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=320, show_progress=False,
                                                          special_tokens=["<unk>", bos, eos]))
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
        config = {"bos_token": bos, "eos_token": eos, "unk_token": "<unk>", "add_bos_token": True,
                  "add_eos_token": False, "model_max_length": 1000000000000000019884624838656,
                  "tokenizer_class": "PreTrainedTokenizerFast"}
    return tok, config


def save_family(family: str, folder: Path, layout: str = "transformers5", seed: int = 0) -> Path:
    """Write the family's tiny model (random weights, norms not all ones) and tokenizer to `folder`."""
    import transformers

    tok = save_tokenizer(family, folder)
    bos, eos = (tok.token_to_id(t) for t in SPECIAL[family])
    save_random_model(transformers.LlamaConfig(vocab_size=tok.get_vocab_size(), bos_token_id=bos, eos_token_id=eos,
                                               **MODEL[family]), folder, seed)
    if layout == "transformers4":
        write_transformers4_layout(folder / "config.json")
    return folder


def save_published(config: dict, folder: Path, dtype: torch.dtype = torch.float16, seed: int = 0) -> Path:
    """A model of a published config.json (`config`, sizes shrunk and vocab_size the Llama 2-style tokenizer's),
    random weights in `dtype`, with that config.json written verbatim (no key added or dropped)."""
    import transformers

    tok = save_tokenizer("llama2", folder)
    assert config["vocab_size"] == tok.get_vocab_size()
    save_random_model(transformers.LlamaConfig(**config), folder, seed, dtype)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def save_tokenizer(family: str, folder: Path):
    """Write the family's tokenizer.json, tokenizer_config.json and special_tokens_map.json; the tokenizer."""
    tok, tokenizer_config = build_tokenizer(family)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": SPECIAL[family][0], "eos_token": SPECIAL[family][1]}, indent=2))
    return tok


def save_random_model(config, folder: Path, seed: int = 0, dtype: torch.dtype = torch.float32) -> None:
    """A `LlamaForCausalLM` of `config` with random weights, norms not all ones and sharp attention, saved."""
    import transformers

    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif "q_proj" in name or "k_proj" in name:
                p.mul_(8.0)  # sharp attention: positions, hence RoPE, matter
    model.to(dtype).save_pretrained(folder)


def write_transformers4_layout(config_file: Path) -> None:
    """Rewrite a transformers 5 config.json with top-level rope_theta / rope_scaling, as transformers 4 wrote it."""
    config = json.loads(config_file.read_text())
    rope = dict(config.pop("rope_parameters"))
    config["rope_theta"] = rope.pop("rope_theta")
    config["rope_scaling"] = None if rope.get("rope_type") == "default" else rope
    if "dtype" in config:
        config["torch_dtype"] = config.pop("dtype")
    config_file.write_text(json.dumps(config, indent=2))
