"""The DeepSpeed engine for a run's layout, behind the calls the loop and the checkpoints make.

- pp == 1: `LlamaModel` (megatron-core TP layers inside) in a `DeepSpeedEngine`, given
  `MegatronMpu` so gradients are averaged, and ZeRO partitions, over the data-parallel
  group only; the loop runs forward/backward per micro-batch.
- pp > 1: the same layer list as a `PipelineModule` in DeepSpeed's `PipelineEngine`,
  which runs its own micro-batch schedule (one micro-batch per accumulation step).
  With document masking the first stage takes `(tokens, doc_ids)` and the stages pass
  `(hidden, doc_ids)` on: DeepSpeed sends tuples of tensors between stages, and
  gradients for the floating-point ones only (none for the int64 doc ids). The last
  stage gets the targets as a tensor or a tuple (megallm.model.loss.Targets).

What the windows are turned into (next-token or masked-LM inputs and targets) is the
run's objective (megallm.engine.objective); masked-LM steps need each row's global sample
index, which the loop passes along with the micro-batches.

Gradient clipping: DeepSpeed clips inside ZeRO and bf16 optimizers and reports the norm.
Without ZeRO in fp32 it clips in `clip_fp32_gradients` and discards the norm, and under
pipeline parallelism counts only the first stage's replicated weights; there megallm
clips itself (`clip_gradients`) and keeps the norm.

Non-finite gradients: an update whose gradient norm is NaN or infinite is never applied,
on every path: DeepSpeed's ZeRO and bf16 optimizers skip it (bf16 under ZeRO-1/2 once
`check_grad_overflow` is on, megallm.engine.deepspeed_config), megallm's own fp32 step
likewise (deepspeed_internals.guard_fp32_step). The norm is the one the clipping already
all-reduces, so this costs no extra communication (fp32 without ZeRO and with
optim.grad_clip=0 computes the norm for it); `update_applied` tells the loop.

State: `save` / `load` write and read this rank's DeepSpeed files (weights, optimizer,
LR schedule); `master` / `set_master` and the optimizer accessors below them give
conversions (megallm.checkpoint.portable) each parameter's fp32 master and Adam state
whatever the ZeRO stage. DeepSpeed's private details stay in deepspeed_internals.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Generic, Iterator, Optional, Sequence, cast

import deepspeed
import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from megallm.config import RunConfig
from megallm.engine import deepspeed_internals as internals
from megallm.engine.deepspeed_config import deepspeed_config
from megallm.engine.objective import MicroBatchT, ModelInputs, Objective, StepObjective
from megallm.engine.pipeline import build_pipeline, canonical_name
from megallm.errors import CheckpointError
from megallm.metrics.step_timer import StepTimer
from megallm.model.llama import LayerDef, LlamaModel, compile_blocks, layer_defs
from megallm.model.loss import ClassTargets, Targets, class_logits
from megallm.optim.adamw import build_optimizer, follow_schedule, keep_run_settings, param_groups
from megallm.parallel.distributed import DistContext
from megallm.parallel.topology import MegatronMpu, check_topology_agreement, deepspeed_topology

ADAM_KEYS = ("exp_avg", "exp_avg_sq")


def clip_gradients(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip to `max_norm` by the global L2 norm over one model replica; returns the norm (a
    0-dim tensor on the device: nothing waits for the device here).

    Each weight counts once: tensor-parallel shards on every TP rank, replicated weights
    on TP rank 0, and a tied weight only on the stage that owns it (DeepSpeed marks the
    other copy). Call after the data-parallel gradient reduction. max_norm 0: the norm only.
    """
    tp_rank = ps.get_tensor_model_parallel_rank()
    squares = torch.zeros((), dtype=torch.float32, device=params[0].device)
    for p in params:  # per tensor: torch._foreach_norm is faster but 6e-5 off (relative) on real gradients here
        if p.grad is None or internals.pipe_replicated(p):
            continue
        if tp_rank == 0 or getattr(p, "tensor_model_parallel", False):
            squares += p.grad.detach().float().pow(2).sum()
    dist.all_reduce(squares, group=ps.get_model_parallel_group())  # the TP x PP ranks of this replica
    norm = squares.sqrt()
    if max_norm > 0:
        # In float64, as a Python float would be; a coefficient of exactly 1 leaves the gradients bitwise unchanged.
        coefficient = (max_norm / (norm.double() + 1e-6)).clamp(max=1.0)
        torch._foreach_mul_([p.grad.detach() for p in params if p.grad is not None], coefficient.float())
    return norm


class ParallelEngine(Generic[MicroBatchT]):
    """The model under DeepSpeed for this rank's layout; steps on the run's micro-batches.

    `objective` (a megallm.engine.objective.StepObjective) turns each micro-batch into the model's
    inputs and targets; the engine never looks inside a micro-batch itself. The default, Objective,
    reads token windows [mbs, seq_len + 1];
    its `segment_start_id` is the token that starts a document in the corpus (its bos, else
    its end-of-document token: megallm.data.shards.Manifest.segment_start_id), so each packed
    document attends only within itself and its positions restart (megallm.model.packing).
    Default: next-token prediction with attention over the whole window.
    """

    def __init__(self, cfg: RunConfig, ctx: DistContext, precision: str,
                 objective: Optional[StepObjective[MicroBatchT]] = None):
        self.ctx, self.dims, self.pipelined = ctx, ctx.dims, ctx.dims.pp > 1
        # Without an objective of its own, a run's micro-batches are token windows (MicroBatchT is torch.Tensor).
        self.objective = objective if objective is not None else cast(StepObjective[MicroBatchT], Objective())
        self.num_labels = cfg.model.num_labels  # a sequence classifier's classes (0: a language model)
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.defs: list[LayerDef] = layer_defs(
            cfg.model, seed=cfg.train.seed, tp_group=ps.get_tensor_model_parallel_group(), params_dtype=dtype,
            recompute=cfg.train.activation_checkpointing, sequence_parallel=cfg.parallel.sequence_parallel,
            attention=cfg.kernels.attention,
        )
        ds_config = deepspeed_config(cfg, self.dims.dp, precision)
        topology = deepspeed_topology(self.dims)
        check_topology_agreement(topology, ctx.rank)
        module: torch.nn.Module
        if self.pipelined:
            module, mpu = build_pipeline(self.defs, topology, cfg.parallel.pipeline_partition, ctx.is_main), None
        else:
            mpu = MegatronMpu()
            with self._partitioned_at_construction(ds_config, mpu):
                module = LlamaModel(cfg.model, self.defs, kernels=cfg.kernels).to(ctx.device)
        if cfg.kernels.compile:
            compile_blocks(module)
        self.peak_lr = cfg.optim.lr
        optimizer, scheduler = build_optimizer(
            param_groups(module, cfg.optim.weight_decay, internals.full_shape), cfg.optim, cfg.train.steps)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=module, optimizer=optimizer, lr_scheduler=scheduler, mpu=mpu, config=ds_config,
            dist_init_required=False,
        )
        self.clips_itself = self.dims.zero_stage == 0 and precision == "fp32"
        self._grad_norm: Optional[torch.Tensor] = None
        if self.clips_itself:
            internals.guard_fp32_step(self.engine, self._clip)

    def _partitioned_at_construction(self, ds_config: dict, mpu):
        """Under ZeRO-3 each layer's weights are partitioned as soon as it is built
        (`deepspeed.zero.Init`), so no rank ever holds the whole model."""
        if self.dims.zero_stage != 3:
            return contextlib.nullcontext()
        return deepspeed.zero.Init(config_dict_or_path=ds_config, mpu=mpu,
                                   data_parallel_group=ps.get_data_parallel_group())

    def _clip(self) -> torch.Tensor:
        self._grad_norm = clip_gradients(list(self.engine.module.parameters()), self.engine.gradient_clipping())
        return self._grad_norm

    @property
    def grad_norm(self) -> float:
        """The last step's global gradient norm (reading it waits for the device: log steps only)."""
        norm = self._grad_norm if self.clips_itself else self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else math.nan

    @property
    def update_applied(self) -> bool:
        """Whether the last optimizer step updated the weights: False when its gradient norm was
        not finite (see the module docstring). A host-side flag: reading it costs no sync."""
        return self.engine.was_step_applied()

    def weights_finite(self) -> bool:
        """Collective: whether every weight the optimizer holds, on every rank, is finite."""
        bad = torch.zeros((), dtype=torch.float64, device=self.ctx.device)
        for tensor in internals.optimized_tensors(self.engine):
            bad += (~torch.isfinite(tensor.detach())).sum()
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        return bad.item() == 0

    @property
    def learning_rate(self) -> float:
        """The LR the next optimizer step applies."""
        return self.scheduler.get_last_lr()[0]

    # ---- steps: `micro_batches` as the run's batches yield them (the objective reads them) ----------
    # `samples`: each micro-batch's rows' global sample indices (masked LM needs them; else optional).
    def _inputs(self, micro_batches: Sequence[MicroBatchT],
                samples: Optional[Sequence[Sequence[int]]]) -> list[ModelInputs]:
        """The model's inputs of a step's micro-batches; with a loss mask, each gets the step's shared
        denominator (megallm.model.loss.Targets): one all-reduce over the data-parallel group, no host sync."""
        rows_of = samples if samples is not None else [None] * len(micro_batches)
        inputs = [self.objective.inputs(batch, rows) for batch, rows in zip(micro_batches, rows_of, strict=True)]
        masks = [mask for batch in inputs if (mask := getattr(batch.targets, "loss_mask", None)) is not None]
        if masks:
            scored = torch.stack([mask.sum() for mask in masks]).sum().to(torch.float32)
            dist.all_reduce(scored, group=ps.get_data_parallel_group())
            denominator = (scored / (self.dims.dp * len(micro_batches))).clamp(min=1e-6)
            for batch in inputs:
                if isinstance(batch.targets, Targets):  # masks come with token targets only
                    batch.targets.denominator = denominator
        return inputs

    def _pipeline_batches(self, inputs: list[ModelInputs]):
        """(first stage's input, last stage's targets) per micro-batch, as DeepSpeed's pipeline takes them."""
        for batch in inputs:
            yield batch.first_stage, batch.targets.as_tuple()

    def _loss(self, batch: ModelInputs) -> torch.Tensor:
        return self.engine(batch.tokens, doc_ids=batch.doc_ids, **batch.targets.as_kwargs())

    def train_step(self, micro_batches: Sequence[MicroBatchT], timer: Optional[StepTimer] = None,
                   samples: Optional[Sequence[Sequence[int]]] = None) -> torch.Tensor:
        """One optimizer step; returns this data-parallel replica's mean loss (no communication, no
        host-device sync). `timer` gets phases forward_backward (gradient reduction included) and
        optimizer; under pipeline parallelism DeepSpeed's schedule interleaves them: all is forward_backward."""
        timer = timer or StepTimer(self.ctx.device)
        inputs = self._inputs(micro_batches, samples)
        if self.pipelined:
            with timer.phase("forward_backward"):
                self.engine.train_batch(self._pipeline_batches(inputs))
            return internals.pipeline_loss(self.engine).double()
        total = torch.zeros((), device=self.ctx.device, dtype=torch.float64)
        for batch in inputs:
            with timer.phase("forward_backward"):
                loss = self._loss(batch)
                self.engine.backward(loss)
            with timer.phase("optimizer"):
                self.engine.step()  # steps the optimizer at the accumulation boundary only
            total += loss.detach()
        return total / len(micro_batches)

    @torch.no_grad()
    def eval_loss(self, micro_batches: Sequence[MicroBatchT],
                  samples: Optional[Sequence[Sequence[int]]] = None) -> float:
        """Mean loss over the micro-batches of every data-parallel replica (collective)."""
        inputs = self._inputs(micro_batches, samples)
        if self.pipelined:
            loss = self.engine.eval_batch(self._pipeline_batches(inputs), num_micro_batches=len(micro_batches))
            self.engine.train()
            return float(loss)
        self.engine.eval()
        start = torch.zeros((), dtype=torch.float64, device=self.ctx.device)  # 0 + x is x: Python's sum, exactly
        total = sum((self._loss(b).double() for b in inputs), start) / len(micro_batches)
        self.engine.train()
        return self.mean_over_data_parallel(total)

    @torch.no_grad()
    def predict(self, micro_batches: Sequence[MicroBatchT]) -> torch.Tensor:
        """A sequence classifier's pooled class logits [rows, classes] (float32) of this data-parallel
        replica's micro-batches, on every rank of the replica (collective under pipeline parallelism:
        the last stage's are broadcast to the others)."""
        inputs = self._inputs(micro_batches, None)
        outputs = []
        self.engine.eval()
        for batch in inputs:
            if self.pipelined:
                logits = self._last_stage_logits(batch)
            else:
                hidden = self.engine(batch.tokens, doc_ids=batch.doc_ids)
                logits = class_logits(hidden, _class_targets(batch).pool_weights)
            outputs.append(logits)
        self.engine.train()
        return torch.cat(outputs)

    def _last_stage_logits(self, batch: ModelInputs) -> torch.Tensor:
        _, logits = self.engine.eval_batch(iter([(batch.first_stage, batch.targets.as_tuple())]), return_logits=True,
                                           num_micro_batches=1)
        rows = len(batch.targets.labels)
        pooled = torch.zeros(rows, self.num_labels, device=self.ctx.device)
        if self.engine.is_last_stage():
            pooled = class_logits(logits, _class_targets(batch).pool_weights)
        dist.broadcast(pooled, src=ps.get_pipeline_model_parallel_last_rank(),
                       group=ps.get_pipeline_model_parallel_group())
        return pooled

    def mean_over_data_parallel(self, value: torch.Tensor) -> float:
        value = value.detach().clone().to(torch.float64)
        dist.all_reduce(value, group=ps.get_data_parallel_group())
        return value.item() / self.dims.dp

    def max_over_ranks(self, value: float) -> float:
        tensor = torch.tensor(float(value), dtype=torch.float64, device=self.ctx.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor.item()

    # ---- state --------------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        """Collective: write this rank's DeepSpeed files (weights, optimizer, LR schedule) into `folder`."""
        self.engine.save_checkpoint(str(folder.parent), tag=folder.name, save_latest=False)

    def load(self, folder: Path, untrained: bool = False) -> None:
        """Collective: read what `save` wrote into `folder`, which must be of this engine's layout.

        untrained: a checkpoint that has not trained yet (step 0, e.g. imported): take its weights
        and optimizer state but keep this run's optimizer hyperparameters and LR schedule. A trained
        one continues at its step on this run's LR schedule and peak LR (the same as the checkpoint's
        unless the run was extended, branched or changed: megallm.optim.schedule.schedule_change)."""
        kept = keep_run_settings(self.optimizer, self.scheduler) if untrained else contextlib.nullcontext()
        with kept:
            loaded, _ = self.engine.load_checkpoint(str(folder.parent), tag=folder.name, load_optimizer_states=True,
                                                    load_lr_scheduler_states=True)
        if loaded is None:
            raise CheckpointError(f"DeepSpeed could not load {folder}: a rank's shard is missing or unreadable")
        if not untrained:
            follow_schedule(self.optimizer, self.scheduler, self.peak_lr)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The torch AdamW (under DeepSpeed's ZeRO or bf16 wrapper, if any)."""
        return internals.torch_optimizer(self.engine)

    def canonical_parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        """(single-process name, this rank's parameter) for every parameter held here, the same
        order on every rank of a stage."""
        for name, p in self.engine.module.named_parameters():
            yield (canonical_name(name, self.defs) if self.pipelined else name), p

    def master(self, param: torch.nn.Parameter, adam_key: Optional[str] = None) -> torch.Tensor:
        """The fp32 master (adam_key None) or Adam state `adam_key` of this rank's tensor-parallel
        shard of `param`, whole over the data-parallel ranks (collective under ZeRO)."""
        value = internals.read_master(param, adam_key, self.optimizer)
        return value.detach().float().reshape(internals.full_shape(param))

    def set_master(self, param: torch.nn.Parameter, adam_key: Optional[str], value: torch.Tensor) -> None:
        """Inverse of `master`: every data-parallel rank passes the same `value` (collective under ZeRO)."""
        value = value.to(device=param.device, dtype=torch.float32).reshape(internals.full_shape(param))
        internals.write_master(param, adam_key, value, self.optimizer)

    def full_shape(self, param: torch.nn.Parameter) -> torch.Size:
        return internals.full_shape(param)

    def has_adam_state(self) -> bool:
        """Whether the optimizer has taken a step (Adam's state exists) on every rank (collective)."""
        state = self.optimizer.state
        flag = torch.tensor([1.0 if state and all(ADAM_KEYS[0] in s for s in state.values()) else 0.0])
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def prepare_adam_state_access(self) -> None:
        """Before reading Adam state per parameter: connect ZeRO's fragments to it."""
        internals.link_fragments_to_adam_state(self.engine)

    def create_adam_state(self, step: int) -> None:
        """Adam's state (zeros, `step` taken) for every tensor the optimizer updates, as its first
        step would create it, so that `set_master` can overwrite it parameter by parameter."""
        for p in internals.optimized_tensors(self.engine):
            self.optimizer.state[p] = {"step": torch.tensor(float(step)), "exp_avg": torch.zeros_like(p),
                                       "exp_avg_sq": torch.zeros_like(p)}
        internals.link_fragments_to_adam_state(self.engine)

    @property
    def optimizer_step(self) -> int:
        """Adam's step count (its bias correction), 0 before the first step."""
        for entry in self.optimizer.state.values():
            if "step" in entry:
                return int(entry["step"])
        return 0

    def set_learning_rate(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    @property
    def step_counters(self) -> dict:
        """DeepSpeed's own step and sample counts (its LR schedule and logs use them)."""
        return internals.step_counters(self.engine)

    def set_step_counters(self, counters: dict) -> None:
        internals.set_step_counters(self.engine, counters)


def _class_targets(batch: ModelInputs) -> ClassTargets:
    """A sequence classifier's targets (predict is for classifiers: megallm.finetune.objectives)."""
    if not isinstance(batch.targets, ClassTargets):
        raise TypeError("predict needs a sequence classifier's micro-batches (ClassTargets)")
    return batch.targets
