"""NanGuard: what a run does after a step whose gradient norm (and so loss) was not finite.

The engine never applies such an update (megallm.engine): the flag it raises is host-side,
set from the norm that gradient clipping already all-reduced, so watching every step costs
no extra communication or host sync, and every rank sees the same flag. Then, by
`nan_guard.policy`:
- stop: log the step and raise DivergenceError (exit code 3) naming it; nothing is saved,
  so the newest checkpoint stays the last good one;
- skip: log it and go on;
- rollback: log it, reload the newest checkpoint that verifies (as a resume chooses it,
  megallm.checkpoint.verify: a damaged newer one is reported and moved aside, or stops the
  run under checkpoint.on_damaged=stop) after the step's hooks ran, and skip the bad step's
  batch when training reaches it again.
More than `max_events` such steps stop the run. `nan_guard.skip_steps` names steps whose
batches are read but not trained on. The steps added by rollbacks are part of the
callback's state, so a resumed run skips them too.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

from megallm.checkpoint.state import complete_checkpoints
from megallm.checkpoint.verify import choose_resume_checkpoint
from megallm.config import NanGuardConfig, step_ranges
from megallm.errors import DivergenceError
from megallm.train.callbacks.base import Callback, StepOutput

if TYPE_CHECKING:  # the trainer imports the callbacks, not the other way round
    from megallm.train.trainer import Trainer


class NanGuard(Callback):
    priority = -100  # post_step after the other callbacks: a rollback comes after the step's records and saves

    def __init__(self, cfg: NanGuardConfig, checkpoints: Path, on_damaged: str = "fallback"):
        self.policy, self.max_events, self.checkpoints = cfg.policy, cfg.max_events, checkpoints
        self.on_damaged = on_damaged
        self.ranges = step_ranges(cfg.skip_steps)
        self.events = 0  # non-finite steps so far
        self.rolled_back_steps: set[int] = set()  # bad steps a rollback skips when they come again
        self._rollback_pending: Optional[int] = None

    def skips(self, step: int) -> bool:
        return step in self.rolled_back_steps or any(first <= step <= last for first, last in self.ranges)

    def pre_step(self, trainer: Trainer) -> None:
        if self.skips(trainer.state.step + 1):
            trainer.skip_batch = True

    def post_train_batch(self, trainer: Trainer, output: StepOutput) -> None:
        if output.applied or output.skipped_batch:
            return
        step, state = trainer.state.step, trainer.state
        self.events += 1
        first_sample = state.consumed_samples - trainer.global_sequences
        trainer.log({"kind": "nonfinite", "step": step, "grad_norm": trainer.engine.grad_norm,
                     "samples": [first_sample, state.consumed_samples], "policy": self.policy})
        newest = complete_checkpoints(self.checkpoints)
        intact = f"the newest checkpoint {newest[-1]} is intact" if newest else "no checkpoint was written yet"
        if self.policy == "stop" or self.events > self.max_events:
            why = (f"nan_guard.policy={self.policy}" if self.policy == "stop"
                   else f"more than nan_guard.max_events={self.max_events} such steps")
            raise DivergenceError(
                f"step {step}: the gradient norm is not finite (global samples {first_sample}-"
                f"{state.consumed_samples - 1}); its update was not applied and the run stopped ({why}); {intact}; "
                f"lower optim.lr, or resume with nan_guard.skip_steps=[{step}] or nan_guard.policy=skip|rollback")
        if self.policy == "rollback":
            if not newest:
                raise DivergenceError(f"step {step}: the gradient norm is not finite and nan_guard.policy=rollback "
                                      "has no checkpoint to go back to; lower optim.lr or use nan_guard.policy=skip")
            self._rollback_pending = step
        trainer.say(f"step {step}: the gradient norm is not finite; update not applied "
                    f"({'rolling back' if self._rollback_pending else 'skipped'})")

    def post_step(self, trainer: Trainer) -> None:
        if self._rollback_pending is None:
            return
        bad, self._rollback_pending = self._rollback_pending, None
        self.rolled_back_steps.add(bad)
        path = choose_resume_checkpoint("auto", self.checkpoints, self.on_damaged, distributed=True, say=trainer.say)
        if path is None:
            raise DivergenceError(f"step {bad}: the gradient norm is not finite and no checkpoint under "
                                  f"{self.checkpoints} verifies to roll back to; lower optim.lr or use "
                                  "nan_guard.policy=skip")
        trainer.restore(path)
        trainer.say(f"rolled back to {path} (step {trainer.state.step}); the batch of step {bad} will be skipped")

    def state_dict(self) -> dict:
        if not (self.events or self.rolled_back_steps):
            return {}  # a healthy run's checkpoints stay as before
        return {"events": self.events, "rolled_back_steps": sorted(self.rolled_back_steps)}

    def load_state_dict(self, state: dict) -> None:
        # A rollback loads an older state: keep what this run has seen since.
        self.events = max(self.events, state.get("events", 0))
        self.rolled_back_steps |= set(state.get("rolled_back_steps", []))
