"""Where a report goes: checks made before any work, and writes that never lose anything of the user's.

Every output (the page, the JSON sidecar) is written under a temporary name beside its target, created
with the user's umask; only when all of them are complete are they renamed into place, so a failure at
any point leaves every existing file as it was. A folder report (``--format dir``) is updated in place
(a scan's as an index and a page per layer, see :func:`featviz_report.render.html.layer_pages`, and
a redirect under each layer page's name in older reports, see :func:`featviz_report.render.anchors.old_pages`)
and lists the files it wrote in a manifest (:data:`MANIFEST`): a later report replaces and removes
those files only; a folder whose ``index.html`` featviz-report did not write, or that is, holds or lies
inside a samples folder (its images would become samples), is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from markupsafe import Markup

from ..config import IMAGE_SUFFIXES
from ..errors import OutputError, UsageError
from ..report_data import Png, Report
from ..runtime.progress import Progress
from .anchors import old_pages
from .html import INDEX, data_uri, layer_pages, redirect_html, render_html
from .sidecar import json_text

__all__ = [
    "MANIFEST",
    "check_apart",
    "check_output",
    "check_outputs",
    "check_api_outputs",
    "api_inputs",
    "write_report",
    "write_now",
]

MANIFEST = ".featviz-report.json"
IMAGE_DIR = "img"


def _fail(target: Path, err: OSError) -> OutputError:
    return OutputError(f"cannot write {str(target)!r}: {err.strerror or err}")


_PSEUDO = ("/dev", "/proc", "/sys")


def check_output(out: Path, fmt: str) -> None:
    """Fail before any work when ``out`` cannot be written or would replace something not ours. A link is
    followed: the report replaces what it points at, never the link (so ``/dev/stdout`` is refused)."""
    name = repr(str(out))
    real = out.resolve()
    for where in {*_link_chain(out), real}:
        if any(where == Path(p) or Path(p) in where.parents for p in _PSEUDO):
            raise OutputError(f"{name} is not a regular file (a device, pipe or socket); name a file")
    if not real.parent.is_dir():
        raise OutputError(f"cannot write {name}: folder {str(out.parent)!r} does not exist")
    if not os.access(real.parent, os.W_OK):
        raise OutputError(f"cannot write {name}: folder {str(out.parent)!r} is not writable")
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        return
    except OSError as err:
        raise _fail(out, err) from None
    if fmt == "dir":
        if not stat.S_ISDIR(mode):
            raise OutputError(f"{name} is not a folder; --format dir writes a folder")
        owned = owned_files(real)
        for page in ("index.html", *sorted(p.name for p in real.glob("layer-*.html"))):
            if os.path.lexists(real / page) and page not in owned:
                article = "an" if page == "index.html" else "a"
                raise OutputError(f"{name} holds {article} {page} that featviz-report did not write; not replacing it")
        images = real / IMAGE_DIR
        if os.path.lexists(images) and (images.is_symlink() or not images.is_dir()):
            raise OutputError(f"{str(out / IMAGE_DIR)!r} is not a folder of the report's own; not writing into it")
        if not os.access(real, os.W_OK):
            raise OutputError(f"cannot write {name}: the folder is not writable")
    elif stat.S_ISDIR(mode):
        raise OutputError(f"{name} is a folder; name a file, or use --format dir")
    elif not stat.S_ISREG(mode):
        raise OutputError(f"{name} is not a regular file (a device, pipe or socket); name a file")


def _link_chain(path: Path) -> list[Path]:
    """``path`` and every path its links lead through (``r.html`` → ``/dev/stdout`` → ``/proc/self/fd/1``)."""
    chain = [Path(os.path.abspath(path))]
    while len(chain) < 40 and chain[-1].is_symlink():
        chain.append(Path(os.path.abspath(chain[-1].parent / os.readlink(chain[-1]))))
    return chain


def check_outputs(
    out: Path | None, fmt: str, json_out: Path | None = None, inputs: Sequence[tuple[str, Path]] = ()
) -> None:
    """Every output checked, and none of them one of the ``inputs`` ((option, path) pairs) or each other;
    an input folder holds every image file under it."""
    if out is not None:
        check_output(out, fmt)
    if json_out is not None:
        in_new_folder = (
            fmt == "dir" and out is not None and not out.exists() and json_out.resolve().parent == out.resolve()
        )
        if not in_new_folder:
            check_output(json_out, "html")
        if out is not None and fmt == "html" and _same_file(out, json_out):
            raise UsageError(f"-o and --json name the same file {str(out)!r}; give them different names")
        if out is not None and fmt == "dir" and _inside(json_out, out) in ("index.html", MANIFEST):
            raise UsageError(f"--json {str(json_out)!r} would overwrite the report folder's own file")
    targets = [("--json", json_out)] if json_out is not None else []
    if out is not None:
        targets.append(("-o", out / "index.html" if fmt == "dir" else out))
    if out is not None and fmt == "dir":
        check_apart(out, inputs)
    for option, target in targets:
        for source, path in inputs:
            sample = path.is_dir() and target.suffix.lower() in IMAGE_SUFFIXES and _inside(target, path) is not None
            if sample or _same_file(target, path):
                raise UsageError(f"{option} {str(target)!r} is also an input ({source}); it would be overwritten")


def check_apart(folder: Path, inputs: Sequence[tuple[str, Path]]) -> None:
    """Fail unless the report folder ``folder`` and every input folder are apart: neither the same folder
    nor one inside the other, however either is spelt (relative, ``..``, links). A folder report writes
    images (``img/``), which a later run over the samples folder would take as samples."""
    for source, path in inputs:
        if not path.is_dir():
            continue
        if _inside(folder, path) is not None:
            where = "is" if _inside(path, folder) == "." else "is inside"
        elif _inside(path, folder) is not None:
            where = "holds"
        else:
            continue
        raise UsageError(
            f"-o {str(folder)!r} {where} the samples folder {str(path)!r} ({source}): a report folder's images "
            "would become samples; write the report to a folder apart from the samples"
        )


def check_api_outputs(out: str | Path | None, json_out: str | Path | None, fmt: str, samples: object = ()) -> None:
    """:func:`check_outputs` for the Python API, whose ``samples`` are a path, paths or a tensor."""
    inputs = api_inputs(samples)
    check_outputs(None if out is None else Path(out), fmt, None if json_out is None else Path(json_out), inputs)


def api_inputs(samples: object) -> list[tuple[str, Path]]:
    """The Python API's ``samples`` (a path, paths or a tensor) as the (option, path) pairs checks take."""
    given = [samples] if isinstance(samples, (str, Path)) else samples if isinstance(samples, (list, tuple)) else []
    return [("samples", Path(p)) for p in given if isinstance(p, (str, Path))]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def _inside(path: Path, folder: Path) -> str | None:
    """``path`` relative to ``folder`` (posix), or ``None`` when it is not inside it."""
    try:
        return path.resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        return None


def owned_files(folder: Path) -> dict[str, set[str]]:
    """The files (relative, posix) a report in ``folder`` wrote and that still hold what it wrote, with
    the SHA-256 digests its manifest records for them. Only names a report writes count (``index.html``,
    a scan's ``layer-<id>.html``, ``img/<hash>.png`` or ``.webp``, a ``*.json`` sidecar), only regular
    files in the folder or its ``img/`` (no links),
    and only when their content matches: a forged or stale manifest cannot make a user's file ours.
    A report written before manifests owns its ``index.html`` (when it is featviz-report's page) and the
    images whose name is their content's hash."""
    recorded = _manifest(folder)
    if recorded is None:
        recorded = _legacy_files(folder)
    owned = {}
    for name, digests in recorded.items():
        if _OWNABLE.fullmatch(name) and name != MANIFEST and _holds(folder, name, digests):
            owned[name] = digests
    return owned


_OWNABLE = re.compile(r"index\.html|layer-[A-Za-z0-9._~@+-]+\.html|img/[0-9a-f]{20}\.(?:png|webp)|[^/\\]+\.json")
_SUFFIXES = {"image/png": "png", "image/webp": "webp"}


def _manifest(folder: Path) -> dict[str, set[str]] | None:
    path = folder / MANIFEST
    if not path.is_file() or path.is_symlink():
        return None
    try:
        files = json.loads(path.read_text(encoding="utf-8")).get("files", {})
    except (OSError, ValueError, AttributeError):
        return {}
    if not isinstance(files, dict):
        return {}
    return {
        name: {d for d in digests if isinstance(d, str)}
        for name, digests in files.items()
        if isinstance(name, str) and isinstance(digests, list)
    }


def _legacy_files(folder: Path) -> dict[str, set[str]]:
    index = folder / "index.html"
    try:
        with open(index, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return {}
    if b'<meta name="generator" content="featviz-report' not in head:
        return {}
    images: dict[str, set[str]] = {p.relative_to(folder).as_posix(): set() for p in (folder / IMAGE_DIR).glob("*.png")}
    return {"index.html": {_digest(index)}, **images}


def _holds(folder: Path, name: str, digests: set[str]) -> bool:
    """``folder/name`` is a regular file right there (no link on the way) with one of ``digests`` (an
    image: the hash its name carries)."""
    path = folder / name
    try:
        if any(stat.S_ISLNK(os.lstat(p).st_mode) for p in (path, path.parent) if p != folder):
            return False
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        digest = _digest(path)
    except OSError:
        return False
    if name.startswith(f"{IMAGE_DIR}/"):
        return digest.startswith(Path(name).stem)
    return digest in digests


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _open_new(target: Path) -> tuple[Path, IO[bytes]]:
    """A new file beside ``target`` under a temporary name, with the permissions the umask gives."""
    while True:
        tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        except OSError as err:
            raise _fail(target, err) from None
        return tmp, os.fdopen(fd, "wb")


class _Staging:
    """Temporary files waiting to be renamed onto their targets, all at once or not at all."""

    def __init__(self) -> None:
        self.pending: list[tuple[Path, Path]] = []
        self.undo: list[Callable[[], None]] = []

    @contextmanager
    def text(self, target: Path) -> Iterator[IO[str]]:
        tmp, raw = _open_new(target)
        self.pending.append((tmp, target))
        try:
            with raw, open(raw.fileno(), "w", encoding="utf-8", newline="\n", closefd=False) as handle:
                yield handle
        except OSError as err:
            raise _fail(target, err) from None

    def commit(self) -> None:
        for tmp, target in self.pending:
            try:
                os.replace(tmp, target)
            except OSError as err:
                raise _fail(target, err) from None
        self.pending = []
        self.undo = []

    def abort(self) -> None:
        for tmp, _ in self.pending:
            tmp.unlink(missing_ok=True)
        for step in reversed(self.undo):
            try:
                step()
            except OSError:
                pass


class _OverBudget(Exception):
    """The page grew past its budget while being written (nothing is left behind)."""


def write_report(
    report: Report,
    out: str | Path | None,
    fmt: str,
    json_out: str | Path | None,
    progress: Progress,
    max_bytes: int | None = None,
) -> bool:
    """Write the page (or folder) and the JSON sidecar; they appear together when all are complete. A
    single page that would exceed ``max_bytes`` is abandoned as soon as it does: then nothing is written
    and the result is False."""
    staging = _Staging()
    folder: _Folder | None = None
    shown = (out, json_out)
    out = None if out is None else Path(os.path.realpath(out))  # a link's target is replaced, not the link
    json_out = None if json_out is None else Path(os.path.realpath(json_out))
    try:
        if out is not None and fmt == "dir":
            folder = _Folder(Path(out), staging, None if json_out is None else _inside(Path(json_out), Path(out)))
        if out is not None and folder is None:  # first: a page over its budget is abandoned before the JSON is made
            with staging.text(Path(out)) as handle:
                _write_page(handle, render_html(report, data_uri), max_bytes)
        if json_out is not None:
            with staging.text(Path(json_out)) as handle:
                handle.write(json_text(report))
        if folder is not None:
            for name, page in _pages(report):
                with staging.text(folder.out / name) as handle:
                    handle.writelines(render_html(report, folder.link, folder=True, page=page))
            for name, target in _redirects(report):
                with staging.text(folder.out / name) as handle:
                    handle.write(redirect_html(target))
            folder.commit()
        staging.commit()
    except _OverBudget:
        staging.abort()
        return False
    except BaseException:
        staging.abort()
        raise
    if out is not None:
        progress.message(f"wrote {shown[0]} ({_size(out) / 1e6:.1f} MB)")
    if json_out is not None:
        progress.message(f"wrote {shown[1]}")
    return True


def _pages(report: Report) -> list[tuple[str, str | None]]:
    """(file name, ``render_html``'s page) of each page of a report folder: a scan's index and layer
    pages, or any other report's one page."""
    pages: list[tuple[str, str | None]] = [(INDEX, None if report.dataset is None else INDEX)]
    if report.dataset is not None:
        pages += [(name, slug) for slug, name in layer_pages(report).items()]
    return pages


def _redirects(report: Report) -> list[tuple[str, str]]:
    """(old file name, its layer's page) of a scan folder's layer pages that older reports named otherwise."""
    if report.dataset is None:
        return []
    return old_pages([layer.name for layer in report.layers], [layer.slug for layer in report.layers])


def _write_page(handle: IO[str], chunks: Iterator[str], max_bytes: int | None) -> None:
    """The page's chunks, each encoded once: the bytes written are the bytes counted against the budget."""
    handle.flush()
    out = handle.buffer  # type: ignore[attr-defined]
    written = 0
    for chunk in chunks:
        data = chunk.encode("utf-8")
        written += len(data)
        if max_bytes is not None and written > max_bytes:
            raise _OverBudget
        out.write(data)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum((path / name).stat().st_size for name in _manifest(path) or {} if (path / name).is_file())


class _Folder:
    """A report folder updated in place: new images first, then the manifest listing old and new files
    with their digests, then the page (with the JSON sidecar when it lives inside), then the old
    report's leftovers go, each checked again to still be what it wrote."""

    def __init__(self, out: Path, staging: _Staging, json_name: str | None) -> None:
        self.out = out
        self.staging = staging
        if not out.exists():
            try:
                out.mkdir()
            except OSError as err:
                raise _fail(out, err) from None
            staging.undo.append(lambda: _remove_if_empty(out))
        self.old = owned_files(out)
        self.new: dict[str, set[str]] = {}
        self.json_name = json_name

    def link(self, png: Png) -> Markup:
        """Each image once, named by its content (hex digits: nothing to escape)."""
        digest = hashlib.sha256(png.data).hexdigest()
        name = f"{IMAGE_DIR}/{digest[:20]}.{_SUFFIXES[png.mime]}"
        if name not in self.new:
            self.new[name] = {digest}
            path = self.out / name
            if not _holds(self.out, name, set()):
                self._write_image(path, png.data)
        return Markup(name)

    def _write_image(self, path: Path, data: bytes) -> None:
        images = path.parent
        if not images.is_dir():
            try:
                images.mkdir()
            except OSError as err:
                raise _fail(images, err) from None
            self.staging.undo.append(lambda: _remove_if_empty(images))
        write_now(path, data)
        self.staging.undo.append(lambda: path.unlink(missing_ok=True))

    def commit(self) -> None:
        """Record every file that may be ours before the page is swapped in, and afterwards only the
        new report's: an interrupted update leaves nothing unlisted behind."""
        for tmp, target in self.staging.pending:
            if target.parent == self.out and (_OWNABLE.fullmatch(target.name) or target.name == self.json_name):
                self.new[target.name] = {_digest(tmp)}
        both = {name: self.old.get(name, set()) | self.new.get(name, set()) for name in {*self.old, *self.new}}
        self._write_manifest(both)
        self.staging.commit()
        self._write_manifest(self.new)
        for name in sorted(set(self.old) - set(self.new)):
            if _holds(self.out, name, self.old[name]):
                (self.out / name).unlink(missing_ok=True)
        _remove_if_empty(self.out / IMAGE_DIR)

    def _write_manifest(self, files: dict[str, set[str]]) -> None:
        listed = {name: sorted(digests) for name, digests in sorted(files.items())}
        text = json.dumps({"generator": "featviz-report", "files": listed}, indent=1) + "\n"
        write_now(self.out / MANIFEST, text.encode("utf-8"))


def write_now(path: Path, data: bytes) -> None:
    """``data`` at ``path`` at once, atomically (outside the staging: a folder's images and manifest)."""
    tmp, raw = _open_new(path)
    try:
        with raw:
            raw.write(data)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise _fail(path, err) from None


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass
