"""`compactlm ladder`: size x tokens sweeps, isoFLOP profiles and ablations, a fitted scaling law, a report.

- `config.py`  the typed ladder config (a base train config + the grid, the fit, the ablation)
- `grid.py`    points (each a normal run directory), running them (resumable, parallel), evaluation
- `fit.py`     Chinchilla approach 3 (Huber on log-loss, bootstrap) and approach 2 (isoFLOP minima)
- `report.py`  `ladder.md` and `ladder.json`
- `plots.py`   the PNG plots (and the number formatting they share with the report)
- `command.py` `compactlm ladder`: plan, train the unfinished points, fit, report

See docs/ladder.md. Submodules are imported where used (the CLI stays light).
"""
