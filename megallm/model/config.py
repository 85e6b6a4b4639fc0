"""ModelConfig: the shape of a Llama-architecture decoder (the `model` config group), and
`Choice`, the base of every config field with a closed set of values.

Kept free of torch and megatron imports so that configs compose and are checked in
well under a second.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from typing import Optional


class Choice(str, Enum):
    """A config value from a closed set: each subclass declares its set, once, beside the field it types.

    OmegaConf then refuses any other value at composition, listing the allowed ones. It reads and
    writes a member by its name (`EnumNode`: `cls[name]`, `to_yaml` writes `.name`), so every member's
    name is its value: YAML files, overrides and the config.yaml of older checkpoints keep the plain
    words (`train.precision: bf16`). Being a `str`, a member equals, hashes and formats as its value
    (`cfg.train.precision == "bf16"`, f"{cfg.train.precision}", JSON). A value that is no identifier
    ("1-sqrt") is declared as the functional API declares any name: `vars()["1-sqrt"] = "1-sqrt"`.
    """

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        return str.__format__(self, spec)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        """The allowed values in their declared order."""
        return tuple(member.value for member in cls)


def plain(value):
    """`value`, or a Choice's value as a plain `str`."""
    return value.value if isinstance(value, Choice) else value


class Recompute(Choice):
    """Activation checkpointing (train.activation_checkpointing), see megallm.model.layers."""

    none = "none"
    full = "full"  # each block reruns in backward (least memory)
    selective = "selective"  # only the core attention reruns (its s x s scores dominate without flash-attn)


class AttentionKernel(Choice):
    """Attention kernels (kernels.attention), see megallm.model.attention."""

    auto = "auto"
    sdpa = "sdpa"
    flex = "flex"
    flash_attn = "flash_attn"


class LossKernel(Choice):
    """How the loss is computed from the final hidden states (kernels.loss), see megallm.model.loss."""

    plain = "plain"
    chunked = "chunked"
    liger = "liger"


class RopeType(Choice):
    """RoPE types megallm computes (transformers' names, modeling_rope_utils.ROPE_INIT_FUNCTIONS):
    "default" is plain RoPE, the others stretch its frequencies."""

    default = "default"
    linear = "linear"
    llama3 = "llama3"


class Pooling(Choice):
    """What a sequence classifier's head reads (model.pooling), see megallm.model.loss.pooling_weights."""

    last = "last"
    mean = "mean"
    first = "first"


@dataclass
class RopeScaling:
    """How RoPE frequencies are stretched for contexts beyond pretraining (`model.rope_scaling`).

    Fields and meaning as in transformers' `rope_parameters` / `rope_scaling`
    (megallm.model.layers.rotary_frequencies computes them):
    - "default": no scaling (plain RoPE; the other fields are unused);
    - "linear": every frequency divided by `factor` (positions compressed by `factor`);
    - "llama3" (Llama 3.1 and later): wavelengths longer than
      original_max_position_embeddings / low_freq_factor divided by `factor`, shorter than
      original_max_position_embeddings / high_freq_factor kept, smoothly interpolated between.
    """

    rope_type: RopeType = RopeType.default
    factor: float = 1.0
    low_freq_factor: Optional[float] = None  # llama3 only
    high_freq_factor: Optional[float] = None  # llama3 only
    original_max_position_embeddings: Optional[int] = None  # llama3 only: the context of pretraining

    def problems(self) -> list[str]:
        if self.rope_type == RopeType.default:
            return []
        problems = [] if self.factor > 0 else [f"model.rope_scaling.factor must be positive, got {self.factor}"]
        if self.rope_type == RopeType.llama3:
            for key in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
                value = getattr(self, key)
                if value is None or value <= 0:
                    problems.append(f"model.rope_scaling.{key} must be positive for rope_type llama3, got {value}")
            high, low = self.high_freq_factor, self.low_freq_factor
            if not problems and high is not None and low is not None and high <= low:
                problems.append(f"model.rope_scaling.high_freq_factor={self.high_freq_factor} must exceed "
                                f"low_freq_factor={self.low_freq_factor}")
        return problems

    @property
    def scales(self) -> bool:
        return self.rope_type != RopeType.default

    def to_dict(self) -> dict:
        """The transformers `rope_parameters` fields that apply to this type (without rope_theta)."""
        keys = {"default": ("rope_type",), "linear": ("rope_type", "factor")}.get(self.rope_type,
                                                                                 tuple(dataclasses.asdict(self)))
        return {key: plain(getattr(self, key)) for key in keys}


@dataclass
class ModelConfig:
    """Shape of a Llama-architecture decoder (the `model` group of the Hydra config)."""

    name: str = "custom"
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    # Key/value heads for grouped-query attention; None means num_heads (plain multi-head).
    num_kv_heads: Optional[int] = None
    ffn_hidden_size: int = 768
    # None: taken from the tokenizer of the prepared data (see megallm.cli.pretrain.resolve_vocab).
    vocab_size: Optional[int] = None
    tie_embeddings: bool = False
    rope_theta: float = 10000.0
    # RoPE scaling of Llama 3.1+ (rope_type "llama3") or "linear"; "default": plain RoPE.
    rope_scaling: RopeScaling = dataclasses.field(default_factory=RopeScaling)
    # The context the model is made for (config.json's max_position_embeddings, kept on export);
    # None: the training sequence length. Attention itself has no limit.
    max_position_embeddings: Optional[int] = None
    norm_eps: float = 1e-5
    init_std: float = 0.02
    # The embedding table is padded to a multiple of this times the tensor-parallel degree
    # (Megatron's default 128: whole 64-wide tiles for GEMMs, even shards for TP).
    make_vocab_size_divisible_by: int = 128
    # An encoder: every token attends to the whole sequence (its document, with document masking),
    # as masked-language-model pretraining needs (train.objective=mlm sets it). No Hugging Face Llama
    # equivalent: such a model is not exported to transformers.
    bidirectional: bool = False
    # BERT's next-sentence-prediction head on the first position (pooler + 2-way classifier; mlm.nsp sets it).
    nsp_head: bool = False
    # A sequence classifier (launch/finetune.py finetune.task=classify): a head of num_labels classes replaces
    # the language-model output; 0: a language model. `pooling` picks what it reads: "last" (the last token:
    # a decoder's summary of the sequence), "mean" (every token), "first" (the token at position 0).
    num_labels: int = 0
    pooling: Pooling = Pooling.last

    def __post_init__(self):
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_heads
        if isinstance(self.rope_scaling, dict) or self.rope_scaling is None:  # as read from JSON
            self.rope_scaling = RopeScaling(**(self.rope_scaling or {}))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def check(self) -> list[str]:
        """Problems with this shape, each a sentence; empty when the shape is valid."""
        problems = []
        for field in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "ffn_hidden_size"):
            if getattr(self, field) <= 0:
                problems.append(f"model.{field} must be positive, got {getattr(self, field)}")
        if problems:
            return problems
        if self.hidden_size % self.num_heads:
            problems.append(
                f"model.hidden_size={self.hidden_size} is not divisible by model.num_heads={self.num_heads}"
            )
        elif self.head_dim % 2:
            problems.append(f"head dim {self.head_dim} must be even for rotary embeddings")
        if self.num_kv_heads is not None and self.num_heads % self.num_kv_heads:
            problems.append(
                f"model.num_heads={self.num_heads} is not divisible by model.num_kv_heads={self.num_kv_heads}"
            )
        if self.vocab_size is not None and self.vocab_size <= 0:
            problems.append(f"model.vocab_size must be positive, got {self.vocab_size}")
        if self.nsp_head and not self.bidirectional:
            problems.append("model.nsp_head=true needs model.bidirectional=true (next-sentence prediction is an "
                            "encoder's task: train.objective=mlm mlm.nsp=true)")
        if self.num_labels < 0 or self.num_labels == 1:
            problems.append(f"model.num_labels must be 0 (a language model) or at least 2, got {self.num_labels}")
        if self.max_position_embeddings is not None and self.max_position_embeddings <= 0:
            problems.append(f"model.max_position_embeddings must be positive, got {self.max_position_embeddings}")
        problems += self.rope_scaling.problems()
        return problems

    def to_dict(self) -> dict:
        """The shape in plain values (a choice as its string): it goes into JSON, config.json and
        consolidated.pt, which `torch.load(weights_only=True)` reads without megallm."""
        return dataclasses.asdict(self, dict_factory=lambda items: {key: plain(value) for key, value in items})


@dataclass
class KernelConfig:
    """How the model computes (the `kernels` group): the fast path on GPUs, each part switchable.

    None of these changes the model's parameters or checkpoints; each changes the numbers
    only within floating-point rounding (tested against the plain path). The defaults are
    the plain path, which every device runs.
    """

    # auto: flash-attn on CUDA (bf16/fp16) when installed, FlexAttention on CUDA for masked
    # documents, SDPA otherwise; or force "sdpa", "flex" or "flash_attn".
    attention: AttentionKernel = AttentionKernel.auto
    # torch.compile each transformer block (fuses RMSNorm, RoPE and SwiGLU's elementwise work).
    compile: bool = False
    # plain: logits of the whole micro-batch in fp32, then cross-entropy. chunked: logits and
    # cross-entropy `loss_chunk_tokens` positions at a time, recomputed in backward, so the full
    # [tokens, vocab] fp32 logits never exist. liger: liger-kernel's fused linear cross-entropy
    # (CUDA, tensor parallelism 1, needs `pip install liger-kernel`).
    loss: LossKernel = LossKernel.plain
    loss_chunk_tokens: int = 2048


def padded_vocab_size(vocab_size: int, divisible_by: int, tp: int = 1) -> int:
    multiple = divisible_by * tp
    return -(-vocab_size // multiple) * multiple
