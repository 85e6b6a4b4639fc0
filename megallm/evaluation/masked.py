"""Masked-token accuracy of an encoder (train.objective=mlm) on a prepared corpus, against the unigram baseline.

`masked_accuracy(checkpoint, corpus)` reads the validation windows of the corpus (megallm.data.loader.
EvalBatches: window `g` of the split in manifest order is global sample `g`, as the run's own
evaluation reads them) and corrupts them with the run's own rule: megallm.train.build.run_objective
with the checkpoint's config.yaml (`mlm.*`, `train.seed`, `data.document_masking`, `mlm.nsp`) and
the corpus manifest's mask / end- / start-of-document ids (megallm.data.masking: which positions
are selected depends on (seed, sample) alone). The encoder reads the corrupted windows (documents
attend only within themselves when the run masked them) and is scored on the selected positions:

- accuracy: argmax of the logits == the original token, over every selected position; split by what
  the encoder saw there: the mask token (`mask`; with the rare random draw of the mask token), the
  original token (`kept`: BERT's 10% left alone, with random draws of the same token), another
  token (`random`);
- mlm_loss: the mean cross-entropy (nats) over the selected positions: over the same windows it is
  the run's `val_loss` (without mlm.nsp; with it, val_loss adds the next-sentence loss, reported
  apart under `nsp`).

The unigram baseline is what a model that ignores the context does best: always predict the
most frequent token of the corpus's train split that is not a document-framing token (end- or
start-of-document, never selected) nor the mask token (never in a document). Its accuracy is
taken on the same selected positions; its cross-entropy uses the unigram distribution of the
train split's counts with add-one smoothing over the tokens that can be selected,
p(t) = (count(t) + 1) / (N + V), N the train tokens that are not framing or mask tokens and V
the vocabulary less those tokens.

Entry point: `python tools/evaluate.py CHECKPOINT --masked-accuracy CORPUS [--batches N] [--output JSON]`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from megallm.config import RunConfig, config_from_yaml
from megallm.data.corpus import Corpus, open_corpus
from megallm.data.loader import EvalBatches, read_shard_tokens
from megallm.data.shards import Manifest
from megallm.engine.objective import ModelInputs, Objective
from megallm.errors import CheckpointError, UsageError
from megallm.evaluation.model import resolve_device, resolve_dtype
from megallm.files import TOKENIZER_FILE
from megallm.model.loss import Targets
from megallm.run_layout import RUN_CONFIG_FILE

if TYPE_CHECKING:  # annotations only: the model is built where megatron-core is imported (deferred)
    from megallm.model.llama import LlamaModel


# ---- the checkpoint -------------------------------------------------------------------------------
def encoder_run(path: Path) -> tuple[Path, RunConfig, str]:
    """(the checkpoint folder, its run config, its tokenizer's sha256) of an MLM checkpoint at `path` (a
    checkpoint, run or checkpoints folder); a CheckpointError for anything else, before any weight is read."""
    # deferred: the checkpoint reader imports DeepSpeed, which reads the accelerator when first imported
    from megallm.parallel.distributed import select_deepspeed_accelerator

    select_deepspeed_accelerator()
    # deferred: imports DeepSpeed, after the accelerator is chosen
    from megallm.checkpoint.convert import is_hf_folder, resolve_checkpoint
    from megallm.checkpoint.state import read_state

    path = Path(path)
    if not path.exists():
        raise UsageError(f"checkpoint {path} does not exist")
    if is_hf_folder(path):
        raise CheckpointError(f"{path} is a Hugging Face Llama folder, a causal language model, not an encoder; "
                              "masked-token accuracy needs a megallm checkpoint trained with train.objective=mlm")
    checkpoint = resolve_checkpoint(path)
    state = read_state(checkpoint)
    if not state.model.get("bidirectional"):
        raise CheckpointError(f"{checkpoint} is not an encoder: it is a causal language model (train.objective="
                              "causal); masked-token accuracy needs a checkpoint trained with train.objective=mlm")
    config = checkpoint / RUN_CONFIG_FILE
    if not config.is_file():
        raise CheckpointError(f"{checkpoint} has no {RUN_CONFIG_FILE}: its masking settings (mlm.*) are unknown")
    cfg, _ = config_from_yaml(config.read_text(), {"model": state.model})
    return checkpoint, cfg, state.tokenizer_sha256


# ---- the unigram baseline ------------------------------------------------------------------------
def token_counts(corpus: Corpus, split: str) -> np.ndarray:
    """How often each token id occurs in the documents of `split` (int64 [vocab_size])."""
    vocab = corpus.manifest.vocab_size
    counts = np.zeros(vocab, dtype=np.int64)
    for info in corpus.manifest.splits[split]:
        tokens = read_shard_tokens(corpus.url(info.path), info, vocab)  # checked against the manifest
        counts += np.bincount(tokens.astype(np.int64), minlength=vocab)
    return counts


@dataclass(frozen=True)
class Unigram:
    """The context-free predictor: its guess, and log p(t) (add-one smoothing; -inf off its support)."""

    top_id: int
    log_probs: torch.Tensor  # [vocab] float64
    train_tokens: int  # N: counted tokens on the support

    @classmethod
    def from_counts(cls, counts: np.ndarray, excluded: set[int]) -> Unigram:
        support = np.ones(len(counts), dtype=bool)
        support[sorted(excluded)] = False
        on_support = np.where(support, counts, 0)
        n = int(on_support.sum())
        log_probs = np.full(len(counts), -np.inf)
        log_probs[support] = np.log(on_support[support] + 1.0) - math.log(n + int(support.sum()))
        return cls(int(np.argmax(np.where(support, counts, -1))), torch.from_numpy(log_probs), n)


def excluded_ids(manifest: Manifest) -> set[int]:
    """Tokens that are never scored: end- and start-of-document (never selected), the mask token."""
    return {t for t in (manifest.eos_id, manifest.bos_id, manifest.mask_id) if t is not None}


# ---- scoring --------------------------------------------------------------------------------------
@dataclass
class Tally:
    """Sums over the scored (selected) positions."""

    selected: int = 0
    correct: int = 0
    nll: float = 0.0  # the encoder's, nats
    by_input: dict = dataclasses.field(default_factory=lambda: {k: [0, 0] for k in ("mask", "kept", "random")})
    unigram_correct: int = 0
    unigram_nll: float = 0.0
    nsp_windows: int = 0
    nsp_correct: int = 0
    nsp_nll: float = 0.0

    def add(self, logits: torch.Tensor, batch: ModelInputs, mask_id: int, unigram: Unigram) -> None:
        """logits [s, b, vocab (padded)] of `batch`."""
        targets = batch.targets
        assert isinstance(targets, Targets) and targets.loss_mask is not None, "a masked-LM batch"
        selected = targets.loss_mask  # [b, s]
        labels = targets.labels[selected]
        scored = logits.transpose(0, 1)[selected].float()  # [n, vocab]
        hits = scored.argmax(-1) == labels
        seen = batch.tokens[selected]
        kinds = {"mask": seen == mask_id, "kept": seen == labels}
        kinds["random"] = ~(kinds["mask"] | kinds["kept"])
        for kind, where in kinds.items():
            self.by_input[kind][0] += int(where.sum())
            self.by_input[kind][1] += int((hits & where).sum())
        self.selected += len(labels)
        self.correct += int(hits.sum())
        self.nll += float(F.cross_entropy(scored, labels, reduction="sum"))
        self.unigram_correct += int((labels == unigram.top_id).sum())
        self.unigram_nll -= float(unigram.log_probs[labels.cpu()].sum())

    def add_nsp(self, nsp_logits: torch.Tensor, nsp_labels: torch.Tensor) -> None:
        self.nsp_windows += len(nsp_labels)
        self.nsp_correct += int((nsp_logits.argmax(-1) == nsp_labels).sum())
        self.nsp_nll += float(F.cross_entropy(nsp_logits.float(), nsp_labels, reduction="sum"))


def _ratio(a: float, b: int) -> Optional[float]:
    return a / b if b else None


def evaluation_objective(cfg: RunConfig, manifest: Manifest, seed: Optional[int]) -> Objective:
    """The run's objective (megallm.train.build.run_objective) on this corpus, its seed replaced if given."""
    # deferred: megallm.train.build imports DeepSpeed (encoder_run chose its accelerator first)
    from megallm.train.build import run_objective

    objective = run_objective(cfg, manifest)
    return objective if seed is None else dataclasses.replace(objective, seed=seed)


def score_windows(model: LlamaModel, windows: EvalBatches, batches: int, objective: Objective,
                  unigram: Unigram, log: Callable[[str], None]) -> Tally:
    tally, began = Tally(), time.perf_counter()
    assert objective.masking is not None, "a masked-LM objective"
    for index in range(batches):
        batch = objective.inputs(windows.micro_batch(index), windows.samples(index))
        with torch.no_grad():
            tally.add(model(batch.tokens, doc_ids=batch.doc_ids), batch, objective.masking.mask_id, unigram)
            nsp_labels = getattr(batch.targets, "nsp_labels", None)
            if objective.nsp and model.nsp_head is not None and nsp_labels is not None:
                tally.add_nsp(model.nsp_head.logits(model.hidden_states(batch.tokens, batch.doc_ids)), nsp_labels)
        if (index + 1) % 20 == 0 or index + 1 == batches:
            log(f"{index + 1}/{batches} micro-batches, {tally.selected:,} positions scored, "
                f"{time.perf_counter() - began:.1f} s")
    return tally


def report(tally: Tally, unigram: Unigram, tok_text: str) -> dict:
    """The numbers of `tally` (see the module docstring)."""
    n = tally.selected
    out = {
        "selected": n, "correct": tally.correct, "accuracy": _ratio(tally.correct, n),
        "mlm_loss": _ratio(tally.nll, n),
        "mask_positions": tally.by_input["mask"][0], "mask_correct": tally.by_input["mask"][1],
        "mask_accuracy": _ratio(tally.by_input["mask"][1], tally.by_input["mask"][0]),
        "by_input": {kind: {"positions": p, "correct": c, "accuracy": _ratio(c, p)}
                     for kind, (p, c) in tally.by_input.items()},
        "unigram": {"token_id": unigram.top_id, "token": tok_text, "train_tokens": unigram.train_tokens,
                    "correct": tally.unigram_correct, "accuracy": _ratio(tally.unigram_correct, n),
                    "cross_entropy": _ratio(tally.unigram_nll, n)},
    }
    if tally.nsp_windows:
        out["nsp"] = {"windows": tally.nsp_windows, "correct": tally.nsp_correct,
                      "accuracy": _ratio(tally.nsp_correct, tally.nsp_windows),
                      "loss": _ratio(tally.nsp_nll, tally.nsp_windows)}
    return out


def token_text(corpus: Corpus, token_id: int) -> str:
    """The token's string in the corpus's tokenizer."""
    return Tokenizer.from_str(corpus.tokenizer_files()[TOKENIZER_FILE]).id_to_token(token_id) or f"<id {token_id}>"


# ---- the whole evaluation ---------------------------------------------------------------------------
def masked_accuracy(checkpoint_or_run: str | Path, corpus_path: str | Path, split: str = "val",
                    batches: Optional[int] = None, seq_len: Optional[int] = None, seed: Optional[int] = None,
                    micro_batch_size: Optional[int] = None, device: str = "cpu", dtype: str = "fp32",
                    log: Callable[[str], None] = lambda _: None) -> dict:
    """Masked-token accuracy, MLM loss and the unigram baseline of the MLM checkpoint at `checkpoint_or_run`
    on `batches` micro-batches of `split` of the corpus at `corpus_path` (default: every window of the split
    once, a last partial micro-batch left out); see the module docstring. `seq_len`, `seed`, `micro_batch_size`
    default to the run's (train.*; the micro-batch size groups windows into next-sentence pairs only); a
    `seq_len` beyond the run's train.seq_len is refused (positions the encoder never trained on)."""
    checkpoint, cfg, tokenizer_sha256 = encoder_run(Path(checkpoint_or_run))
    seq_len, mbs = seq_len or cfg.train.seq_len, micro_batch_size or cfg.train.micro_batch_size
    if seq_len < 1 or mbs < 1 or (batches is not None and batches < 1):
        raise UsageError("the sequence length, micro-batch size and number of batches must be >= 1")
    if seq_len > cfg.train.seq_len:
        raise UsageError(f"--seq-len {seq_len} is beyond the {cfg.train.seq_len} tokens {checkpoint} was trained at "
                         f"(train.seq_len): the encoder would extrapolate to positions it never trained on; pass "
                         f"--seq-len {cfg.train.seq_len} or less")
    corpus = open_corpus(str(corpus_path), None, (cfg.data.train_split, split))
    if tokenizer_sha256 not in ("", corpus.manifest.tokenizer_sha256):
        raise UsageError(f"corpus {corpus_path} was prepared with another tokenizer than {checkpoint} was trained "
                         "with; evaluate on a corpus prepared with the run's tokenizer")
    objective = evaluation_objective(cfg, corpus.manifest, seed)
    dev, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    windows = EvalBatches(corpus, split, seq_len=seq_len, micro_batch_size=mbs, dp_rank=0, dp=1, device=dev)
    batches = batches or max(1, windows.order.epoch_samples // mbs)
    if batches * mbs > windows.order.epoch_samples:
        log(f"{batches * mbs} windows asked of split {split!r}, which holds {windows.order.epoch_samples}: "
            "windows are read again (masked anew: another sample index)")
    log(f"counting the tokens of split {cfg.data.train_split!r} for the unigram baseline")
    unigram = Unigram.from_counts(token_counts(corpus, cfg.data.train_split), excluded_ids(corpus.manifest))
    tally = _score_checkpoint(checkpoint, windows, batches, objective, unigram, dev, torch_dtype, log)
    return {"checkpoint": str(checkpoint), "corpus": str(corpus_path), "split": split, "seq_len": seq_len,
            "micro_batch_size": mbs, "batches": batches, "windows": batches * mbs,
            "split_windows": windows.order.epoch_samples, "seed": objective.seed,
            "mlm": dataclasses.asdict(cfg.mlm), "document_masking": cfg.data.document_masking,
            "mask_id": objective.masking.mask_id if objective.masking else None, **report(tally, unigram, token_text(corpus, unigram.top_id))}


def _score_checkpoint(checkpoint: Path, windows: EvalBatches, batches: int, objective: Objective, unigram: Unigram,
                      device: torch.device, dtype: torch.dtype, log: Callable[[str], None]) -> Tally:
    # deferred: imports DeepSpeed (encoder_run chose its accelerator first)
    from megallm.checkpoint.convert import read_model
    from megallm.model.weights import model_from_weights
    from megallm.parallel.distributed import distributed

    weights, model_cfg, _ = read_model(checkpoint)  # before the process group: it may start the layout's ranks
    with distributed(deepspeed=False):
        model = model_from_weights(weights, model_cfg, device, dtype)
        del weights
        return score_windows(model, windows, batches, objective, unigram, log)


def summary(result: dict) -> str:
    """The results in three lines: the encoder, the unigram baseline, next-sentence prediction (if any)."""
    r, u = result, result["unigram"]
    lines = [(f"masked-token accuracy {r['accuracy']:.4f} ({r['correct']:,}/{r['selected']:,} selected positions "
              f"of {r['windows']:,} windows), on [MASK] positions {r['mask_accuracy']:.4f} "
              f"({r['mask_correct']:,}/{r['mask_positions']:,}); MLM loss {r['mlm_loss']:.4f}"),
             (f"unigram baseline (always {u['token']!r}, id {u['token_id']}): accuracy {u['accuracy']:.4f} "
              f"({u['correct']:,}/{r['selected']:,}); cross-entropy {u['cross_entropy']:.4f}")]
    if "nsp" in result:
        n = result["nsp"]
        lines.append(f"next-sentence accuracy {n['accuracy']:.4f} ({n['correct']}/{n['windows']}), "
                     f"loss {n['loss']:.4f}")
    return "\n".join(lines)

