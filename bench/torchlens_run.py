"""TorchLens' side of :mod:`bench.compare`: its capture of every activation, timed like featviz's report.

The same model and inputs as the reference scripts (:func:`bench.featviz_run.reference_inputs`); times
``torchlens.trace(model, x)`` alone, which runs the model and keeps every operation's output in memory
(no images, no page). Prints one line of ``name=value`` figures: ``torchlens_s=1.27 tiles=0 layers=151``.
Run from the repository root: ``.venv/bin/python -m bench.torchlens_run resnet18 8``.
"""

from __future__ import annotations

import argparse
import time

from bench.featviz_run import reference_inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a torchvision model name, or demo")
    parser.add_argument("samples", type=int, help="number of random inputs")
    args = parser.parse_args()
    import torchlens  # a peer, installed for the benchmark only

    model, x = reference_inputs(args.model, args.samples)
    t0 = time.perf_counter()
    trace = torchlens.trace(model, x)
    seconds = time.perf_counter() - t0
    print(f"torchlens_s={seconds:.3f} tiles=0 layers={len(trace.layers)}")


if __name__ == "__main__":
    main()
