"""Tokenizers: byte-level BPEs trained locally with Hugging Face `tokenizers`, or any fast
tokenizer read from a `tokenizer.json`; and which special tokens frame a document.

A tokenizer's identity is the SHA-256 of its canonical JSON: the manifest, the config
check and every checkpoint record it, so a corpus, a model and a checkpoint made with
different tokenizers never meet silently. Nothing is downloaded.

Training (`train_bpe`) leaves out of the counts every pre-tokenized word longer than
`MAX_TRAINING_WORD` characters (a run of letters, digits, other symbols or whitespace:
a base64 blob, a line of dashes, a file that is one word). Such a word teaches no merge
worth its cost: the trainer rescans every word that holds a pair at each merge, so a
file of one 2 MB word trained for more than 5 minutes, and 50 MB for hours. The words
are still tokenized, with the merges the rest of the text taught.

Files: a given tokenizer.json travels byte for byte (an older `tokenizers` must still
read what the user gave). A trained one is written with its merges as "a b" strings,
the format Llama 3's and GPT-2's files use, which `tokenizers` before 0.20 (transformers
4.44 and older) read as well as newer ones do; `with_added_token` adds one token to a
given file's JSON and keeps the rest of it.

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
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from megallm.errors import DataError
from megallm.files import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, TOKENIZER_SIDE_FILES

EOS_TOKEN = "<|endoftext|>"
MASK_TOKEN = "<|mask|>"
# Files that may declare the special tokens, in the order Hugging Face reads them.
_DECLARING_FILES = (TOKENIZER_CONFIG_FILE, "special_tokens_map.json")
_PROBE_TEXT = "a"  # any text: what the post-processor adds around it shows its bos
MAX_TRAINING_WORD = 1000  # characters; longer pre-tokenized words are left out of training (module docstring)
# The runs that byte-level pre-tokenization keeps whole (GPT-2's pattern: letters, digits, other symbols,
# whitespace), when longer than MAX_TRAINING_WORD.
_LONG_WORD = Regex("|".join(f"{run}{{{MAX_TRAINING_WORD + 1},}}"
                            for run in (r"\p{L}", r"\p{N}", r"[^\s\p{L}\p{N}]", r"\s")))

Log = Callable[[str], None]


def train_bpe(texts: Iterable[str], vocab_size: int, log: Optional[Log] = None, every: float = 5.0) -> Tokenizer:
    """Train a byte-level BPE (GPT-2 style) with two special tokens: the end-of-document marker (id 0)
    and the mask token of masked-language modelling (id 1). With `log`, a line every `every` seconds
    says how far it got (the text read, then the time spent learning merges)."""
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    # Training only: over-long words are cut out before the byte-level split (module docstring).
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(_LONG_WORD, behavior="removed"), byte_level])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, MASK_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is encodable
        show_progress=False,
    )
    if log is None:
        tok.train_from_iterator(texts, trainer)
    else:
        with TrainingProgress(log, every) as progress:
            tok.train_from_iterator(progress.counted(texts), trainer)
    tok.pre_tokenizer = byte_level
    return tok


class TrainingProgress:
    """Progress lines while `train_from_iterator` runs: it reads the texts (counted here), then learns
    merges with the GIL released, so a thread can report. The start of the merges is always said."""

    def __init__(self, log: Log, every: float):
        self.log, self.every = log, every
        self.characters, self.reading = 0, True
        self.start = time.perf_counter()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._report, name="tokenizer-progress", daemon=True)

    def counted(self, texts: Iterable[str]) -> Iterator[str]:
        for text in texts:
            self.characters += len(text)
            yield text
        self.reading = False
        self.merges_start = time.perf_counter()
        # Said once whatever `every` is: the merges may take longer than the reading did.
        self.log(f"tokenizer: learning merges from {self.characters / 2**20:,.1f} MiB of text "
                 f"(read in {self.merges_start - self.start:,.0f} s)")

    def _report(self) -> None:
        while not self.stopped.wait(self.every):
            if self.reading:
                self.log(f"tokenizer: read {self.characters / 2**20:,.1f} MiB of text "
                         f"({time.perf_counter() - self.start:,.0f} s)")
            else:
                self.log(f"tokenizer: learning merges from {self.characters / 2**20:,.1f} MiB of text "
                         f"({time.perf_counter() - self.merges_start:,.0f} s)")

    def __enter__(self) -> "TrainingProgress":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    if path.is_dir():
        hint = f"; give {path / TOKENIZER_FILE}" if (path / TOKENIZER_FILE).is_file() else ""
        raise DataError(f"tokenizer {path} is a folder, not a tokenizer.json{hint}")
    if not path.is_file():
        raise DataError(f"tokenizer file {path} does not exist; give the tokenizer.json the corpus was prepared with")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for any file it cannot read
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path} is not a tokenizer.json that Hugging Face tokenizers can read ({reason}); "
                        "give the tokenizer.json of a fast tokenizer (a Hugging Face model folder has one)") from None


def tokenizer_json(tok: Tokenizer) -> str:
    """`tok` as a tokenizer.json (indented) that every `tokenizers` release reads: a BPE's merges as
    "a b" strings where no part holds a space (module docstring), else as newer releases write them."""
    data = json.loads(tok.to_str())
    merges = data.get("model", {}).get("merges")
    if merges and all(isinstance(m, list) and " " not in m[0] + m[1] for m in merges):
        data["model"]["merges"] = [f"{a} {b}" for a, b in merges]
    return json.dumps(data, indent=2, ensure_ascii=False)


def with_added_token(original: bytes, tok: Tokenizer, name: str) -> Optional[bytes]:
    """The tokenizer.json `original` with the added token `name` of `tok` (`original` plus that
    token) appended to its added_tokens, every other value as `original` has it (merges in
    its format), indented as it was; None if that does not load as `tok`."""
    entry = next(t for t in json.loads(tok.to_str())["added_tokens"] if t["content"] == name)
    data = json.loads(original)
    data["added_tokens"] = [*data.get("added_tokens", []), entry]
    indented = b"\n" in original.strip()
    text = json.dumps(data, indent=2 if indented else None, ensure_ascii=False,
                      separators=None if indented else (",", ":"))
    return text.encode() if tokenizer_hash(Tokenizer.from_str(text)) == tokenizer_hash(tok) else None


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
            try:
                declared = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise DataError(f"{path} is not valid JSON ({exc}); fix it, or remove it and name the end-of-document "
                                "token with --eos-token") from None
            value = declared.get(key) if isinstance(declared, dict) else None
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


def read_exact_text(path: str | Path) -> str:
    """A UTF-8 file's text with its line endings as they are (written back, it gives the same bytes)."""
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


def tokenizer_files(tokenizer_file: str | Path) -> dict[str, str]:
    """{name: text} of a tokenizer.json (saved as tokenizer.json) and the side files beside it."""
    tokenizer_file = Path(tokenizer_file)
    files = {TOKENIZER_FILE: read_exact_text(tokenizer_file)}
    for name in TOKENIZER_SIDE_FILES:
        if tokenizer_file.with_name(name).is_file():
            files[name] = read_exact_text(tokenizer_file.with_name(name))
    return files
