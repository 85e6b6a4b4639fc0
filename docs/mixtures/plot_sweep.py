"""The figure of docs/mixtures/README.md: each domain's validation loss against its own share of the training
mixture, one point per finished run of a sweep folder (read as tools/mixing_law.py reads it), held-out runs
marked, and the fitted law's prediction for each run where a fit.json is given.

    python docs/mixtures/plot_sweep.py runs/mixtures/sweep docs/mixtures/domain_losses.png [runs/mixtures/fit/fit.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from megallm.scaling.mixture_runs import read_mixture_runs  # noqa: E402


def main(sweep: Path, out: Path, fit: Path | None = None) -> None:
    mixtures = read_mixture_runs(sweep, note=print)
    held = np.array(["heldout" in name for name in mixtures.names])
    laws = json.loads(fit.read_text())["domains"] if fit else {}
    fig, axes = plt.subplots(1, len(mixtures.domains), figsize=(4.2 * len(mixtures.domains), 3.8))
    for axis, (i, domain) in zip(axes, enumerate(mixtures.domains)):
        share = mixtures.proportions[:, mixtures.sources.index(domain)]
        axis.scatter(share[~held], mixtures.losses[~held, i], label="trained (fitted)", color="C0")
        axis.scatter(share[held], mixtures.losses[held, i], label="held out", color="C3", marker="s")
        if domain in laws:
            law = laws[domain]
            t = np.array([law["t"][s] for s in mixtures.sources])
            predicted = law["c"] + law["k"] * np.exp(mixtures.proportions @ t)
            axis.scatter(share, predicted, label="law's prediction", facecolors="none", edgecolors="k", marker="o",
                         s=70)
        axis.set_xlabel(f"share of {domain} in the training mixture")
        axis.set_ylabel(f"{domain}/loss (validation)")
        axis.set_title(domain)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]) if len(sys.argv) > 3 else None)
