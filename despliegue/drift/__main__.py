"""`python -m despliegue.drift report FAMILY -o report.html`: the HTML drift report
(despliegue/drift/report.py)."""

from __future__ import annotations

import sys

from despliegue.drift.report import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
