"""The observations of a data-mixing law read from megallm run folders: a sweep over `data.sources` weights
(launch/sweep.py), or any folder of runs, searched recursively.

Each run folder (megallm.run_layout: config.yaml and metrics.jsonl) is one mixture: its proportions are its
config.yaml's data.sources weights, normalised; its loss on each source is the final eval record's
`<source>/loss` (the validation split of that source). A run is finished, as for a scaling law
(megallm.scaling.points), when it has an eval record at step train.steps; an unfinished one is left out
with a note. Every run must train the same sources under the same names, with one fixed mixture: a run
without data.sources, one whose sources differ from the others', or one whose mixture changes during the
run (data.stages, data.anneal) is refused in one line naming it. The rows go to `mixtures_from_rows`, which
does the checks shared with a CSV (and refuses, or averages, two runs of one mixture).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from megallm.errors import DataError
from megallm.run_layout import METRICS_FILE, RUN_CONFIG_FILE
from megallm.scaling.mixtures import LOSS_PREFIX, WEIGHT_PREFIX, Mixtures, mixtures_from_rows
from megallm.scaling.points import final_eval, run_config, run_folders, run_name


def read_mixture_runs(root: Path, duplicates: str = "refuse", note: Callable[[str], None] = print) -> Mixtures:
    """Mixtures of the finished runs under `root` (see the module docstring)."""
    folders = run_folders(root)
    rows: list[dict[str, str]] = []
    names: list[str] = []
    first: tuple[str, list[str]] | None = None  # the first run's name and sources
    for folder in folders:
        name = run_name(root, folder)
        cfg = run_config(folder)
        sources = cfg.data.source_settings()
        where = f"{folder / RUN_CONFIG_FILE}"
        if len(sources) < 2:
            have = "no data.sources (it trained on data.path alone)" if not sources else "one source"
            raise DataError(f"{where} has {have}; a mixing law needs runs over 2 or more data.sources, "
                            "with weights that differ between the runs")
        if getattr(cfg.data, "stages", None) or getattr(cfg.data, "anneal", None):
            raise DataError(f"{where} changes its mixture during the run (data.stages / data.anneal); a mixing law "
                            "takes runs of one fixed mixture each: leave that run out of the folder")
        if first is None:
            first = (name, list(sources))
        elif list(sources) != first[1]:
            raise DataError(f"runs {first[0]} and {name} under {root} train different sources ({', '.join(first[1])} "
                            f"and {', '.join(sources)}); a mixing law needs every run over the same named sources")
        final = final_eval(folder, name, cfg.train.steps, note)
        if final is None:
            continue
        row = {"name": name}
        for source, settings in sources.items():
            loss = final.get(f"{source}/loss")
            if not isinstance(loss, (int, float)) or isinstance(loss, bool):
                raise DataError(f"{folder / METRICS_FILE}: the final eval record (step {cfg.train.steps}) has no "
                                f"number for '{source}/loss', the validation loss of data.sources.{source}")
            row[f"{WEIGHT_PREFIX}{source}"] = repr(settings.weight)
            row[f"{LOSS_PREFIX}{source}"] = repr(float(loss))
        rows.append(row)
        names.append(name)
    if not rows:
        raise DataError(f"none of the {len(folders)} run(s) under {root} is finished (an eval record at its last "
                        "step); nothing to fit")
    return mixtures_from_rows(rows, lambda i: str(root / names[i]) if i >= 0 else str(root), duplicates, note)
