"""Scaling laws from finished runs: Chinchilla's three approaches, bootstrap intervals, predictions.

- points.py     finished megallm runs or a CSV -> points (N, D, C, final loss), one per run
- fit.py        approach 1 (loss frontier) and approach 2 (IsoFLOP parabolas): N_opt(C), D_opt(C) power laws
- parametric.py approach 3: L(N, D) = E + A/N^alpha + B/D^beta by summed Huber loss, L-BFGS-B from a grid,
                refused where it does not converge or sits on its bounds
- bootstrap.py  resampling the points, refitting, percentile intervals
- support.py    which approach the points support best: the largest compute levels forecast from those below
- study.py      all of it on one set of points
- predict.py    compute-optimal N and D by every approach, expected loss and nearest conf/model/ preset;
                holdout error
- report.py     the printed table and fit.json
- plots.py      PNG figures (matplotlib, Agg)

The data-mixing law (Ye et al. 2024), tools/mixing_law.py (megallm.cli.mixing_law):
- mixtures.py      a CSV (or rows) of trained mixtures -> proportions and per-domain losses, one per mixture
- mixing.py        L_i(r) = c_i + k_i exp(t_i . r) per domain (t of the last domain 0), its fit, the
                   identifiability checks, the nearest-mixture baseline, the optimal mixture
- mixing_study.py  all of it on one table: bootstrap intervals, predictions, holdout, the optimum
- mixing_report.py the printed table and fit.json
- mixing_plots.py  PNG figures

tools/scaling_law.py (megallm.cli.scaling_law) is the command line.
"""
