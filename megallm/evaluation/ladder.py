"""A scaling ladder's downstream curve: the kept checkpoints of runs, each evaluated, against the
tokens it had trained on and its training FLOPs.

tools/evaluate.py (megallm.cli.evaluate) evaluates every checkpoint that `run_checkpoints` lists
for a run folder (its checkpoint.dir when its config.yaml sets one), for each run of a sweep
folder, and hands each checkpoint's results (megallm.evaluation.report) to `ladder_rows`:

- `LadderPoint`: a run's name, a checkpoint, its step, tokens seen, training FLOPs (tokens seen x
  megallm.model.flops.flops_per_token of its model at its train.seq_len: the FLOPs of the steps
  that made it, as the run's own `flops_seen`) and parameter count (embeddings included);
- `ladder_rows`: one row per number (COLUMNS: the point, then report.rows' task, kind, k, demos,
  n, metric, value, stderr, and for multiple choice `chance`, the accuracy of guessing);
- `write_ladder`: the results as JSON (every checkpoint's full results, samples included) and the
  rows as CSV beside it (`<name>.csv`);
- `plot_ladder`: one panel per task (its headline metric: accuracy, BLEU; bits per byte for a
  perplexity), the value against training FLOPs on a log axis, one line per run with its standard
  errors, chance as a dashed line. Checkpoints at 0 FLOPs (an imported model) have no place on it.

matplotlib (the [eval] extra) is imported here only, by `plot_ladder`.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from megallm.checkpoint.state import STATE_FILE, complete_checkpoints, read_state
from megallm.errors import ConversionError
from megallm.evaluation.report import HEADLINE, rows, write_results
from megallm.files import atomic_write_text
from megallm.model.config import ModelConfig
from megallm.model.flops import flops_per_token, parameter_count
from megallm.run_layout import RunPaths

COLUMNS = ("run", "params", "step", "tokens", "flops", "task", "kind", "k", "demos", "n", "metric", "value",
           "stderr", "chance", "checkpoint")
PERPLEXITY_METRIC = "bits_per_byte"  # what a perplexity panel plots


@dataclass(frozen=True)
class LadderPoint:
    run: str  # the run folder's name (a sweep's run: its swept key=value,...)
    checkpoint: str
    step: int
    tokens: int  # tokens seen when it was saved
    flops: float  # training FLOPs of those tokens
    params: int  # the model's parameters, embeddings included (as Chinchilla's N)

    @classmethod
    def of(cls, run: str, checkpoint: Path) -> LadderPoint:
        """The point of `checkpoint` (its state file; CheckpointError where that is missing or damaged)."""
        state = read_state(checkpoint)
        model = ModelConfig(**state.model)
        return cls(run, str(checkpoint), state.step, state.tokens_seen,
                   float(state.tokens_seen * flops_per_token(model, state.seq_len)), parameter_count(model).total)


def run_checkpoints(path: Path) -> list[Path]:
    """Every complete checkpoint of a run folder, oldest first (those in its checkpoint.dir when its
    config.yaml sets one; a checkpoints folder: those in it); `path` itself if it is a checkpoint.
    ConversionError (one line) where there is none."""
    if (path / STATE_FILE).is_file():
        return [path]
    for folder in (path, RunPaths.of_folder(path).checkpoints):  # a checkpoints folder, or a run folder's
        if found := complete_checkpoints(folder):
            return found
    raise ConversionError(f"{path} holds no step_NNNNNNNN checkpoints (nor does its checkpoint folder); pass a run "
                          "folder, a checkpoints folder or a checkpoint")


def ladder_rows(point: LadderPoint, results: dict) -> list[dict]:
    """One row per number of one checkpoint's `results` (megallm.evaluation.report), with its point."""
    chance = {task["task"]: chance_accuracy(task) for task in results.get("tasks", [])}
    return [{"run": point.run, "params": point.params, "step": point.step, "tokens": point.tokens, "flops": point.flops,
             **row, "chance": chance.get(row["task"]) if row["metric"].startswith("accuracy") else None,
             "checkpoint": point.checkpoint} for row in rows(results)]


def chance_accuracy(task: dict) -> float | None:
    """A multiple-choice task's expected accuracy when guessing: the mean of 1 / choices over its examples."""
    if task["kind"] != "multiple_choice" or not task["samples"]:
        return None
    return sum(1 / len(s["loglikelihoods"]) for s in task["samples"]) / len(task["samples"])


def write_ladder(path: Path, document: dict, table: list[dict]) -> list[Path]:
    """`document` as JSON at `path` and `table` (ladder_rows) as CSV beside it; the paths written."""
    path = write_results(path, document)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if row[k] is None else row[k] for k in COLUMNS} for row in table)
    atomic_write_text(path.with_suffix(".csv"), out.getvalue())
    return [path, path.with_suffix(".csv")]


def format_ladder(table: list[dict]) -> str:
    """The rows as a console table: run, step, tokens, FLOPs, task, metric, value, stderr."""
    columns = ("run", "step", "tokens", "flops", "task", "metric", "value", "stderr")
    cells = [list(columns)] + [[str(r["run"]), str(r["step"]), f"{r['tokens']:,}", f"{r['flops']:.3g}", str(r["task"]),
                                r["metric"], f"{r['value']:.4f}", "-" if r["stderr"] is None else f"{r['stderr']:.4f}"]
                               for r in table]
    widths = [max(len(row[c]) for row in cells) for c in range(len(columns))]
    right = {1, 2, 3, 6, 7}
    return "\n".join("  ".join(cell.rjust(w) if c in right else cell.ljust(w)
                               for c, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in cells)


def plotted(table: list[dict]) -> dict[str, list[dict]]:
    """The rows each panel of the plot shows, by task: its headline metric's, above 0 FLOPs."""
    panels: dict[str, list[dict]] = {}
    for row in table:
        headline = HEADLINE.get(row["kind"], (PERPLEXITY_METRIC,))[0]
        if row["metric"] == headline and row["flops"] > 0:
            panels.setdefault(row["task"], []).append(row)
    return panels


def plot_ladder(table: list[dict], path: Path, title: str = "") -> Path:
    """The downstream curve of `table` (ladder_rows) as a PNG at `path` (module docstring)."""
    # deferred: matplotlib takes a second to import and only the plot needs it
    import matplotlib

    matplotlib.use("Agg")  # files only: no display
    # deferred: pyplot after the backend is chosen
    import matplotlib.pyplot as plt

    panels = plotted(table)
    if not panels:
        raise ValueError("nothing to plot: no checkpoint past step 0")
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for ax, (task, panel) in zip(axes[0], panels.items()):
        runs = sorted({r["run"] for r in panel}, key=lambda run: min(r["params"] for r in panel if r["run"] == run))
        for run in runs:
            points = sorted((r for r in panel if r["run"] == run), key=lambda r: r["flops"])
            ax.errorbar([r["flops"] for r in points], [r["value"] for r in points],
                        yerr=[r["stderr"] or 0.0 for r in points], marker="o", markersize=4, capsize=2,
                        label=f"{run} ({points[0]['params'] / 1e6:.1f}M)")
        chance = [r["chance"] for r in panel if r["chance"] is not None]
        if chance:
            ax.axhline(sum(chance) / len(chance), color="grey", linestyle="--", linewidth=1, label="chance")
        ax.set_xscale("log")
        ax.set_xlabel("training FLOPs")
        ax.set_ylabel(panel[0]["metric"])
        ax.set_title(f"{task} (n={panel[0]['n']:,}, k={panel[0]['k']})" if panel[0]["k"] != "" else task)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

