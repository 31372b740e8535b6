"""A training run's site index → HTML, and both index files written (:func:`write_site`): per layer, a chart of
each of :data:`MEASURES` over the steps (drawn by :mod:`.chart`), with a second run's series on the same charts
when one is given; the samples' predictions per step; links to every step's report and comparison. No script,
no images: the page works from ``file://`` and any static host, and every link is relative.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

from markupsafe import Markup

from .._resources import templates_dir
from .._version import __version__
from ..errors import InputError
from ..render.html import environment, style_hash
from ..render.outputs import write_now
from ..render.strict_json import strict_json
from .chart import Series, line_chart
from .index import SampleHistory, SiteStep, check_site, index_json, read_steps, sample_histories

__all__ = ["Against", "MEASURES", "Measure", "render_site", "run_names", "write_site"]


@dataclass(frozen=True)
class Measure:
    """What one chart of every layer draws: the index's key (and its ± band's), the caption, how the value
    axis reads (``percent``: a fraction shown in %). ``since_before``: a change since the run's step before,
    so another run's value is drawn only at a step whose step before is the same in both runs."""

    key: str
    label: str
    band: str | None = None
    whole: bool = False
    nonnegative: bool = False
    percent: bool = False
    since_before: bool = False


MEASURES = (
    Measure("mean", "mean ± std", band="std"),
    Measure("dead_channels", "dead channels", whole=True, nonnegative=True),
    Measure("nonpositive_fraction", "% of outputs ≤ 0 (what a ReLU zeroes)", nonnegative=True, percent=True),
    Measure("weight_change", "weight change", nonnegative=True, since_before=True),
)


@dataclass(frozen=True)
class Against:
    """A second run drawn on the site's charts: both folders' names (the site's first) and the other's steps."""

    names: tuple[str, str]
    steps: list[SiteStep]


@dataclass(frozen=True)
class _Run:
    """One run on the charts: its name, its steps by number, and each step's step before (``None``: first)."""

    name: str
    at: dict[int, SiteStep]
    before: dict[int, int | None]

    @classmethod
    def of(cls, name: str, steps: list[SiteStep]) -> _Run:
        numbers = [step.step for step in steps]
        return cls(name, dict(zip(numbers, steps)), dict(zip(numbers, [None, *numbers])))

    def values(self, numbers: list[int], layer: str, key: str, scale: float, paired: _Run | None) -> list[float | None]:
        """Its ``key`` of ``layer`` at each of ``numbers`` times ``scale`` (``None`` where it has none); with
        ``paired``, only at steps whose step before is ``paired``'s too."""
        found = [
            self.at[n].layers.get(layer, {}).get(key)
            if n in self.at and (paired is None or paired.before[n] == self.before[n])
            else None
            for n in numbers
        ]
        return [None if v is None else scale * v for v in found]  # finite numbers or None (index._number)


def run_names(site: Path, other: Path) -> tuple[str, str]:
    """Two different folders' names as the legend shows them: their last parts, as many as tell them apart
    (``a/site`` and ``b/site``)."""
    a, b = site.resolve().parts, other.resolve().parts
    deepest = max(len(a), len(b))
    depth = next((n for n in range(1, deepest + 1) if a[-n:] != b[-n:]), deepest)
    return PurePath(*a[-depth:]).as_posix(), PurePath(*b[-depth:]).as_posix()


def _listed(items: Sequence[object], most: int = 8) -> str:
    shown = ", ".join(map(str, items[:most]))
    return shown + (f" and {len(items) - most} more" if len(items) > most else "")


def _charts(numbers: list[int], runs: list[_Run], layer: str) -> list[Markup]:
    """``layer``'s chart of each of :data:`MEASURES`, a series per run that has the layer (the site's first)."""
    drawn = [run for run in runs if any(layer in step.layers for step in run.at.values())]
    charts = []
    for m in MEASURES:
        scale = 100.0 if m.percent else 1.0
        series = [
            Series(
                run.name,
                run.values(numbers, layer, m.key, scale, runs[0] if m.since_before and run is not runs[0] else None),
                run.values(numbers, layer, m.band, scale, None) if m.band else None,
            )
            for run in drawn
        ]
        unit = "%" if m.percent else ""
        charts.append(line_chart(numbers, series, m.label, unit=unit, whole=m.whole, nonnegative=m.nonnegative))
    return charts


def _overlap(runs: list[_Run], layers: list[str]) -> dict[str, object]:
    """What the page says about a second run: how many steps it shares, and what of it is not drawn."""
    here, there = runs
    other_layers = {name for step in there.at.values() for name in step.layers}
    shared = [n for n in here.at if n in there.at]
    return {
        "names": (here.name, there.name),
        "shared": len(shared),
        "other_steps": _listed(sorted(set(there.at) - set(here.at))),
        "unpaired": _listed([n for n in shared if there.before[n] != here.before[n]]),
        "only_here": _listed([name for name in layers if name not in other_layers]),
        "only_there": _listed(sorted(other_layers - set(layers))),
    }


def render_site(steps: list[SiteStep], histories: list[SampleHistory], against: Against | None = None) -> str:
    """The index page of a site of ``steps``, with ``against``'s series on its charts when given."""
    css = (templates_dir() / "site.css").read_text(encoding="utf-8")
    csp = f"default-src 'none'; style-src {style_hash(css)}; base-uri 'none'; form-action 'none'"
    layer_names = list(dict.fromkeys(name for step in steps for name in step.layers))
    numbers = [step.step for step in steps]
    runs = [_Run.of(against.names[0] if against else "this run", steps)]
    if against is not None:
        runs.append(_Run.of(against.names[1], against.steps))
    return (
        environment()
        .get_template("site.html.j2")
        .render(
            steps=steps,
            layers=layer_names,
            histories=histories,
            numbers=numbers,
            charts=lambda layer: _charts(numbers, runs, layer),
            against=_overlap(runs, layer_names) if against else None,
            css=Markup(css),
            csp=csp,
            version=__version__,
        )
    )


def _against(site: Path, steps: list[SiteStep], other: Path) -> Against:
    """``other``'s steps, once it is known to be another site that shares steps and layers with ``steps``."""
    said = f"cannot draw against {str(other)!r}:"
    if not other.is_dir():
        raise InputError(f"{said} it {'is not a folder' if other.exists() else 'does not exist'}")
    if other.resolve() == site.resolve():
        raise InputError(f"{said} it is the site itself")
    others = read_steps(other)
    if not others:
        raise InputError(f"{said} it is not a training-run site (no step reports: pages with their JSON sidecars)")
    if not {s.step for s in steps} & {s.step for s in others}:
        raise InputError(
            f"{said} it shares no step with {str(site)!r} (steps {others[0].step} to {others[-1].step} there, "
            f"{steps[0].step} to {steps[-1].step} here)"
        )
    if not {name for s in steps for name in s.layers} & {name for s in others for name in s.layers}:
        raise InputError(f"{said} it shares no layer with {str(site)!r}")
    return Against(run_names(site, other), others)


def write_site(site: Path, against: Path | None = None) -> list[SiteStep]:
    """(Re)write ``site``'s ``index.json`` and ``index.html`` from its step reports; each file is written
    to a temporary name and renamed. ``against``: another run's site folder, drawn on the page's charts
    (read from its step reports; ``index.json`` stays the site's own)."""
    check_site(site)
    steps = read_steps(site)
    if not steps:
        raise InputError(f"no step reports (a page with its featviz-report JSON sidecar) in {str(site)!r}")
    other = _against(site, steps, against) if against is not None else None
    text = strict_json(index_json(steps), indent=1).encode("utf-8")
    page = render_site(steps, sample_histories(steps), other).encode("utf-8")  # both made before either is written
    write_now(site / "index.json", text)
    write_now(site / "index.html", page)
    return steps
