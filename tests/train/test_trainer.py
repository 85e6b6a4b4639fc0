"""The loop's hooks: their order, a callback that stops the run, and callback state that a
checkpoint carries across a resume. A callback plugs in without any edit to the loop.

One real rank (a process of tests.helpers.run_ranks) trains a small model for a few steps.
"""

from __future__ import annotations

import json
from pathlib import Path

from megallm.train.callbacks import Callback
from tests.helpers import SMALL_MODEL, records, run_ranks

SCHEDULE = ["model.num_layers=2", "train.seq_len=32", "train.micro_batch_size=2", "train.global_batch_tokens=128",
            "train.steps=6", "optim.warmup_steps=2", "logging.every=2", "train.eval_every=3", "train.eval_batches=1",
            "checkpoint.every=0", "data.num_workers=0", "train.precision=fp32"]


class Recorder(Callback):
    """Writes down every hook call; asks the trainer to stop right after training step `stop_at`
    (as a NaN guard would); counts steps as its state."""

    priority = 100  # before the standard callbacks at every hook

    def __init__(self, stop_at: int = 0):
        self.stop_at, self.events, self.post_steps, self.restored = stop_at, [], 0, None

    def on_fit_start(self, trainer):
        self.events.append(("on_fit_start", trainer.state.step))

    def pre_step(self, trainer):
        self.events.append(("pre_step", trainer.state.step))

    def post_train_batch(self, trainer, output):
        self.events.append(("post_train_batch", trainer.state.step))
        assert len(output.micro_batches) == trainer.grad_accum and len(output.samples) == trainer.global_sequences
        if trainer.state.step == self.stop_at:
            trainer.request_stop("the test asked")

    def collect_metrics(self, trainer, record):
        self.events.append(("collect_metrics", record["step"]))

    def log_metrics(self, trainer, record):
        self.events.append((f"log_metrics:{record['kind']}", record["step"]))
        if record["kind"] == "train":
            assert {"loss", "lr", "grad_norm", "tokens_per_s", "eta_s", "peak_mem_gib", "tflops_per_device"} <= set(record)
            # where the step time went: host-timed phases on CPU, each a part of the step
            phases = record["data_ms"] + record["forward_backward_ms"] + record["optimizer_ms"]
            assert record["forward_backward_ms"] > 0 and phases <= 1000 * record["step_time_s"] * 1.01

    def post_step(self, trainer):
        self.events.append(("post_step", trainer.state.step))
        self.post_steps += 1

    def on_fit_end(self, trainer):
        self.events.append(("on_fit_end", trainer.state.step))

    def state_dict(self) -> dict:
        return {"post_steps": self.post_steps}

    def load_state_dict(self, state: dict) -> None:
        self.restored = state


def _fit(corpus: str, run_dir: str, stop_at: int, *overrides: str) -> dict:
    from megallm.config import check_config, compose_config
    from megallm.data.corpus import open_corpus
    from megallm.parallel.distributed import distributed
    from megallm.train.build import build_trainer

    cfg, config_yaml = compose_config([*SMALL_MODEL, *SCHEDULE, f"data.path={corpus}", f"run_dir={run_dir}",
                                       *overrides])
    check_config(cfg, 1)
    data = open_corpus(cfg.data.path, None, ("train", "val"))
    cfg.model.vocab_size = data.manifest.vocab_size
    recorder = Recorder(stop_at)
    with distributed() as ctx:
        state = build_trainer(cfg, config_yaml, data, ctx, extra_callbacks=[recorder]).fit()
    return {"events": recorder.events, "restored": recorder.restored, "step": state.step}


def expected_events(first: int, last: int) -> list[tuple[str, int]]:
    events = [("on_fit_start", first - 1)]
    for step in range(first, last + 1):
        events += [("pre_step", step - 1), ("post_train_batch", step)]
        if step % 2 == 0 or step in (1, last):  # logging.every=2, the first step, the last (or stopping) step
            events += [("collect_metrics", step), ("log_metrics:train", step)]
        events.append(("post_step", step))
        if step % 3 == 0:  # train.eval_every=3: the evaluator's post_step runs after the recorder's
            events.append(("log_metrics:eval", step))
    return events + [("on_fit_end", last)]


def test_hooks_stop_and_callback_state_across_a_resume(small_corpus, tmp_path):
    run_dir = tmp_path / "run"
    first = run_ranks(1, _fit, str(small_corpus), str(run_dir), 3)[0]
    assert first["events"] == expected_events(1, 3)  # step 3 is logged because the run stops there
    assert first["step"] == 3 and first["restored"] is None
    # The stop at step 3 was saved, with the recorder's state, though checkpoint.every=0 saves only the last step.
    checkpoints = run_dir / "checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == ["step_00000003"]
    state = json.loads((checkpoints / "step_00000003" / "megallm_state.json").read_text())
    assert state["callbacks"] == {"Recorder": {"post_steps": 3}}
    assert sorted(records(run_dir, "train")) == [1, 2, 3] and sorted(records(run_dir, "eval")) == [3]

    second = run_ranks(1, _fit, str(small_corpus), str(run_dir), 0)[0]
    assert second["restored"] == {"post_steps": 3}
    assert second["events"] == expected_events(4, 6)
    assert second["step"] == 6 and sorted(p.name for p in checkpoints.iterdir()) == ["step_00000003", "step_00000006"]
    assert sorted(records(run_dir, "train")) == [1, 2, 3, 4, 6] and sorted(records(run_dir, "eval")) == [3, 6]
    assert Path(run_dir / "config.yaml").is_file()


def test_without_save_last_only_a_stop_is_saved(small_corpus, tmp_path):
    """checkpoint.save_last=false (benchmarks): the planned end writes nothing, a stop still does."""
    run_dir = tmp_path / "run"
    run_ranks(1, _fit, str(small_corpus), str(run_dir), 3, "checkpoint.save_last=false")
    checkpoints = run_dir / "checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == ["step_00000003"]
    assert run_ranks(1, _fit, str(small_corpus), str(run_dir), 0, "checkpoint.save_last=false")[0]["step"] == 6
    assert [p.name for p in checkpoints.iterdir()] == ["step_00000003"]
