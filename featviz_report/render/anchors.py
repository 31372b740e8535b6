"""Layer ids: a section's address (``#layer-<id>``), its channels' (``#layer-<id>-channel-<c>``) and a scan
folder's layer page (``layer-<id>.html``), and what keeps the addresses of older reports working.

An id is the module's qualified name as it is (``layer3.0.conv1``, ``Mixed_5b.branch1x1.conv``), so a reader
can guess it. Names come from the model and may hold anything but ``.`` (spaces, ``#``, ``/``, quotes, any
letter): every character outside ``A-Z a-z 0-9 . _ -`` is written ``~XX``, the upper-case hex of each of its
UTF-8 bytes, ``~`` itself included. ``~`` is unreserved in URLs and allowed in file names everywhere, so an id
is a valid HTML id, a URL fragment that needs no percent-encoding, and part of a file name on Linux, macOS and
Windows; no two names escape alike, and an id never ends in ``-channel-<n>`` (that ``-`` is ``~2D``: the
address would be another layer's channel). A module's later call (the report's ``conv1 (call 2)``) is ``conv1@2``
(``@`` never comes from a name, whose own ``@`` is ``~40``). Ids that still coincide get ``-2``, ``-3``...

Reports before this rule lowercased the name and turned every other run of characters into ``-``
(:func:`legacy_ids`: ``layer1.0.conv1`` → ``layer1-0-conv1``): the page maps those addresses to the new ones
(:func:`old_ids`) and a scan folder keeps a redirect under each old page name (:func:`old_pages`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence

__all__ = ["layer_ids", "legacy_ids", "old_ids", "page_names", "old_pages"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_CALL = re.compile(r"(.*) \(call (\d+)\)")  # featviz_report.capture.layer_record.call_name
_CHANNEL = re.compile(r"(.+)-channel-\d+")
_TAIL = re.compile(r"-channel-\d+$")
MAX_FILE_ID = 200  # a page's file name keeps at most this much of its id: file systems allow 255 bytes


def _escape(name: str) -> str:
    return _UNSAFE.sub(lambda m: "".join(f"~{b:02X}" for b in m[0].encode("utf-8")), name)


def _untailed(text: str) -> str:
    """``text`` with a closing ``-channel-<n>`` written ``~2Dchannel-<n>``: such an id would be another
    layer's channel address (``x-channel-1`` is channel 1 of ``x``)."""
    return _TAIL.sub(lambda m: "~2D" + m[0][1:], text)


def _unique(bases: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    result = []
    for base in bases:
        candidate, n = base, 1
        while candidate in seen:
            n += 1
            candidate = _untailed(f"{base}-{n}")
        seen.add(candidate)
        result.append(candidate)
    return result


def _layer_id(name: str) -> str:
    call = _CALL.fullmatch(name)
    if call:
        return f"{_escape(call[1]) or 'layer'}@{call[2]}"
    return _untailed(_escape(name)) or "layer"


def layer_ids(names: Sequence[str]) -> list[str]:
    """Readable, unique ids for the layers ``names`` (``layer1.0.conv1``, ``conv1 (call 2)`` → ``conv1@2``)."""
    return _unique(_layer_id(name) for name in names)


def legacy_ids(names: Sequence[str]) -> list[str]:
    """The ids reports gave ``names`` before :func:`layer_ids` (``layer1.0.conv1`` → ``layer1-0-conv1``)."""
    return _unique(re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "layer" for name in names)


def old_ids(names: Sequence[str], ids: Sequence[str]) -> dict[str, str]:
    """Each layer's old id by its id, where they differ and the old address cannot mean anything on a new
    page: not another layer's id, nor one of its channels' (``<id>-channel-<c>``)."""
    taken = set(ids)
    return {
        new: old
        for new, old in zip(ids, legacy_ids(names))
        if old != new and old not in taken and not ((m := _CHANNEL.fullmatch(old)) and m[1] in taken)
    }


def page_names(ids: Sequence[str]) -> list[str]:
    """The file name of each layer's page in a scan folder, ``layer-<id>.html``, unique even where case does
    not count (macOS, Windows): a name that matches an earlier one but for case, or an id longer than
    :data:`MAX_FILE_ID`, gets ``+<n>`` or ``+<hash>`` (``+`` is no id's)."""
    stems = [
        i if len(i) <= MAX_FILE_ID else f"{i[: MAX_FILE_ID - 13]}+{hashlib.sha256(i.encode()).hexdigest()[:12]}"
        for i in ids
    ]
    seen: set[str] = set()
    names = []
    for stem in stems:
        candidate, n = stem, 1
        while candidate.lower() in seen:
            n += 1
            candidate = f"{stem}+{n}"
        seen.add(candidate.lower())
        names.append(f"layer-{candidate}.html")
    return names


def old_pages(names: Sequence[str], ids: Sequence[str]) -> list[tuple[str, str]]:
    """(old file name, new file name) of each layer page that an older scan folder named otherwise, leaving
    out any old name that is, but for case, a page of this folder (that page wins)."""
    pages = page_names(ids)
    taken = {page.lower() for page in pages}
    old = [f"layer-{slug}.html" for slug in legacy_ids(names)]
    return [
        (before, now)
        for before, now in zip(old, pages)
        if before.lower() not in taken and len(before) <= MAX_FILE_ID  # a longer name no file system took
    ]
