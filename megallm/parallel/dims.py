"""ParallelDims: how a run's ranks are split, the one layout type of megallm.

world = tp x pp x dp. Ranks are numbered tensor-parallel fastest, then data-parallel,
then pipeline: megatron-core's order, which DeepSpeed's `PipeModelDataParallelTopology`
(axes pipe, data, model) shares, so a rank's coordinates are

    tp_rank = rank % tp,  dp_rank = rank // tp % dp,  pp_rank = rank // (tp * dp)

and the tensor-parallel ranks of a group are neighbours (keep tp within a node). ZeRO
shards over the dp ranks. The config checks, the distributed context, a checkpoint's
state, the conversions and the logs all use this type and its one printed form,
`TP=2 x PP=2 x DP=1 ZeRO-1`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple, Optional

from megallm.model.config import ModelConfig

ZERO_STAGES = (0, 1, 2, 3)
# How problems name each degree: the config's keys, or the options of tools/convert_ckpt.py.
CONFIG_KEYS = {"tp": "parallel.tp", "pp": "parallel.pp", "dp": "data-parallel ranks",
               "zero_stage": "parallel.zero_stage"}
CLI_OPTIONS = {"tp": "--tp", "pp": "--pp", "dp": "--dp", "zero_stage": "--zero-stage"}


class RankCoordinates(NamedTuple):
    tp: int
    dp: int
    pp: int


@dataclass(frozen=True)
class ParallelDims:
    tp: int = 1  # tensor-parallel degree: heads, FFN and vocabulary split (megatron-core layers)
    pp: int = 1  # pipeline-parallel degree: layers cut into stages (DeepSpeed PipelineModule)
    dp: int = 1  # data-parallel degree: replicas, over which ZeRO shards
    zero_stage: int = 0  # DeepSpeed ZeRO stage over the data-parallel ranks

    @classmethod
    def for_world(cls, world_size: int, tp: int = 1, pp: int = 1, zero_stage: int = 0) -> ParallelDims:
        """The layout of `world_size` ranks with these model-parallel degrees (dp is what is left).
        Call `problems` first: a world that tp x pp does not divide raises ValueError here."""
        if tp < 1 or pp < 1 or world_size % (tp * pp):
            raise ValueError(f"{world_size} rank(s) cannot be split into tp x pp = {tp} x {pp} groups")
        return cls(tp=tp, pp=pp, dp=world_size // (tp * pp), zero_stage=zero_stage)

    @classmethod
    def from_dict(cls, layout: dict) -> ParallelDims:
        """From a checkpoint's `layout` entry (its keys are this class's fields)."""
        return cls(**{k: int(v) for k, v in layout.items() if k in ("tp", "pp", "dp", "zero_stage")})

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.dp

    def coordinates(self, rank: int) -> RankCoordinates:
        return RankCoordinates(tp=rank % self.tp, dp=rank // self.tp % self.dp, pp=rank // (self.tp * self.dp))

    def rank(self, tp: int = 0, dp: int = 0, pp: int = 0) -> int:
        """The global rank at these coordinates."""
        return tp + self.tp * (dp + self.dp * pp)

    def __str__(self) -> str:
        return f"TP={self.tp} x PP={self.pp} x DP={self.dp} ZeRO-{self.zero_stage}"

    def options(self) -> str:
        """The layout as `tools/convert_ckpt.py` options."""
        return f"--tp {self.tp} --pp {self.pp} --dp {self.dp} --zero-stage {self.zero_stage}"

    def only_replicas_differ(self, other: ParallelDims) -> bool:
        """Without ZeRO every data-parallel rank holds the whole optimizer state, so a run may
        resume on another number of replicas (its data position is a global sample count)."""
        same_model_split = (self.tp, self.pp, self.zero_stage) == (other.tp, other.pp, other.zero_stage)
        return same_model_split and self.zero_stage == 0

    @staticmethod
    def problems(model: ModelConfig, tp: int, pp: int, zero_stage: int, world_size: Optional[int],
                 names: dict[str, str] = CONFIG_KEYS) -> list[str]:
        """What stops this split of `model` over `world_size` ranks (None: any multiple of tp x pp),
        each a sentence naming the degrees as `names` spells them."""
        n = names
        problems = []
        if zero_stage not in ZERO_STAGES:
            problems.append(f"{n['zero_stage']} must be 0, 1, 2 or 3, got {zero_stage}")
        if tp < 1 or pp < 1:
            return problems + [f"{n['tp']} and {n['pp']} must be >= 1, got tp={tp} pp={pp}"]
        if tp > 1:
            assert model.num_kv_heads is not None  # ModelConfig.__post_init__ fills None with num_heads
            if model.num_kv_heads % tp:
                problems.append(
                    f"{n['tp']}={tp} does not divide model.num_kv_heads={model.num_kv_heads}: each tensor-parallel "
                    f"rank must own whole key/value heads; use a tp that divides {model.num_kv_heads}")
            if model.num_heads % tp or model.ffn_hidden_size % tp:
                problems.append(f"{n['tp']}={tp} must divide model.num_heads={model.num_heads} and "
                                f"model.ffn_hidden_size={model.ffn_hidden_size}")
        if pp > model.num_layers:
            problems.append(f"{n['pp']}={pp} is more stages than model.num_layers={model.num_layers}")
        if pp > 1 and zero_stage >= 2:
            problems.append(
                f"{n['zero_stage']}={zero_stage} cannot be combined with {n['pp']}={pp}: DeepSpeed's pipeline "
                "engine accumulates gradients over micro-batches itself, which ZeRO-2/3 gradient partitioning "
                f"does not support; use {n['zero_stage']}=1 (or 0) with pipeline parallelism")
        if world_size is not None and world_size % (tp * pp):
            problems.append(f"{world_size} rank(s) cannot be split into {n['tp']} x {n['pp']} = {tp} x {pp} "
                            f"groups; launch a multiple of {tp * pp} ranks or change the layout")
        return problems
