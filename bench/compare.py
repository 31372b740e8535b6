"""featviz-report against the reference scripts of ../shared/bench, in one run, on the same inputs.

Times ``build_report`` (through :mod:`bench.featviz_run`) and the three reference scripts of ../shared/bench
(``floor.py``: min-max to uint8 and one PNG atlas per layer and image, in memory, on every core;
``grid_baseline.py``: torchvision's ``make_grid`` + ``save_image``; ``seed_baseline.py``: one matplotlib figure per
layer, ``--seed-channels`` channels of the first image), and TorchLens, a peer (``torchlens.trace``: every
operation's output captured in memory, no images; :mod:`bench.torchlens_run`). Each measurement is a fresh
process; like the scripts, featviz's time is in-process (interpreter start-up, imports, model and inputs
excluded). Every one gets the same model and inputs: ``torch.manual_seed(0)``,
``getattr(torchvision.models, MODEL)(weights=None).eval()``,
``torch.randn(N, 3, 224, 224)``, and captures every ``nn.Conv2d`` (featviz gets their names as ``layers``, so its
default Linear layers are left out). A script's time is the sum of its ``*_s=`` figures. Runs are interleaved
round-robin (floor, grid, seed, featviz, floor, ...) and the table shows each one's median.

``--model demo`` runs featviz's demo model (a digits CNN on 1×28×28 inputs) through every script: the scripts
only know torchvision names, so :mod:`bench.shim` runs each one unchanged with just the model and the input
shape substituted (``torchvision.models.demo`` is the demo model, ``torch.randn(N, 3, 224, 224)`` returns
``torch.randn(N, 1, 28, 28)``); featviz_run uses the same substitution.

Then, unless ``--no-memory``, featviz's peak resident set at each of ``--memory-samples`` (``--repeat`` runs
each, the median shown; written as a folder). The peak includes Python, torch and the inputs tensor (154 MB
at 256 × 224² RGB), so the table also shows it less the inputs and how much it rose during ``build_report``.

``--load`` measures the timings twice: on a quiet machine, then while another process keeps one core busy
(a Python busy loop started before the rounds and stopped after them), so both ratios come from one run.

Run from the repository root (a benchmark, not a test; numbers vary, the slow references take a while):
``.venv/bin/python -m bench.compare [--model resnet18] [--samples 8] [--repeat 3] [--skip seed,grid,torchlens]
[--load] [--keep DIR] [--no-memory]``; ``--refs DIR`` if the scripts are not in ../shared/bench.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFS = Path(__file__).resolve().parents[2] / "shared" / "bench"
FEATVIZ = "featviz-report"
SCRIPTS = {"floor": "floor.py", "grid": "grid_baseline.py", "seed": "seed_baseline.py"}
TORCHLENS = "torchlens"
BUSY = "while True: pass"
FIGURE = re.compile(r"(\w+)=(\S+)")


@dataclass
class Runs:
    """One contender's measurements: in-process seconds per run, and the figures of its last run."""

    name: str
    seconds: list[float] = field(default_factory=list)
    figures: dict[str, str] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def tiles(self) -> int:
        return int(self.figures["tiles"])

    @property
    def per_tile(self) -> float:
        return self.median / self.tiles if self.tiles else float("nan")


def featviz_command(model: str, samples: int, out: Path, device: str, max_size: float, fmt: str = "html") -> list[str]:
    return [
        sys.executable,
        "-m",
        "bench.featviz_run",
        model,
        str(samples),
        str(out),
        "--format",
        fmt,
        "--device",
        device,
        "--max-size",
        str(max_size),
    ]


def script_command(script: Path, model: str, samples: int, out: Path, seed_channels: int) -> list[str]:
    """The script's command line; ``demo`` goes through :mod:`bench.shim`, other models run it as is."""
    args = [model, str(samples), *([str(seed_channels)] if script.name == SCRIPTS["seed"] else []), str(out)]
    runner = ["-m", "bench.shim"] if model == "demo" else []
    return [sys.executable, *runner, str(script), *args]


def run(command: list[str]) -> dict[str, str]:
    """Run one measurement in a fresh process and return the ``name=value`` figures it printed."""
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-3000:]}")
    lines = [line for line in done.stdout.splitlines() if "=" in line]
    if not lines:
        sys.exit(f"no figures printed by: {' '.join(command)}\n{done.stdout[-3000:]}")
    return dict(FIGURE.findall(lines[-1]))


def in_process(figures: dict[str, str]) -> float:
    """The sum of the ``*_s=`` figures: the script's own time, start-up and imports excluded."""
    return sum(float(value) for key, value in figures.items() if key.endswith("_s"))


def measure(
    commands: dict[str, list[list[str]]],
) -> dict[str, Runs]:
    """Run ``commands`` (per contender, one command per round) round-robin: round 1 of each, then round 2, ..."""
    results = {name: Runs(name) for name in commands}
    rounds = len(next(iter(commands.values())))
    for i in range(rounds):
        for name, per_round in commands.items():
            figures = run(per_round[i])
            results[name].seconds.append(in_process(figures))
            results[name].figures = figures
            print(f"round {i + 1}/{rounds}: {name} {results[name].seconds[-1]:.3f} s", file=sys.stderr)
    return results


def seconds(value: float) -> str:
    return f"{value:.3f}" if value < 0.1 else f"{value:.2f}"


def per_tile(value: float) -> str:
    if value != value:  # nan: no tiles
        return "—"
    if value < 1e-3:
        return f"{value * 1e6:.1f} µs"
    return f"{value * 1e3:.1f} ms" if value < 1 else f"{value:.2f} s"


def times(ratio: float) -> str:
    if ratio < 2:
        return f"{ratio:.2f}×"
    return f"{ratio:.1f}×" if ratio < 100 else f"{ratio:,.0f}×"


def faster(ours: float, theirs: float, suffix: str = "") -> str:
    """How ``ours`` compares with ``theirs`` (both times, lower is better), as ``N× faster`` or ``N× slower``."""
    if ours <= 0 or theirs <= 0:
        return "—"
    return f"{times(theirs / ours)} faster{suffix}" if theirs >= ours else f"{times(ours / theirs)} slower{suffix}"


def verdict(featviz: Runs, other: Runs) -> str:
    """The last column: featviz vs the floor as a ratio, vs grid in time, vs seed per tile."""
    if other.name == SCRIPTS["floor"]:
        return f"{times(featviz.median / other.median)} the floor" if other.median > 0 else "—"
    if other.name == SCRIPTS["seed"]:
        return faster(featviz.per_tile, other.per_tile, " per tile")
    if other.name == TORCHLENS:
        return faster(featviz.median, other.median, " (full page vs capture alone)")
    return faster(featviz.median, other.median)


def input_label(shape: str) -> str:
    """``3x224x224`` → ``224²``; ``1x28x28`` → ``28² grey``."""
    channels, height, width = shape.split("x")
    side = f"{height}²" if height == width else f"{height}×{width}"
    return side if channels == "3" else f"{side} grey" if channels == "1" else f"{channels}×{side}"


def timing_table(model: str, samples: int, results: dict[str, Runs], condition: str = "") -> list[str]:
    featviz = results[FEATVIZ]
    rows = [("script", "median", "runs", "tiles", "per tile", "featviz is")]
    for runs in results.values():
        rows.append(
            (
                runs.name,
                seconds(runs.median),
                " ".join(seconds(s) for s in runs.seconds),
                str(runs.tiles),
                per_tile(runs.per_tile),
                "—" if runs is featviz else verdict(featviz, runs),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    shape = input_label(featviz.figures.get("input", "3x224x224"))
    lines = [
        f"{model} × {samples} ({shape}, all Conv2d, {featviz.tiles:,} tiles), "
        f"median of {len(featviz.seconds)}, seconds in-process{condition}"
    ]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return lines + timing_notes(results)


def timing_notes(results: dict[str, Runs]) -> list[str]:
    """What each wrote, on which device, and any tile count that does not match featviz's."""
    featviz = results[FEATVIZ]
    notes = (
        []
        if TORCHLENS not in results
        else [f"torchlens: torchlens.trace, {results[TORCHLENS].figures.get('layers', '?')} operations kept in memory"]
    )
    notes += [
        f"featviz-report: one HTML page of {featviz.figures.get('html_MB', '?')} MB (maps, filters, statistics), "
        f"on {featviz.figures.get('device', '?')}; the scripts run on the CPU"
    ]
    floor = results.get(SCRIPTS["floor"])
    if floor is not None:
        notes.append(f"floor.py: {floor.figures.get('png_MB', '?')} MB of PNG atlases, in memory only (no files)")
    for runs in results.values():
        if runs.name in (SCRIPTS["floor"], SCRIPTS["grid"]) and runs.tiles != featviz.tiles:
            notes.append(f"note: {runs.name} made {runs.tiles} tiles, featviz-report {featviz.tiles}")
    return notes


def memory_table(model: str, rows: list[tuple[int, dict[str, str]]], repeat: int) -> list[str]:
    """Peak RSS per sample count, less the inputs tensor, and its rise during ``build_report``."""
    lines = [
        f"featviz-report peak RSS, {model}, median run of {repeat}, --format dir; MB = 10⁶ bytes",
        "peak includes Python + torch + model + the inputs tensor; 'peak − inputs' leaves the inputs out,",
        "'build' is peak − RSS just before build_report (model and inputs ready): the tool's own memory",
    ]
    table = [("samples", "inputs MB", "peak RSS MB", "peak − inputs MB", "vs first", "build MB", "vs first")]
    first: tuple[float, float] | None = None
    for samples, figures in rows:
        inputs, peak, before = (float(figures[k]) for k in ("inputs_MB", "peak_rss_MB", "rss_before_MB"))
        own, build = peak - inputs, peak - before
        first = first or (own, build)
        table.append(
            (
                str(samples),
                f"{inputs:.1f}",
                f"{peak:.0f}",
                f"{own:.0f}",
                growth(own, first[0], len(table) == 1),
                f"{build:.0f}",
                growth(build, first[1], len(table) == 1),
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in table]
    return lines


def growth(value: float, first: float, is_first: bool) -> str:
    return "—" if is_first or first <= 0 else f"{(value - first) / first * 100:+.0f}%"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", help="a torchvision model name, or demo")
    parser.add_argument("--samples", type=int, default=8, help="number of random inputs")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, interleaved; the table shows the median")
    parser.add_argument("--seed-channels", type=int, default=16, help="seed_baseline.py's channels per layer")
    parser.add_argument(
        "--skip", default="", help="contenders to leave out, comma-separated: floor, grid, seed, torchlens"
    )
    parser.add_argument(
        "--load", action="store_true", help="time twice: quiet, then with another process keeping one core busy"
    )
    parser.add_argument("--refs", type=Path, default=REFS, help="the folder of the reference scripts")
    parser.add_argument("--keep", type=Path, help="write outputs here and keep them (default: a temporary folder)")
    parser.add_argument(
        "--max-size", type=float, default=64.0, help="featviz's --max-size in MB (0: every map on the page)"
    )
    parser.add_argument("--device", default="cpu", help="featviz's --device (the reference scripts use the CPU)")
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True, help="measure peak RSS")
    parser.add_argument("--memory-samples", default="16,256", help="sample counts of the memory runs, comma-separated")
    args = parser.parse_args()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if skip - {*SCRIPTS, TORCHLENS}:
        unknown = ", ".join(sorted(skip - {*SCRIPTS, TORCHLENS}))
        parser.error(f"--skip: unknown {unknown}; choose from floor, grid, seed, torchlens")
    args.torchlens = TORCHLENS not in skip and importlib.util.find_spec("torchlens") is not None
    if TORCHLENS not in skip and not args.torchlens:
        print("torchlens is not installed: its row is left out (pip install torchlens)", file=sys.stderr)
    args.scripts = [args.refs / name for key, name in SCRIPTS.items() if key not in skip]
    for script in args.scripts:
        if not script.is_file():
            parser.error(f"no reference script {script} (use --refs DIR or --skip)")
    if args.repeat < 1 or args.samples < 1:
        parser.error("--repeat and --samples must be at least 1")
    args.memory_counts = [int(n) for n in args.memory_samples.split(",") if n.strip()]
    return args


def compare(args: argparse.Namespace, out: Path) -> None:
    commands: dict[str, list[list[str]]] = {}
    for script in args.scripts:
        commands[script.name] = [
            script_command(script, args.model, args.samples, out / f"{script.stem}-{i}", args.seed_channels)
            for i in range(args.repeat)
        ]
    if args.torchlens:
        commands[TORCHLENS] = [
            [sys.executable, "-m", "bench.torchlens_run", args.model, str(args.samples)] for _ in range(args.repeat)
        ]
    commands[FEATVIZ] = [
        featviz_command(args.model, args.samples, out / f"featviz-{i}.html", args.device, args.max_size)
        for i in range(args.repeat)
    ]
    conditions = [("", None)] + ([(", one core kept busy by another process", BUSY)] if args.load else [])
    for label, load in conditions:
        busy = subprocess.Popen([sys.executable, "-c", load]) if load else None
        try:
            results = measure(commands)
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
        ordered = {FEATVIZ: results[FEATVIZ], **{k: v for k, v in results.items() if k != FEATVIZ}}
        print("\n".join(timing_table(args.model, args.samples, ordered, label)))
        print()
    if args.memory and args.memory_counts:
        rows = []
        for n in args.memory_counts:
            runs = []
            for i in range(args.repeat):  # allocator noise is tens of MB: the run with the median peak
                runs.append(run(featviz_command(args.model, n, out / f"memory-{n}", args.device, args.max_size, "dir")))
                print(f"memory: {n} samples, run {i + 1}, peak {runs[-1]['peak_rss_MB']} MB", file=sys.stderr)
            rows.append((n, sorted(runs, key=lambda figures: float(figures["peak_rss_MB"]))[len(runs) // 2]))
        print()
        print("\n".join(memory_table(args.model, rows, args.repeat)))


def main() -> None:
    args = parse_args()
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        compare(args, args.keep.resolve())
        return
    with tempfile.TemporaryDirectory(prefix="featviz-compare-") as tmp:
        compare(args, Path(tmp))


if __name__ == "__main__":
    main()
