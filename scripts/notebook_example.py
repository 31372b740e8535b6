"""docs/notebook.png's source: the demo report as a notebook cell's output, rendered by nbconvert.

Writes ``OUT/report.ipynb`` (one cell whose output is what Jupyter stores for ``report`` as the cell's
last line: ``Report._repr_html_``) and ``OUT/report.html`` (nbconvert's HTML of it), ready for
``scripts/screenshot.py OUT/report.html docs/notebook.png``. Usage: ``.venv/bin/python
scripts/notebook_example.py OUT`` (needs nbconvert, in the dev set-up).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from featviz_report import ReportConfig, build_report
from featviz_report._resources import demo_samples_dir
from featviz_report.models.resolve import load_model

CELL = "\n".join(
    [
        "from featviz_report import build_report",
        'report = build_report(model, "samples/digits", "report.html", config)',
        "report",
    ]
)


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "build/notebook")
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_model(None)
    config = ReportConfig(quiet=True, model_name=loaded.name, input_size=loaded.input_size,
                          normalize=loaded.normalize, labels=loaded.labels)  # fmt: skip
    report = build_report(loaded.module, demo_samples_dir(), out / "page.html", config)
    output = {"text/html": report._repr_html_().replace(str(out / "page.html"), "report.html"), "text/plain": "Report"}
    result = {"output_type": "execute_result", "execution_count": 1, "metadata": {}, "data": output}
    cell = {
        "cell_type": "code",
        "execution_count": 1,
        "id": "demo",
        "metadata": {},
        "source": CELL,
        "outputs": [result],
    }
    notebook = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [cell]}
    (out / "report.ipynb").write_text(json.dumps(notebook), encoding="utf-8")
    subprocess.run([sys.executable, "-m", "nbconvert", "--to", "html", str(out / "report.ipynb")], check=True)


if __name__ == "__main__":
    main()
