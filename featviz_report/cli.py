"""The ``featviz-report`` command: ``build_parser()`` and ``main(argv) -> int``.

Every user-caused failure becomes one line on stderr, ``featviz-report: error: ...``, and exit code 2;
an unexpected one exit code 1 with a hint to rerun with ``--debug``; Ctrl-C exit code 130.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from ._version import __version__
from .config import CAM_METHODS, COLORMAPS, DEVICES, FORMATS, ORDERS, SCALES, ReportConfig
from .errors import FeatvizError, OutputError, UsageError
from .runtime.progress import Progress
from .runtime.warning_lines import one_line_warnings

if TYPE_CHECKING:
    from torch import nn

    from .models.resolve import LoadedModel
    from .report_data import Report

__all__ = ["build_parser", "main"]

PROG = "featviz-report"
_DEFAULTS = ReportConfig()  # every option's default comes from the API's


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        stray = re.match(r"argument \{scan,site\}: invalid choice: (.*) \(choose", message)
        if stray:  # a word where the report takes none
            message = f"unexpected argument {stray.group(1)}: images go after --samples; the commands are scan, site"
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _integer(least: int, noun: str = "a whole number") -> Callable[[str], int]:
    """An argparse type: an int of at least ``least``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        return value

    return parse


_positive = _integer(1)
_count = _integer(0)
_index = _integer(0, "a class index")


def _megabytes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of MB, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of MB (0: no limit), got {text}")
    return value


REPORT_HELP = (
    "Render what a PyTorch CNN sees (filters, feature maps, statistics, receptive fields) as a static HTML "
    "report. With no --model and no --samples it builds the embedded digits demo."
)
SCAN_HELP = (
    "Scan an image folder of any size: per channel, statistics over every image and the images it responds to "
    "most, in fixed memory. Under 'torchrun --nproc-per-node N -m featviz_report scan ...' the processes share "
    "the images and rank 0 writes the report."
)
SITE_HELP = (
    "Rebuild a training run's site index (index.html and index.json in DIR) from the step reports' JSON "
    "sidecars alone: reports made separately, one per checkpoint (a folder report with its JSON inside, or "
    "NAME.html beside NAME.json, numbered in their names), are gathered into a site this way. With --against "
    "OTHER, a second run's site is drawn on the same charts."
)
EXAMPLES = f"""examples:
  {PROG} -o report.html                     the embedded digits demo, offline
  {PROG} --model torchvision:resnet18 --weights r18.pth --samples photos/ -o r18.html
  {PROG} --model timm:convnext_tiny --samples photos/ --layers 'stages.3.*' -o c.html
  {PROG} --model torchvision:resnet18 --weights r18.pth --samples photos/ --featviz layer2 layer3
  {PROG} --model torchvision:resnet18 --weights old.pth --compare new.pth --samples val/ -o diff.html
  {PROG} scan val/ --model torchvision:resnet50 --weights r50.pth --top-k 8 -o scan.html
  {PROG} site runs/site/                     after a training run recorded reports there
  {PROG} site runs/lr-0.1/ --against runs/lr-0.01/   two runs on the same charts
"""


def build_parser() -> argparse.ArgumentParser:
    """The command line: a report of samples (the default command), ``scan DATA`` and ``site DIR``."""
    parser = _Parser(
        prog=PROG,
        usage=f"{PROG} [--model SPEC --samples PATH ...] [options]\n       {PROG} {{scan,site}} ... (see below)",
        description=REPORT_HELP,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_options(parser, "report")
    commands = parser.add_subparsers(dest="command", title="other commands", metavar="{scan,site}", prog=PROG)
    scan = commands.add_parser(
        "scan",
        usage=f"{PROG} scan DATA [DATA ...] --model SPEC [options]",
        help="scan an image folder of any size: each channel's statistics and top images ('scan --help')",
        description=SCAN_HELP,
    )
    _add_options(scan, "scan")
    site = commands.add_parser(
        "site", help="rebuild a training run's site index ('site --help')", description=SITE_HELP
    )
    site.add_argument("dir", metavar="DIR", help="the site folder, holding one report per step")
    site.add_argument(
        "--against",
        metavar="OTHER",
        help="another run's site folder (only read): its series go on DIR's charts in a second colour, dashed, "
        "at the steps and layers both runs have, with a legend naming both folders",
    )
    site.add_argument("--quiet", action="store_true", help="print nothing on success")
    site.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _add_options(parser: argparse.ArgumentParser, command: str) -> None:
    """The options of a report or a scan, in groups: the inputs first (what every run needs)."""
    _add_inputs(parser.add_argument_group("inputs"), command)
    _add_shown(parser.add_argument_group("what to show"), command)
    featviz = parser.add_argument_group("feature visualisation")
    featviz.add_argument(
        "--featviz",
        metavar="GLOB",
        nargs="+",
        help="layers (or the containers of captured layers) whose channels each get the image that excites them "
        "most, found by optimisation and shown beside their top samples, e.g. 'layer2' or 'conv*'",
    )
    featviz.add_argument(
        "--featviz-steps",
        metavar="N",
        type=_positive,
        default=_DEFAULTS.featviz_steps,
        help=f"optimisation steps per image (default {_DEFAULTS.featviz_steps})",
    )
    featviz.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="where feature visualisations are cached, so a rebuilt report reuses them "
        "(default: $XDG_CACHE_HOME/featviz-report, else ~/.cache/featviz-report)",
    )
    if command == "report":
        _add_comparison(parser.add_argument_group("comparison and training runs"))
    _add_output(parser.add_argument_group("output"), command)
    _add_performance(parser.add_argument_group("performance"), command)
    general = parser.add_argument_group("general")
    general.add_argument("--quiet", action="store_true", help="no progress on stderr (warnings still appear)")
    general.add_argument("--debug", action="store_true", help="show tracebacks")
    general.add_argument("--version", action="version", version=f"{PROG} {__version__}")


def _add_inputs(group: argparse._ArgumentGroup, command: str) -> None:
    if command == "scan":
        group.add_argument("data", metavar="DATA", nargs="+", help="image folders and/or files (searched recursively)")
    else:
        group.add_argument(
            "--samples",
            metavar="PATH",
            nargs="+",
            action="extend",
            help="image files and/or folders (searched recursively, sorted); may be given more than once",
        )
    group.add_argument(
        "--model",
        metavar="SPEC",
        help="torchvision:NAME, timm:NAME, package.module:factory or a .pt2 torch.export archive (default: the demo)",
    )
    group.add_argument(
        "--weights",
        metavar="FILE",
        help="state_dict to load into the model: .safetensors, or a torch file read with weights_only=True",
    )
    group.add_argument(
        "--trust-pickled-model",
        action="store_true",
        help="allow --model to be a pickled torch.nn.Module (torch.save(model)); unpickling runs code from the "
        "file, so use it only for files you made",
    )
    group.add_argument("--labels", metavar="FILE", help="class names: a text file with one per line, or a JSON list")
    group.add_argument(
        "--input-size", metavar="N", type=_positive, help="square input size in pixels (default: the model's, else 224)"
    )
    group.add_argument(
        "--normalize", metavar="SPEC", help="imagenet, none, or MEAN,STD (default: the model's, else none)"
    )


def _add_shown(group: argparse._ArgumentGroup, command: str) -> None:
    group.add_argument(
        "--layers",
        metavar="GLOB",
        nargs="+",
        help="layers to capture by qualified name, e.g. 'layer1.*' (default: every Conv2d and Linear)",
    )
    group.add_argument("--max-channels", metavar="N", type=_positive, help="show at most N channels per layer")
    group.add_argument(
        "--order",
        choices=ORDERS,
        default=_DEFAULTS.order,
        help="channel order: index (default), or by mean, variance or max, highest first; "
        "with --max-channels the top N are kept (costs a second pass over the samples)",
    )
    group.add_argument(
        "--top-k",
        metavar="K",
        type=_positive,
        default=_DEFAULTS.top_k,
        help=f"top-activating {'images' if command == 'scan' else 'samples'} kept per channel "
        f"(default {_DEFAULTS.top_k})",
    )
    group.add_argument(
        "--circuit-inputs",
        metavar="N",
        type=_count,
        default=_DEFAULTS.circuit_inputs,
        help=f"each shown channel's N strongest inputs among the channels of the layers that feed it, linked "
        f"('built from'; default {_DEFAULTS.circuit_inputs}, 0: none)",
    )
    group.add_argument(
        "--no-graph",
        dest="graph",
        action="store_false",
        help="leave out the graph of the model (one forward pass less)",
    )
    if command == "scan":
        return
    group.add_argument(
        "--colormap",
        choices=COLORMAPS,
        default=_DEFAULTS.colormap,
        help=f"colormap of feature maps (default {_DEFAULTS.colormap})",
    )
    group.add_argument(
        "--scale",
        choices=SCALES,
        default=_DEFAULTS.scale,
        help="how maps become colours: channel (min-max per channel, default), layer (one scale per sample, "
        "channels comparable), sigmoid (as in the classic VGG recipe), percentile (1st-99th per channel)",
    )
    group.add_argument(
        "--cam",
        choices=(*CAM_METHODS, "none"),
        help="class activation maps on every sample: gradcam or gradcam++ (default: none; gradcam with --compare)",
    )
    group.add_argument(
        "--cam-layer", metavar="NAME", help="the layer the activation maps are for (default: the last Conv2d)"
    )
    group.add_argument(
        "--target-class", metavar="N", type=_index, help="class the activation maps explain (default: each top class)"
    )
    group.add_argument(
        "--output",
        metavar="SELECTOR",
        help="which output of a model that returns several holds the class scores: a tuple index or dict key "
        "(default: the only N×K tensor, or the 'logits' entry)",
    )


def _add_comparison(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--compare",
        metavar="FILE",
        help="a second state_dict for the same model: one report of what changed from --weights (A) to FILE (B)",
    )
    group.add_argument(
        "--demo-compare",
        action="store_true",
        help="compare the demo model after 5 of its 40 training epochs (A) with the trained one (B)",
    )
    group.add_argument(
        "--demo-site",
        action="store_true",
        help="the demo model's training history as a static site in -o (default 'site'): one report per shipped "
        "checkpoint, each compared with the one before, and an index of trends and predictions over the epochs",
    )


def _add_output(group: argparse._ArgumentGroup, command: str) -> None:
    group.add_argument(
        "-o",
        "--out",
        metavar="OUT",
        help=f"{command} file (default report.html), or folder with --format dir (default report/)",
    )
    group.add_argument(
        "--format",
        choices=FORMATS,
        default=_DEFAULTS.format,
        help="html: one self-contained file; dir: a folder for static hosting",
    )
    group.add_argument(
        "--max-size",
        metavar="MB",
        type=_megabytes,
        default=_DEFAULTS.max_size,
        help=f"size budget of a one-file report (default {_DEFAULTS.max_size:g}; 0: none): over it, the page "
        "keeps what matters most and says what was left out",
    )
    group.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    group.add_argument(
        "--summary",
        action="store_true",
        help="after writing, print the layer table (type, output, parameters, statistics, flags) on stdout",
    )
    group.add_argument("--summary-csv", metavar="FILE", help="also write the layer table as CSV")
    group.add_argument("--title", metavar="TEXT", help="page title (default: the model's name)")
    if command == "scan":
        group.add_argument(
            "--state",
            metavar="DIR",
            help="save the scan's progress here (every 30 s, on Ctrl-C, at the end) and resume from it when re-run",
        )
    else:
        group.add_argument("--strict", action="store_true", help="an unreadable sample file is an error, not a warning")


def _add_performance(group: argparse._ArgumentGroup, command: str) -> None:
    group.add_argument(
        "--device",
        choices=DEVICES,
        default=_DEFAULTS.device,
        help=f"where the model runs (default {_DEFAULTS.device}: cuda, mps, else cpu)",
    )
    group.add_argument(
        "--batch-size",
        metavar="N",
        type=_positive,
        help=f"samples per forward pass (default {ReportConfig.batch_size}, or the batch a .pt2 was exported for)",
    )
    if command == "scan":
        group.add_argument(
            "--loader-workers",
            metavar="N",
            type=_count,
            default=_DEFAULTS.loader_workers,
            help=f"DataLoader processes decoding images (default {_DEFAULTS.loader_workers})",
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = None
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        args = build_parser().parse_args(argv)
        with one_line_warnings(PROG):
            {"scan": _scan, "site": _site, None: _run}[args.command](args)
        return 0
    except SystemExit as exit_:  # --help and --version
        return int(exit_.code or 0)
    except FeatvizError as err:
        if args is not None and args.debug:
            traceback.print_exc()
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"{PROG}: error: out of memory; lower --batch-size or --input-size", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        if args is not None and args.debug:
            traceback.print_exc()
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        print(
            f"{PROG}: error: internal error ({type(err).__name__}: {detail}); rerun with --debug for details",
            file=sys.stderr,
        )
        return 1


def _site(args: argparse.Namespace) -> None:
    from .training.page import write_site

    steps = write_site(Path(args.dir), Path(args.against) if args.against else None)
    if not args.quiet:
        against = f", drawn against {args.against}" if args.against else ""
        print(
            f"wrote {Path(args.dir) / 'index.html'} ({len(steps)} steps, {steps[0].step} to {steps[-1].step}{against})"
        )


def _demo_site(args: argparse.Namespace, model: nn.Module, config: ReportConfig) -> None:
    """Every shipped checkpoint of the demo's training run, recorded into one site."""
    from ._resources import demo_history, demo_samples_dir
    from .models.resolve import load_state_dict
    from .training.recorder import Recorder

    recorder = Recorder(Path(args.out or "site"), [demo_samples_dir()], config, compare=True)
    for epoch, path in demo_history():
        model.load_state_dict(load_state_dict(path))
        recorder.record(model, epoch)
        if not args.quiet:
            print(f"recorded epoch {epoch}", file=sys.stderr)


def _run(args: argparse.Namespace) -> None:
    from ._resources import demo_samples_dir, demo_weights_path
    from .capture.samples import read_labels
    from .models.resolve import copy_with_weights, load_model
    from .pipelines.compare import compare_checkpoints
    from .pipelines.report import build_report

    if args.model and not args.samples:
        raise UsageError("--samples is required with --model (image files or folders)")
    if args.demo_site and args.format != "html":
        raise UsageError("--demo-site writes a folder of folder reports; drop --format")
    if args.demo_site and (args.model or args.weights or args.compare or args.samples):
        raise UsageError(
            "--demo-site uses the demo model, its checkpoints and samples; drop --model/--weights/--samples"
        )
    if args.demo_compare and (args.model or args.weights or args.compare):
        raise UsageError("--demo-compare uses the demo model and its two checkpoints; drop --model/--weights/--compare")
    if (args.compare or args.demo_compare) and args.featviz:
        raise UsageError("--featviz applies to reports and scans, not comparisons; make a report of each checkpoint")
    if (args.compare or args.demo_compare) and args.order != "index":
        raise UsageError("--order does not apply with --compare: channels are ordered by how much they changed")
    if args.demo_site:
        loaded = load_model(None)
        config = ReportConfig(**_shared_config(args, loaded, loaded.labels), colormap=args.colormap, scale=args.scale)
        _demo_site(args, loaded.module, config)
        return
    out = _checked_outputs(args, "--samples", args.samples or ())
    if args.samples and not args.model and not args.demo_compare and all(map(os.path.exists, args.samples)):
        Progress(enabled=False).warn(
            "no --model: these samples go through the embedded digits demo (a 28×28 grey digit classifier); "
            "name yours with --model SPEC"
        )
    weights = demo_weights_path(early=True) if args.demo_compare else args.weights
    with _loading(args):
        loaded = load_model(args.model, weights, args.trust_pickled_model)
    compare = demo_weights_path() if args.demo_compare else args.compare
    labels = read_labels(args.labels) if args.labels else loaded.labels
    cam = args.cam or ("gradcam" if compare else "none")
    config = ReportConfig(
        **_shared_config(args, loaded, labels),
        colormap=args.colormap,
        scale=args.scale,
        cam=None if cam == "none" else cam,
        cam_layer=args.cam_layer,
        target_class=args.target_class,
        output=args.output,
        strict=args.strict,
    )
    samples = args.samples or [demo_samples_dir()]
    if compare is None:
        _summarise(args, build_report(loaded.module, samples, out, config, json_out=args.json))
        return
    names = ("epoch 5", "trained") if args.demo_compare else (_checkpoint_name(args.weights), Path(compare).name)
    after = copy_with_weights(loaded.module, compare, names)
    _summarise(args, compare_checkpoints(loaded.module, after, samples, out, config, json_out=args.json, names=names))


@contextmanager
def _loading(args: argparse.Namespace) -> Iterator[None]:
    """Around resolving a model spec, which takes seconds for a large model: once it has taken a few seconds,
    a line saying which and for how long (not for the demo's small model; under torchrun, rank 0's). Nothing
    sooner, so that a spec refused at once gets its one-line error alone."""
    progress = Progress(enabled=bool(args.model) and not args.quiet and os.environ.get("RANK", "0") == "0")
    with progress.working("model", f"loading {args.model}"):
        yield


def _checked_outputs(args: argparse.Namespace, samples_option: str, samples: Sequence[str]) -> Path:
    """The report's path, once it and ``--json`` are known to be writable and to overwrite no input."""
    from .render.outputs import check_outputs

    out = Path(args.out or ("report" if args.format == "dir" else "report.html"))
    inputs = [(samples_option, Path(p)) for p in samples]
    for option in ("model", "weights", "labels", "compare"):
        value = getattr(args, option, None)
        if value and (option != "model" or Path(value).is_file()):
            inputs.append((f"--{option}", Path(value)))
    check_outputs(out, args.format, Path(args.json) if args.json else None, inputs)
    return out


def _batch_size(option: int | None, fixed: int | None, model: str) -> int:
    """``--batch-size``, or the batch an exported model only accepts, or the default."""
    if fixed is not None and option is not None and option != fixed:
        raise UsageError(
            f"--batch-size {option}: {model} was exported for batches of exactly {fixed}; drop --batch-size or "
            "re-export it with a dynamic batch (torch.export.Dim)"
        )
    return option or fixed or ReportConfig.batch_size


def _checkpoint_name(weights: str | None) -> str:
    return Path(weights).name if weights else "the model's own weights"


def _shared_config(args: argparse.Namespace, loaded: LoadedModel, labels: tuple[str, ...] | None) -> dict[str, Any]:
    """The ReportConfig fields that reports and scans take from the same options."""
    return {
        "title": args.title,
        "model_name": loaded.name,
        "layers": tuple(args.layers or ()),
        "max_channels": args.max_channels,
        "order": args.order,
        "top_k": args.top_k,
        "device": args.device,
        "batch_size": _batch_size(args.batch_size, loaded.batch_size, loaded.name),
        "input_size": args.input_size or loaded.input_size,
        "normalize": args.normalize or loaded.normalize,
        "labels": labels,
        "format": args.format,
        "max_size": args.max_size or None,
        "quiet": args.quiet,
        "graph": args.graph,
        "circuit_inputs": args.circuit_inputs,
        "featviz": tuple(args.featviz or ()),
        "featviz_steps": args.featviz_steps,
        "cache_dir": args.cache_dir,
        "random_weights": loaded.random_weights,
    }


def _scan(args: argparse.Namespace) -> None:
    from .capture.samples import read_labels
    from .models.resolve import load_model
    from .pipelines.scan import scan_dataset

    out = _checked_outputs(args, "DATA", args.data)
    with _loading(args):
        loaded = load_model(args.model, args.weights, args.trust_pickled_model)
    labels = read_labels(args.labels) if args.labels else loaded.labels
    config = ReportConfig(**_shared_config(args, loaded, labels), loader_workers=args.loader_workers)
    _summarise(args, scan_dataset(loaded.module, args.data, out, config, json_out=args.json, state=args.state))


def _summarise(args: argparse.Namespace, report: Report | None) -> None:
    """``--summary``'s table on stdout and ``--summary-csv``'s file (written whole, then renamed into place);
    nothing on a torchrun rank that wrote no report."""
    if report is None:
        return
    from .render.summary import summary_csv, summary_table

    if args.summary_csv:
        target = Path(args.summary_csv)
        partial = target.with_name(f".{target.name}.partial")
        try:
            partial.write_text(summary_csv(report), encoding="utf-8")
            partial.replace(target)
        except OSError as err:
            partial.unlink(missing_ok=True)
            raise OutputError(f"--summary-csv {str(target)!r}: {err.strerror or err}") from None
    if args.summary:
        sys.stdout.write(summary_table(report))
