"""What runs at the training loop's hooks (see base.py for the hooks and their order).

- base.py           Callback and StepOutput
- metrics.py        TrainMetrics (loss, LR, grad norm, data position), SpeedMonitor (tokens/s, MFU, ETA, memory)
- evaluation.py     Evaluator: held-out loss every `train.eval_every` steps
- checkpointing.py  Checkpointer: a checkpoint every `checkpoint.every` steps and at the end
- nan_guard.py      NanGuard: a step with a non-finite gradient norm stops, is skipped or rolled back
- preemption.py     PreemptionHandler: SIGTERM / SIGUSR1 -> checkpoint, exit code 75
- sample_trace.py   SampleTrace: each step's samples (data.trace_samples)
- loggers.py        ConsoleLogger, JsonlLogger, WandbLogger (rank 0)
"""

from megallm.train.callbacks.base import Callback, StepOutput
from megallm.train.callbacks.checkpointing import Checkpointer
from megallm.train.callbacks.evaluation import Evaluator
from megallm.train.callbacks.loggers import ConsoleLogger, JsonlLogger, WandbLogger
from megallm.train.callbacks.metrics import SpeedMonitor, TrainMetrics
from megallm.train.callbacks.nan_guard import NanGuard
from megallm.train.callbacks.preemption import PREEMPTED_EXIT_CODE, PreemptionHandler
from megallm.train.callbacks.sample_trace import SampleTrace

__all__ = ["Callback", "Checkpointer", "ConsoleLogger", "Evaluator", "JsonlLogger", "NanGuard", "PREEMPTED_EXIT_CODE",
           "PreemptionHandler", "SampleTrace", "SpeedMonitor",
           "StepOutput", "TrainMetrics", "WandbLogger"]
