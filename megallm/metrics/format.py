"""How metric records and durations read on the console.

A record is a flat dict with `step`, a `kind` ("train", "eval", ...) and numbers
(megallm.train.callbacks build them; the console logger prints `format_console`).
"""

from __future__ import annotations


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


# Scores an evaluation may add (a fine-tuned classifier's, megallm.finetune.validation), shown when present.
EVAL_SCORES = ("val_accuracy", "val_macro_f1", "val_majority_accuracy")


def _number(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _field(value) -> str:
    return format(value, ".4g") if isinstance(value, float) else str(value)


def format_console(record: dict) -> str:
    kind, step = record["kind"], record["step"]
    if kind == "eval":
        line = f"eval  step {step} | val_loss {record['val_loss']:.4f} | val_ppl {record['val_ppl']:.2f}"
        scores = [f"{key} {record[key]:.4f}" for key in EVAL_SCORES if record.get(key) is not None]
        scores += [f"{key} {value:.4f}" for key, value in record.items() if key.endswith("/loss")]  # per source
        return " | ".join([line, *scores])
    if kind != "train":  # e.g. "nonfinite", "downstream": its fields, floats to 4 significant digits
        return f"{kind} step {step} | " + " | ".join(f"{k} {_field(v)}" for k, v in record.items()
                                                      if k not in ("kind", "step", "time"))
    parts = [f"step {step}/{record['total_steps']}", f"loss {_number(record['loss'], '.4f')}", f"lr {record['lr']:.2e}",
             f"grad_norm {record['grad_norm']:.3f}", f"{record['tokens_per_s']:,.0f} tok/s"]
    if record.get("mfu") is not None:
        parts.append(f"mfu {100 * record['mfu']:.1f}%")
    if record.get("epoch") is not None:
        parts.append(f"epoch {record['epoch']:.2f}")
    if record.get("skipped_shards"):
        parts.append(f"skipped shards {record['skipped_shards']:.0f}")
    if record.get("peak_mem_gib") is not None:
        parts.append(f"peak mem {record['peak_mem_gib']:.2f} GiB")
    parts.append(f"eta {format_duration(record['eta_s'])}")
    return " | ".join(parts)
