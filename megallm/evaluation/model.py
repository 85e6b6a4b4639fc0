"""The model side of evaluation: one causal LM, loaded once, that scores, generates and embeds text.

`EvalModel.load(path)` reads a megallm checkpoint of any layout or a Hugging Face Llama folder
(megallm.checkpoint.convert.read_model: a sharded checkpoint starts its layout's ranks to gather
the weights, before this process starts its own world of one) with its tokenizer. What it computes:

- `loglikelihood(pairs)`: for each (context, continuation), the sum over the continuation's tokens
  of log p(token | all before it), and whether each of them is the argmax (greedy). The pair is
  split as lm-evaluation-harness does for causal models (`TemplateLM._encode_pair`): trailing
  whitespace of the context moves to the continuation, the whole text is encoded once and the
  continuation is what follows the context's own encoding, so that a merge across the boundary
  goes the way the whole text tokenizes. An empty context is the start token alone.
  Where one token of the whole text spans the boundary and takes the whole continuation
  ('def main(' + '):' as 'def', ' main', '():'), that cut leaves the continuation no token
  (lm-eval 0.4's `hf` model then stops the run on an assertion or, where its logits cache serves
  the request from another of the same context, scores it 0: probability 1, a wrong number): the
  continuation then begins at that token, the first that holds any of its characters, and the
  context keeps the tokens before it; so the context loses its last token to the continuation. An empty continuation has
  probability 1: log-likelihood 0, greedy. A continuation longer than max_length tokens is scored
  in windows of max_length predictions (`windows`), as loglikelihood_rolling scores a text. What
  was adjusted is said in one line through `log`; no request stops the others.
- `loglikelihood_rolling(texts)`: the log-likelihood of every token of each text, given the start
  token, in lm-eval's rolling windows (`rolling_requests`: the stride = window case of `windows`,
  on which perplexity builds).
- `token_logprobs(rows)`: log p(row[i] | row[:i]) for i >= 1.
- `generate(prompts, max_new_tokens, stop)`: greedy completions over the KV cache
  (megallm.inference.generate), cut before the first stop string.
- `embed(texts)`: the final hidden states (after the last norm) averaged over the text's tokens,
  L2-normalised: a text's vector for choosing demonstrations by similarity.

Every input begins with `start`: by default the tokenizer's document start token
(megallm.data.tokenizer.SpecialTokens.document_start_id: Llama 3's <|begin_of_text|>, megallm's
<|endoftext|>, after which its documents begin), as tools/generate.py feeds prompts; this is what
lm-eval's `hf` model feeds with `add_bos_token=True` on a folder exported by tools/convert_ckpt.py.
start="tokenizer" puts only what the tokenizer's post-processor adds (Llama 3's bos, nothing for
megallm's tokenizers: `hf`'s default); "none" nothing.

`max_length`, the longest input fed at once, is the context the model was trained at
(megallm.inference.context: a checkpoint's train.seq_len, a Hugging Face folder's
max_position_embeddings); a longer one is refused, never extrapolated to. Inputs longer than
max_length tokens keep their last max_length + 1 tokens, as lm-eval does.
Batches are right-padded: attention is causal, so padding after a row's tokens changes none of
its logits.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np
import torch
from tokenizers import Tokenizer

from megallm.data.tokenizer import SpecialTokens, load_tokenizer, special_tokens
from megallm.errors import DataError, UsageError
from megallm.files import TOKENIZER_FILE
from megallm.inference.context import TrainedContext, trained_context

if TYPE_CHECKING:  # annotations only: the model code imports megatron-core, which `load` defers
    from megallm.model.llama import LlamaModel

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
STARTS = ("document", "tokenizer", "none")
DEFAULT_MAX_LENGTH = 2048  # an EvalModel built directly; `load` takes the trained context

Request = tuple[list[int], list[int]]  # (context ids, continuation ids)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise UsageError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def resolve_device(device: str) -> torch.device:
    """"auto": cuda when available, else cpu."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device}: no CUDA device is available (this torch build or machine has none)")
    return torch.device(device)


def split_pair(context: str, continuation: str) -> tuple[str, str]:
    """lm-eval's rule: the context's trailing whitespace belongs to the continuation."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        return context[:-spaces], context[-spaces:] + continuation
    return context, continuation


def windows(stream: Sequence[int], first: int, length: int, stride: Optional[int] = None) -> list[Request]:
    """Requests that predict stream[first:] (first >= 1), every token once, none fed more than `length`
    tokens: Hugging Face's sliding-window recipe ("Perplexity of fixed-length models"). A window spans
    length + 1 tokens (fed `length`, each predicting the next) and they move by `stride` (1 .. length,
    default length): window k begins at b_k = b_0 + k * stride (b_0 = max(0, first + stride - length - 1):
    0 when scoring begins at the stream's second token, as in Hugging Face's loop), ends at
    e_k = min(b_k + length + 1, len(stream)) and predicts stream[e_(k-1):e_k] (stream[first:e_0] for the
    first), the tokens before them in its span being context; every prediction after the first window
    sees at least length - stride tokens. The window that reaches the end keeps a full span of input
    (it begins at e_k - length - 1, as lm-eval's last rolling window does; Hugging Face's loop begins it
    at b_k, giving its predictions less context). stride = length: lm-eval's disjoint rolling windows."""
    stride = length if stride is None else stride
    if not 1 <= stride <= length or first < 1:
        raise ValueError(f"windows need 1 <= stride <= length and first >= 1, got stride {stride}, length {length}, "
                         f"first {first}")
    span = length + 1
    requests: list[Request] = []
    begin, done = max(0, first + stride - span), first
    while done < len(stream):
        end = min(begin + span, len(stream))
        requests.append((list(stream[max(0, end - span):done]), list(stream[done:end])))
        done, begin = end, begin + stride
    return requests


def rolling_requests(tokens: list[int], prefix: int, max_length: int) -> list[Request]:
    """lm-eval's rolling windows (get_rolling_token_windows, context_len=1, made disjoint): every token
    of `tokens` is predicted once. Window k predicts tokens [k*L, (k+1)*L) (L = max_length) from the
    L tokens before each, [prefix] standing before the first; the last, shorter window keeps a full
    L tokens of input, so its first predictions see the end of the previous window."""
    return windows([prefix] + list(tokens), 1, max_length)


@dataclass
class EvalModel:
    """A loaded model, its tokenizer and how inputs begin; see the module docstring."""

    model: LlamaModel  # eval mode (during training: megallm.evaluation.during_training.WholeVocabulary over one)
    tokenizer: Tokenizer
    tokenizer_file: Path
    special: SpecialTokens
    source: str = ""
    start: str = "document"
    max_length: int = DEFAULT_MAX_LENGTH
    batch_size: int = 8
    trained: Optional[TrainedContext] = None  # the context the model was trained at (max_length's bound)
    log: Callable[[str], None] = field(default=lambda _: None, repr=False)  # what loglikelihood adjusted
    _world: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, repr=False)

    # ---- loading --------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", dtype: str | torch.dtype = "fp32",
             tokenizer: Optional[str | Path] = None, batch_size: int = 8, start: str = "document",
             max_length: Optional[int] = None, log: Callable[[str], None] = lambda _: None) -> EvalModel:
        """The model at `path` (a megallm checkpoint, run or checkpoints folder, or a Hugging Face
        Llama folder) on `device` in `dtype` ("fp32", "bf16"); `tokenizer` overrides its tokenizer.json.
        Starts a world of one process (kept until `close`) unless one is up."""
        # deferred: DeepSpeed reads the accelerator when first imported (the checkpoint reader imports it)
        from megallm.parallel.distributed import distributed, select_deepspeed_accelerator

        select_deepspeed_accelerator()
        # deferred: imports DeepSpeed, after the accelerator is chosen
        from megallm.checkpoint.convert import read_model
        from megallm.model.weights import model_from_weights

        if start not in STARTS:
            raise UsageError(f"start {start!r} is not one of {', '.join(STARTS)}")
        if batch_size < 1:
            raise UsageError(f"batch size must be >= 1, got {batch_size}")
        path, dtype, on = Path(path), resolve_dtype(dtype), resolve_device(device)
        if not path.exists():
            raise UsageError(f"model {path} does not exist")
        trained = trained_context(path)
        if max_length is None:
            max_length = trained.tokens
        elif not 1 <= max_length <= trained.tokens:
            raise UsageError(f"max_length {max_length} is not within 1 .. {trained.describe(str(path))}: positions "
                             f"past those were never trained; pass max_length <= {trained.tokens}")
        began = time.perf_counter()
        weights, cfg, tokenizer_file = read_model(path)  # before the process group: it may start ranks
        if cfg.bidirectional:
            raise UsageError(f"{path} is a bidirectional encoder (train.objective=mlm): it does not predict the "
                             "next token, so it cannot be scored as a causal language model")
        if cfg.num_labels:
            raise UsageError(f"{path} is a sequence classifier (launch/finetune.py finetune.task=classify): it has "
                             "no language-model output to score; its validation scores are in its metrics.jsonl")
        if tokenizer and not Path(tokenizer).is_file():
            raise UsageError(f"tokenizer {tokenizer} does not exist")
        tokenizer_file = Path(tokenizer) if tokenizer else tokenizer_file
        if tokenizer_file is None or not tokenizer_file.is_file():
            raise UsageError(f"no {TOKENIZER_FILE} found with {path}; pass --tokenizer FILE")
        tok = load_tokenizer(tokenizer_file)
        try:
            special = special_tokens(tokenizer_file, tok=tok)
        except DataError as exc:
            raise UsageError(f"{exc} (evaluation needs it to begin inputs and stop generations)") from None
        world = contextlib.ExitStack()
        world.enter_context(distributed(deepspeed=False))
        try:
            model = model_from_weights(weights, cfg, on, dtype)
        except BaseException:
            world.close()
            raise
        params = sum(p.numel() for p in model.parameters())
        log(f"{path}: {params / 1e6:.1f}M parameters on {on}, {str(dtype).removeprefix('torch.')}, "
            f"ready in {time.perf_counter() - began:.1f} s")
        return cls(model, tok, tokenizer_file, special, str(path), start, max_length, batch_size, trained, log, world)

    def close(self) -> None:
        """Shut down the world of one that `load` started (none if one was up before)."""
        self._world.close()

    def __enter__(self) -> EvalModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- tokens ---------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.embedding.weight.device

    @property
    def vocab_size(self) -> int:
        assert self.model.cfg.vocab_size is not None, "a built model knows its vocabulary"
        return self.model.cfg.vocab_size

    @property
    def prefix_token_id(self) -> int:
        """The token an empty context is: the document start."""
        return self.special.document_start_id

    @property
    def start_ids(self) -> list[int]:
        if self.start == "document":
            return [self.special.document_start_id]
        if self.start == "tokenizer" and self.special.bos_id is not None:
            return [self.special.bos_id]
        return []

    def encode(self, text: str) -> list[int]:
        """The text's tokens, no special tokens added."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def encode_pair(self, context: str, continuation: str) -> Request:
        """(context ids, continuation ids) as lm-eval's causal models split them (module docstring)."""
        return self._encode_pair(context, continuation)[0]

    def _encode_pair(self, context: str, continuation: str) -> tuple[Request, bool]:
        """encode_pair's request, and whether a token spans the boundary (the continuation then begins at it)."""
        if context == "":
            ids = self.encode(continuation)
            return (([self.prefix_token_id], ids) if ids[:1] != [self.prefix_token_id] else (ids[:1], ids[1:])), False
        context, continuation = split_pair(context, continuation)
        whole = self.tokenizer.encode(context + continuation, add_special_tokens=False)
        cut = len(self.encode(context))
        spans = cut >= len(whole.ids) and continuation != ""
        if spans:  # the first token holding a character of the continuation; none: it has no token
            cut = next((i for i, (_, end) in enumerate(whole.offsets) if end > len(context)), len(whole.ids))
        ids = self.start_ids + whole.ids
        cut += len(self.start_ids)
        return (ids[:cut] or [self.prefix_token_id], ids[cut:]), spans

    # ---- scoring --------------------------------------------------------------------------------
    def loglikelihood(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """(log p(continuation | context), greedy) of each pair; a pair over max_length + 1 tokens keeps
        its last max_length + 1 (lm-eval's left truncation), a continuation over max_length tokens is
        scored in windows; what was adjusted is said through `log` (module docstring)."""
        per_pair, spanning, empty, long = [], [], 0, 0
        for context, continuation in pairs:
            (context_ids, continuation_ids), spans = self._encode_pair(context, continuation)
            spanning += [(context, continuation)] if spans else []
            empty += not continuation_ids
            long += len(continuation_ids) > self.max_length
            per_pair.append(windows(context_ids + continuation_ids, len(context_ids), self.max_length)
                            if continuation_ids else [])
        scores = self.score_windows(per_pair)
        n = len(pairs)
        if spanning:
            context, continuation = spanning[0]
            self.log(f"{len(spanning)} of {n} continuations share a token with their context (e.g. "
                     f"{context[-24:]!r} + {continuation!r}): each is scored from that token on, the context "
                     "keeping the tokens before it")
        if empty:
            self.log(f"{empty} of {n} continuations have no token: log-likelihood 0 (probability 1), greedy")
        if long:
            self.log(f"{long} of {n} continuations are longer than the {self.max_length}-token context: scored in "
                     f"windows of {self.max_length} predictions, as loglikelihood_rolling scores a text")
        return scores

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[float]:
        """Each text's log-likelihood: all its tokens, given the start token (module docstring)."""
        per_text = [rolling_requests(self.encode(text), self.prefix_token_id, self.max_length) for text in texts]
        return [logprob for logprob, _ in self.score_windows(per_text)]

    def score_windows(self, groups: Sequence[Sequence[Request]]) -> list[tuple[float, bool]]:
        """For each group of requests (the windows of one text or continuation), the sum of their
        log-probabilities and whether every token was the argmax: (0.0, True) for an empty group. All
        requests are scored in one pass, batched across groups."""
        owners = [i for i, group in enumerate(groups) for _ in group]
        totals, greedy = [0.0] * len(groups), [True] * len(groups)
        for owner, (logprob, top) in zip(owners, self.score([r for group in groups for r in group])):
            totals[owner] += logprob
            greedy[owner] = greedy[owner] and top
        return list(zip(totals, greedy))

    def score(self, requests: Sequence[Request], progress: Optional[Callable[[int], None]] = None
              ) -> list[tuple[float, bool]]:
        """(sum of the continuation's log-probabilities, whether each continuation token is the argmax) of
        token requests, each fed whole (context + continuation, as long as the caller made it);
        `progress(n)` after each batch of n requests."""
        logprobs, greedy = self._continuations(requests, progress)
        return [(float(lp.sum(dtype=np.float64)), bool(g.all())) for lp, g in zip(logprobs, greedy)]

    def token_logprobs(self, rows: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """For each row of ids (at most max_length + 1 of them): log p(row[i] | row[:i]), i = 1 .. len - 1."""
        too_long = [len(r) for r in rows if len(r) > self.max_length + 1]
        if too_long:
            raise ValueError(f"a row of {too_long[0]} tokens exceeds max_length + 1 = {self.max_length + 1}")
        return self._continuations([(list(r[:1]), list(r[1:])) for r in rows])[0]

    def _continuations(self, requests: Sequence[Request], progress: Optional[Callable[[int], None]] = None
                       ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per request, the log-probabilities [n] of its n continuation tokens and whether each is the argmax."""
        rows = []
        for context, continuation in requests:
            if not context or not continuation:
                raise ValueError("a request needs a context and a continuation token at least")
            rows.append(list(context) + list(continuation))
        logprobs: list = [None] * len(rows)
        greedy: list = [None] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))  # longest first: little padding
        for first in range(0, len(order), self.batch_size):
            batch = order[first:first + self.batch_size]
            lp, top = self._row_logprobs([rows[i] for i in batch])
            for i, row_lp, row_top in zip(batch, lp, top):
                n = len(requests[i][1])
                logprobs[i], greedy[i] = row_lp[-n:], row_top[-n:]
            if progress:
                progress(len(batch))
        return logprobs, greedy

    def _row_logprobs(self, rows: list[list[int]]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """One forward over right-padded rows: per row, log p(row[i] | row[:i]) and argmax == row[i], i >= 1."""
        width = max(len(r) for r in rows) - 1
        tokens = torch.zeros(len(rows), width + 1, dtype=torch.long)
        for r, row in enumerate(rows):
            tokens[r, :len(row)] = torch.tensor(row)
        tokens = tokens.to(self.device)
        with torch.inference_mode():
            logits = self.model(tokens[:, :-1]).transpose(0, 1)[..., :self.vocab_size].float()  # [b, s, vocab]
            targets = tokens[:, 1:]  # [b, s]
            chosen = logits.gather(-1, targets[..., None])[..., 0] - logits.logsumexp(-1)
            top = logits.argmax(-1) == targets
        chosen, top = chosen.cpu().numpy(), top.cpu().numpy()
        return [chosen[r, :len(row) - 1] for r, row in enumerate(rows)], [top[r, :len(row) - 1]
                                                                         for r, row in enumerate(rows)]

    # ---- generation and embeddings --------------------------------------------------------------
    def generate(self, prompts: Sequence[str], max_new_tokens: int, stop: Sequence[str] = ("\n\n",),
                 temperature: float = 0.0, seed: int = 0) -> list[str]:
        """Each prompt's completion (greedy unless temperature > 0), ended by the end-of-document token
        or max_new_tokens and cut before the first of the `stop` strings. The prompt keeps its last
        max_length - max_new_tokens tokens (as lm-eval's `hf` model); where max_new_tokens leaves it none,
        the generation runs past max_length, said through `log`."""
        # deferred: megallm.inference imports megatron-core's layers through the model
        from megallm.inference.generate import generate

        if max_new_tokens >= self.max_length:
            self.log(f"{max_new_tokens} new tokens run past the {self.max_length}-token context: each prompt keeps "
                     "its last token, and positions beyond the context are extrapolated")
        keep = max(1, self.max_length - max_new_tokens)
        fed = [(self.start_ids + self.encode(p))[-keep:] for p in prompts]
        fed = [ids or [self.prefix_token_id] for ids in fed]
        order = sorted(range(len(fed)), key=lambda i: -len(fed[i]))
        out: list = [None] * len(fed)
        for first in range(0, len(order), self.batch_size):
            batch = order[first:first + self.batch_size]
            new = generate(self.model, [fed[i] for i in batch], max_new_tokens, temperature=temperature,
                           eos_id=self.special.eos_id, seed=seed + first)
            for i, ids in zip(batch, new):
                out[i] = cut_at_stop(self.decode(ids), stop)
        return out

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), hidden] float32: each text's final hidden states (start token excluded, unless
        the text has no token) averaged, then scaled to unit length."""
        rows = [(self.start_ids + self.encode(t))[-self.max_length:] for t in texts]
        skip = [min(len(self.start_ids), len(r) - 1) if r else 0 for r in rows]
        rows = [r or [self.prefix_token_id] for r in rows]
        out = np.zeros((len(rows), self.model.cfg.hidden_size), dtype=np.float32)
        captured = []
        hook = self.model.final_norm.register_forward_hook(lambda _m, _i, output: captured.append(output))
        try:
            for first in range(0, len(rows), self.batch_size):
                batch = list(range(first, min(first + self.batch_size, len(rows))))
                width = max(len(rows[i]) for i in batch)
                tokens = torch.zeros(len(batch), width, dtype=torch.long)
                mask = torch.zeros(len(batch), width)
                for r, i in enumerate(batch):
                    tokens[r, :len(rows[i])] = torch.tensor(rows[i])
                    mask[r, skip[i]:len(rows[i])] = 1.0
                captured.clear()
                with torch.inference_mode():
                    self.model(tokens.to(self.device))
                    hidden = captured[0].transpose(0, 1).float().cpu()  # [s, b, h] -> [b, s, h]
                mean = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
                out[batch] = torch.nn.functional.normalize(mean, dim=-1).numpy()
        finally:
            hook.remove()
        return out


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to the first occurrence of any stop string."""
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]
