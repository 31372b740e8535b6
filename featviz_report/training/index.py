"""A static site of reports over a training run: what ``index.json`` and ``index.html`` hold, read from the step
reports' JSON sidecars alone so ``featviz-report site DIR`` can rebuild them and gather reports made
separately (one per checkpoint) into a site; :mod:`featviz_report.training.page` draws and writes them.

A step is a report page with its JSON sidecar under the site folder: a folder report (``step-000012/`` with
``index.html`` and ``report.json``, as :class:`~featviz_report.Recorder` writes them) or a one-file page
beside its JSON (``epoch-3.html`` and ``epoch-3.json``). Its step number is the JSON's ``training.step`` (a
Recorder's), else the last number in its name. A step folder's ``compare/index.html`` is the comparison of the
step with the one before (see ``Recorder(compare=True)``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import quote

from .._version import __version__
from ..errors import InputError

__all__ = [
    "SiteStep",
    "SampleHistory",
    "read_steps",
    "sample_histories",
    "index_json",
    "check_site",
    "STEP_JSON",
    "COMPARE_DIR",
]

STEP_JSON = "report.json"  # a step folder's JSON sidecar
COMPARE_DIR = "compare"  # inside a step folder: the comparison with the step before
INDEX_FILES = ("index.json", "index.html")
SITE_MARK = '<meta name="featviz-report-site" content="1">'  # in every index.html a site writes
LAYER_KEYS = (
    "mean",
    "std",
    "min",
    "max",
    "zero_fraction",
    "nonpositive_fraction",
    "dead_channels",
    "saturated_channels",
    "nan",
    "inf",
)
_NUMBER = re.compile(r"(\d+)")


@dataclass(frozen=True)
class SiteStep:
    """One step of the site: where its page and JSON are (relative, POSIX), its layers' statistics (as in
    its JSON) with the relative weight change since the step before, and each sample's top-1 label."""

    step: int
    report: str
    json: str
    layers: dict[str, dict[str, float | int | None]]
    samples: list[str]
    predictions: list[str | None]
    compare: str | None = None  # the comparison page with the step before, when there is one


@dataclass(frozen=True)
class SampleHistory:
    """One sample's top-1 label at every step; ``settled``: the first step from which it never changed."""

    name: str
    labels: list[str | None]
    changes: int
    settled: int | None


def read_steps(site: Path) -> list[SiteStep]:
    """Every step report under ``site`` (depth one), in step order. Comparison reports and files that are
    not featviz-report sidecars are not steps; two reports with the same step are an error."""
    steps: dict[int, SiteStep] = {}
    candidates = sorted(p for p in site.glob("*.json") if p.name not in INDEX_FILES)
    candidates += sorted(site.glob(f"*/{STEP_JSON}"))
    for path in candidates:
        data = _sidecar(path)
        if data is None or "comparison" in data:
            continue
        page = path.parent / "index.html" if path.parent != site else path.with_suffix(".html")
        if not page.is_file():
            continue
        step = _step_number(data, page if path.parent == site else path.parent)
        if step is None:
            continue
        if step in steps:
            raise InputError(f"two reports for step {step} in {str(site)!r}: {steps[step].json} and {_rel(path, site)}")
        compare = path.parent / COMPARE_DIR / "index.html"
        steps[step] = SiteStep(
            step=step,
            report=_rel(page, site),
            json=_rel(path, site),
            layers=_layers(data),
            samples=[str(s.get("name", "")) for s in data.get("samples", [])],
            predictions=[_label(s) for s in data.get("samples", [])],
            compare=_rel(compare, site) if path.parent != site and compare.is_file() else None,
        )
    return [steps[s] for s in sorted(steps)]


def _sidecar(path: Path) -> dict | None:  # type: ignore[type-arg]
    """A featviz-report sidecar's JSON, or ``None`` when ``path`` is not one (or is malformed)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(data, dict) or "featviz_report" not in data:
        return None
    layers, samples = data.get("layers"), data.get("samples", [])
    if not isinstance(layers, list) or not all(isinstance(x, dict) and isinstance(x.get("name"), str) for x in layers):
        return None
    if not isinstance(samples, list) or not all(isinstance(x, dict) for x in samples):
        return None
    return data


def _step_number(data: dict, named: Path) -> int | None:  # type: ignore[type-arg]
    training = data.get("training")
    if isinstance(training, dict) and type(training.get("step")) is int and 0 <= training["step"] < 10**15:
        return int(training["step"])
    numbers = _NUMBER.findall(named.stem if named.is_file() else named.name)
    return int(numbers[-1]) if numbers and len(numbers[-1]) <= 15 else None


def _layers(data: dict) -> dict[str, dict[str, float | int | None]]:  # type: ignore[type-arg]
    """Per layer, its JSON ``stats`` (without the histogram) and the weight change a Recorder recorded;
    anything that is not a finite number is ``None``."""
    training = data.get("training") if isinstance(data.get("training"), dict) else {}
    changes = training.get("weight_change") if isinstance(training.get("weight_change"), dict) else {}  # type: ignore[union-attr]
    layers = {}
    for layer in data["layers"]:
        stats = layer.get("stats") if isinstance(layer.get("stats"), dict) else {}
        values = {key: stats.get(key) for key in LAYER_KEYS}  # type: ignore[union-attr]
        values["weight_change"] = changes.get(layer["name"])  # type: ignore[union-attr]
        layers[layer["name"]] = {key: _number(value) for key, value in values.items()}
    return layers


def _number(value: object) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return value if math.isfinite(value) and abs(value) < 1e300 else None
    except OverflowError:
        return None


def _label(sample: dict) -> str | None:  # type: ignore[type-arg]
    prediction = sample.get("prediction")
    label = prediction.get("label") if isinstance(prediction, dict) else None
    return str(label) if label is not None else None


def _rel(path: Path, site: Path) -> str:
    """``path`` as a link relative to ``site``: ``./`` and percent-encoded, so no name can read as a
    scheme (``https:…``), a query or a fragment."""
    return "./" + quote(path.relative_to(site).as_posix())


def sample_histories(steps: list[SiteStep]) -> list[SampleHistory]:
    """Per sample of the first step (matched by name in later ones), its labels over the steps."""
    if not steps:
        return []
    histories = []
    for name in steps[0].samples:
        labels = [s.predictions[s.samples.index(name)] if name in s.samples else None for s in steps]
        changes = sum(a != b for a, b in zip(labels, labels[1:]))
        last_change = max((i + 1 for i, (a, b) in enumerate(zip(labels, labels[1:])) if a != b), default=0)
        settled = steps[last_change].step if labels[last_change] is not None else None
        histories.append(SampleHistory(name, labels, changes, settled))
    return histories


def _site_index(path: Path) -> bool:
    """Whether ``path`` may be (over)written as a site index: absent, or a plain file a site wrote before."""
    if not path.exists() and not path.is_symlink():
        return True
    if path.is_symlink() or not path.is_file():
        return False
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    if path.suffix == ".html":
        return SITE_MARK in text
    try:
        data = json.loads(text)
    except ValueError:
        return False
    return isinstance(data, dict) and "featviz_report" in data and isinstance(data.get("steps"), list)


def index_json(steps: list[SiteStep]) -> dict[str, object]:
    """``index.json``: each step's page, JSON, layer statistics and weight change, and its predictions."""
    return {"featviz_report": __version__, "steps": [asdict(step) for step in steps]}


def check_site(site: Path) -> None:
    """``site`` must be a folder whose index files, if any, a site wrote (checked before any work)."""
    if not site.is_dir():
        what = "is not a folder" if site.exists() else "does not exist"
        raise InputError(f"site folder {str(site)!r} {what}")
    for name in INDEX_FILES:
        if not _site_index(site / name):
            raise InputError(f"{str(site / name)!r} is not a featviz-report site index; move it away first")
