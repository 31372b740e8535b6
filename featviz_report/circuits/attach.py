"""Circuit inputs (:mod:`.stage`) into the report's sections: sources named by their sections' slugs, the
weights' spatial patterns drawn as one small atlas per layer, and in a comparison A's strengths beside B's."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from ..capture.filters import diverging
from ..render.encode import png_palette, tile_atlas
from ..report_data import Grid, LayerCircuit, LayerSection, Png
from .rules import Key
from .strength import ATTRIBUTION, Inputs

__all__ = ["with_circuits", "SEQUENCE"]

SEQUENCE = "a Linear over a sequence (N×L×D): its features' inputs are given for maps and vectors only"

Found = Mapping[Key, Inputs | str]


def with_circuits(
    sections: Sequence[LayerSection],
    keys: Sequence[Key],
    found: Found,
    samples: int,
    before: Found | None = None,
) -> tuple[LayerSection, ...]:
    """``sections`` (one per layer call in ``keys``) with their circuits, or why they have none; with
    ``before`` (checkpoint A's, in a comparison) each circuit also carries A's."""
    slugs = {key: section.slug for key, section in zip(keys, sections)}
    done = []
    for key, section in zip(keys, sections):
        item = found.get(key)
        if isinstance(item, str):
            section = dataclasses.replace(section, circuit_unknown=item)
        elif item is None and found and section.kind == "sequence" and section.type == "Linear":
            section = dataclasses.replace(section, circuit_unknown=SEQUENCE)
        elif item is not None:
            circuit = _circuit(item, slugs, samples)
            earlier = before.get(key) if before is not None else None
            if isinstance(earlier, Inputs):
                circuit = dataclasses.replace(
                    circuit, before=_circuit(earlier, slugs, samples), weight_before=_strengths_in(earlier, item)
                )
            section = dataclasses.replace(section, circuit=circuit)
        done.append(section)
    return tuple(done)


def _circuit(inputs: Inputs, slugs: Mapping[Key, str], samples: int) -> LayerCircuit:
    """The page's view of one layer's inputs: sources with a section only (an input from a layer the report
    does not show has no card to link to), the one feeding most slots first."""
    present = [i for i, key in enumerate(inputs.sources) if key in slugs]
    kept = np.full(len(inputs.sources) + 1, -1)  # index -1 (an empty slot) stays -1
    kept[present] = np.arange(len(present))
    source = kept[inputs.source]
    counts = np.bincount(source[source >= 0], minlength=len(present))
    order = np.argsort(-counts, kind="stable")
    rank = np.full(len(present) + 1, -1)
    rank[order] = np.arange(len(present))
    source = rank[source]
    names = tuple(slugs[inputs.sources[present[i]]] for i in order)
    patterns = None if inputs.patterns is None else _atlas(inputs.patterns, source >= 0)
    used = samples if inputs.method == ATTRIBUTION else 0
    return LayerCircuit(inputs.method, names, inputs.outputs, source, inputs.channel, inputs.weight, patterns, used)


def _atlas(patterns: np.ndarray, filled: np.ndarray) -> Grid:
    """Every slot's pattern as a diverging tile (each scaled to its own largest |value|, white for an empty
    slot), a row per shown channel, in one palette PNG."""
    rows, cols, height, width = patterns.shape
    scale = np.abs(patterns).reshape(rows, cols, -1).max(-1)[..., None, None]
    tiles = np.where(filled[..., None, None], diverging(patterns, scale), 128).astype(np.uint8)
    atlas = tile_atlas(tiles.reshape(rows * cols, height, width), cols)
    return Grid(
        Png(png_palette(atlas, "diverging"), atlas.shape[1], atlas.shape[0]), rows, cols, height, width, rows * cols, 1
    )


def _strengths_in(earlier: Inputs, later: Inputs) -> np.ndarray:
    """For each of ``later``'s inputs, its strength in ``earlier`` (NaN for an empty slot, or a source that
    does not reach the layer there)."""
    found = np.full(later.weight.shape, np.nan)
    for which, key in enumerate(later.sources):
        if key not in earlier.sources:
            continue
        rows, slots = np.nonzero(later.source == which)
        start = earlier.offsets[earlier.sources.index(key)]
        found[rows, slots] = earlier.table[later.outputs[rows], start + later.channel[rows, slots]]
    return found
