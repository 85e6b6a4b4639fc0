"""Tokenizers: byte-level BPEs trained locally with Hugging Face `tokenizers`, or any fast
tokenizer read from a `tokenizer.json`; and which special tokens frame a document.

A tokenizer's identity is the SHA-256 of its canonical JSON: the manifest, the config
check and every checkpoint record it, so a corpus, a model and a checkpoint made with
different tokenizers never meet silently. Nothing is downloaded.

Special tokens (`special_tokens`): a document is `[bos] + text + [eos]`.
- eos, the end-of-document token: `--eos-token` if given, else the `eos_token` that
  `tokenizer_config.json` or `special_tokens_map.json` beside the tokenizer.json declares
  (`</s>` in Llama 2, `<|end_of_text|>` in Llama 3), else megallm's own `<|endoftext|>`.
- bos: the token the tokenizer's post-processor puts in front of a text when it adds
  special tokens (Llama 2's `<s>`, Llama 3's `<|begin_of_text|>`), so continued
  pretraining sees documents as the model saw them; None for megallm's own tokenizers,
  whose documents begin after the previous document's eos.
- mask, the token masked-language modelling puts in place of hidden tokens
  (train.objective=mlm; never in a document): `--mask-token` if given (added to a tokenizer
  that lacks it), else the `mask_token` the Hugging Face files declare (BERT's `[MASK]`,
  RoBERTa's `<mask>`), else megallm's own `<|mask|>`, which every tokenizer megallm trains
  has; None when there is none.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from megallm.errors import DataError
from megallm.files import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, TOKENIZER_SIDE_FILES

EOS_TOKEN = "<|endoftext|>"
MASK_TOKEN = "<|mask|>"
# Files that may declare the special tokens, in the order Hugging Face reads them.
_DECLARING_FILES = (TOKENIZER_CONFIG_FILE, "special_tokens_map.json")
_PROBE_TEXT = "a"  # any text: what the post-processor adds around it shows its bos


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE (GPT-2 style) with two special tokens: the end-of-document marker (id 0)
    and the mask token of masked-language modelling (id 1)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, MASK_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is encodable
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"tokenizer file {path} does not exist; give the tokenizer.json the corpus was prepared with")
    return Tokenizer.from_file(str(path))


def tokenizer_hash(tok: Tokenizer) -> str:
    return hashlib.sha256(tok.to_str().encode()).hexdigest()


@dataclass(frozen=True)
class SpecialTokens:
    eos_id: int  # ends every document
    bos_id: Optional[int] = None  # begins every document, when the tokenizer adds one

    @property
    def document_start_id(self) -> int:
        """The token a document (and a prompt) begins after or with: bos, else megallm's eos
        (megallm.model.packing: this token starts a segment)."""
        return self.bos_id if self.bos_id is not None else self.eos_id


def declared_token(tokenizer_file: Path, key: str) -> Optional[str]:
    """`key` ("eos_token", "bos_token") as the Hugging Face files beside `tokenizer_file` declare it."""
    for name in _DECLARING_FILES:
        path = Path(tokenizer_file).with_name(name)
        if path.is_file():
            value = json.loads(path.read_text()).get(key)
            if isinstance(value, dict):  # {"content": "</s>", "lstrip": false, ...}
                value = value.get("content")
            if value:
                return value
    return None


def prepended_token(tok: Tokenizer) -> Optional[int]:
    """The one token the post-processor puts before a text (bos), or None."""
    plain = tok.encode(_PROBE_TEXT, add_special_tokens=False).ids
    full = tok.encode(_PROBE_TEXT).ids
    start = next((i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain), 0)
    return full[0] if start == 1 else None


def special_tokens(tokenizer_file: str | Path, eos_token: Optional[str] = None,
                   tok: Optional[Tokenizer] = None) -> SpecialTokens:
    """The document's special tokens for the tokenizer at `tokenizer_file` (see the module docstring);
    DataError when no end-of-document token can be found."""
    tokenizer_file = Path(tokenizer_file)
    tok = tok or load_tokenizer(tokenizer_file)
    name = eos_token or declared_token(tokenizer_file, "eos_token")
    if name is None and tok.token_to_id(EOS_TOKEN) is not None:
        name = EOS_TOKEN
    if name is None:
        raise DataError(f"tokenizer {tokenizer_file} declares no end-of-document token (no eos_token in "
                        f"{' or '.join(_DECLARING_FILES)} beside it, no {EOS_TOKEN}); pass --eos-token TOKEN")
    eos = tok.token_to_id(name)
    if eos is None:
        raise DataError(f"end-of-document token {name!r} is not in tokenizer {tokenizer_file}; "
                        "pass --eos-token with one of its tokens")
    return SpecialTokens(eos_id=eos, bos_id=prepended_token(tok))


def mask_token_id(tokenizer_file: str | Path, tok: Optional[Tokenizer] = None) -> Optional[int]:
    """The id of the tokenizer's mask token (see the module docstring), or None when it has none."""
    tok = tok or load_tokenizer(tokenizer_file)
    name = declared_token(Path(tokenizer_file), "mask_token") or MASK_TOKEN
    return tok.token_to_id(name)


def add_mask_token(tok: Tokenizer, name: str) -> bool:
    """Give `tok` the special token `name` (for masked-language modelling) unless it has it; whether it was added."""
    if tok.token_to_id(name) is not None:
        return False
    tok.add_special_tokens([AddedToken(name, special=True, normalized=False)])
    return True



def tokenizer_files(tokenizer_file: str | Path) -> dict[str, str]:
    """{name: text} of a tokenizer.json (saved as tokenizer.json) and the side files beside it."""
    tokenizer_file = Path(tokenizer_file)
    files = {TOKENIZER_FILE: tokenizer_file.read_text()}
    for name in TOKENIZER_SIDE_FILES:
        if tokenizer_file.with_name(name).is_file():
            files[name] = tokenizer_file.with_name(name).read_text()
    return files
