"""Drift: does what a served model receives and answers still look like its baseline?

The modules follow the processes they run in:

- `summaries`: per model, what a call is summarised as (named by the registry);
- `baselines`: baselines from summaries, and from data given at import (the importing process);
- `statistics`, `windows`: PSI, KS and chi-square on histogram counts; live windows;
- `recorder`, `capture`, `metrics`: the API worker's side, after each answer has left;
- `report` (and `python -m despliegue.drift report FAMILY -o report.html`): the HTML report.

Nothing is imported here, so importing one part does not load the others. docs/operations.md
explains the statistics and thresholds.
"""
