"""Dataset scans: every channel's top-activating images over a whole image folder, in fixed memory.

Files stream through the model with a ``DataLoader`` (worker processes decode; pinned memory on CUDA).
Capture hooks reduce each layer's output to per-channel statistics and per-sample peaks (no tiles), and a
:class:`~featviz_report.capture.accumulate.ChannelAccumulator` per layer keeps running statistics and the top-k
(value, image index, peak position) in memory that does not depend on the number of images.

Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank scans its :class:`~featviz_report.scan.dataset.ShardSampler`
share, then the ranks ``all_gather`` their accumulators (backend ``nccl`` on CUDA, ``gloo`` otherwise) and
merge them; top-k ties go to the lower image index, so the merged top-k is exactly a single process's.

A scan is resumable: every ``CHECKPOINT_SECONDS``, on Ctrl-C and at the end, each rank saves its shard
(accumulators and how many of its images are done) to ``STATE/rank-R-of-W.npz`` with a fingerprint of
the model's weights, the file list and the options; a re-run with the same state folder goes on from
there, and one with anything changed is refused rather than mixing two scans.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from ..capture.accumulate import ChannelAccumulator
from ..capture.hooks import capturing
from ..capture.job import Job
from ..capture.layer_record import new_accumulator
from ..capture.weights import Computed
from ..errors import InputError, OutputError
from ..runtime.device import pick_device
from ..runtime.heap import release_freed_memory
from ..runtime.threads import ThreadPolicy
from .dataset import ImageFiles, ShardSampler

__all__ = ["ScanResult", "scan_device", "run_scan", "CHECKPOINT_SECONDS"]

CHECKPOINT_SECONDS = 30.0


@dataclass
class ScanResult:
    """Merged over every rank: per layer (first call of each module) its accumulator and output shape."""

    accumulators: dict[str, ChannelAccumulator]
    shapes: dict[str, tuple[int, ...]]
    images: int  # scanned
    skipped: int  # unreadable files
    ranks: int
    rank: int
    seconds: float
    computed: Computed = field(default_factory=dict)  # the weights layers make in forward, as this rank saw them


@dataclass
class _Shard:
    """One rank's running state."""

    accumulators: dict[str, ChannelAccumulator]
    shapes: dict[str, tuple[int, ...]]
    done: int = 0  # of this rank's images, in its order
    skipped: int = 0


def _world() -> int:
    """How many processes scan: torchrun's ``WORLD_SIZE`` (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def scan_device(name: str) -> torch.device:
    """The device this process scans on: ``name``'s (:func:`~featviz_report.runtime.device.pick_device`), and
    under torchrun on CUDA, its ``LOCAL_RANK``'s GPU, made the current one (NCCL and pinned memory use it)."""
    device = pick_device(name)
    if _world() > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


@contextmanager
def _distributed(device: torch.device) -> Iterator[tuple[int, int]]:
    """(world size, rank) from torchrun's environment; the process group (for ``device``) is joined for the
    block (and left after, unless the caller had joined it already)."""
    if _world() <= 1:
        yield 1, 0
        return
    joined = not dist.is_initialized()
    if joined:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        yield dist.get_world_size(), dist.get_rank()
    finally:
        if joined:
            dist.destroy_process_group()


def _fingerprint(job: Job[ImageFiles]) -> str:
    """What makes two scans the same scan: weights and architecture, files (names and sizes), preprocessing,
    options."""
    config = job.config
    digest = hashlib.sha256(job.weights.encode())
    for path in job.sample_set.paths:
        digest.update(os.fsencode(path) + f"\0{path.stat().st_size}\0".encode())
    digest.update(json.dumps([repr(job.sample_set.prep), config.layers, config.top_k, config.batch_size]).encode())
    return digest.hexdigest()


def _state_file(state: Path, rank: int, world: int) -> Path:
    return state / f"rank-{rank}-of-{world}.npz"


def _save(path: Path, shard: _Shard, fingerprint: str) -> None:
    """The shard, atomically (a temporary file renamed into place)."""
    arrays: dict[str, np.ndarray] = {
        "meta": np.frombuffer(
            json.dumps(
                {
                    "fingerprint": fingerprint,
                    "done": shard.done,
                    "skipped": shard.skipped,
                    "layers": list(shard.accumulators),
                    "shapes": {k: list(v) for k, v in shard.shapes.items()},
                }
            ).encode(),
            dtype=np.uint8,
        )
    }
    for index, accumulator in enumerate(shard.accumulators.values()):
        arrays.update({f"{index}/{key}": value for key, value in accumulator.arrays().items()})
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot save the scan state to {str(path)!r}: {err.strerror or err}") from None


def _load(path: Path, fingerprint: str) -> _Shard | None:
    """A saved shard of this very scan; None when there is none; an error when it belongs to another."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            if meta["fingerprint"] != fingerprint:
                raise InputError(
                    f"{str(path)!r} holds the state of a different scan (other weights, files or options); "
                    "remove it or choose another --state folder"
                )
            accumulators = {}
            for index, name in enumerate(meta["layers"]):
                prefix = f"{index}/"
                arrays = {key[len(prefix) :]: data[key] for key in data.files if key.startswith(prefix)}
                accumulators[name] = ChannelAccumulator.from_arrays(arrays)
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"cannot read the scan state {str(path)!r} ({err}); remove it to start over") from None
    shapes = {name: tuple(shape) for name, shape in meta["shapes"].items()}
    return _Shard(accumulators, shapes, meta["done"], meta["skipped"])


@contextmanager
def _deferred_interrupt() -> Iterator[list[bool]]:
    """Ctrl-C sets a flag instead of raising, so it lands between batches (the shard stays consistent)."""
    flag = [False]

    def handler(_signum: int, _frame: FrameType | None) -> None:
        flag[0] = True

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave Ctrl-C alone
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def run_scan(job: Job[ImageFiles], state: Path | None = None, loader_workers: int = 0) -> ScanResult:
    """Scan ``job``'s files (this rank's share of them, under torchrun) with the model already on ``job.device``
    (see :func:`scan_device`), and merge every rank's result."""
    with _distributed(job.device) as (world, rank):
        return _scan(job, state, loader_workers, world, rank)


def _scan(job: Job[ImageFiles], state: Path | None, loader_workers: int, world: int, rank: int) -> ScanResult:
    started = time.perf_counter()
    model, dataset, config, progress, device = job.model, job.sample_set, job.config, job.progress, job.device
    fingerprint = "" if state is None else _fingerprint(job)
    if state is not None:
        try:
            state.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"cannot use {str(state)!r} as the scan's state folder: {err.strerror or err}") from None
    saved = _load(_state_file(state, rank, world), fingerprint) if state is not None else None
    shard = saved or _Shard({}, {})
    if saved is not None:
        progress.message(f"resuming: {saved.done} images of this rank's share were done")
    sampler = ShardSampler(dataset, world, rank, skip=shard.done)
    total = len(sampler.indices())
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=loader_workers,
        pin_memory=device.type == "cuda",
    )
    last_save = time.perf_counter()
    with (
        ThreadPolicy() as threads,
        capturing(model, job.layers, scale=None) as capture,
        torch.inference_mode(),
        _deferred_interrupt() as stop,
    ):
        for inputs, indices, ok in _batches(loader, stop):
            threads.refresh()
            shard.skipped += int((~ok).sum())
            if bool(ok.any()):
                model(inputs[ok].to(device=device, dtype=job.dtype, non_blocking=True))
                _fold(shard, capture.drain(), indices[ok].numpy(), config.top_k)
            shard.done += len(indices)
            release_freed_memory()
            progress.rate("scan", shard.done * world, total * world, time.perf_counter() - started)
            if state is not None and (stop[0] or time.perf_counter() - last_save > CHECKPOINT_SECONDS):
                _save(_state_file(state, rank, world), shard, fingerprint)
                last_save = time.perf_counter()
            if stop[0]:
                break
        if state is not None:
            _save(_state_file(state, rank, world), shard, fingerprint)
        if stop[0]:
            raise KeyboardInterrupt
    merged = _merged(shard, [name for name, _ in job.layers], world, rank, time.perf_counter() - started)
    return dataclasses.replace(merged, computed=capture.weights.computed(job.layers))


def _batches(loader: DataLoader, stop: list[bool]) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:  # type: ignore[type-arg]
    """The loader's batches; after Ctrl-C (its workers got it too and may be gone), no more."""
    iterator = iter(loader)
    while not stop[0]:
        try:
            yield next(iterator)
        except StopIteration:
            return
        except Exception:  # noqa: BLE001 - a worker killed by the same Ctrl-C: stop, the shard is saved
            if stop[0]:
                return
            raise


def _fold(shard: _Shard, drained: list, ids: np.ndarray, top_k: int) -> None:  # type: ignore[type-arg]
    """One batch's reductions into the shard (the first call of each module only)."""
    for (name, call), shape, reduced in drained:
        if call:
            continue
        accumulator = shard.accumulators.get(name)
        if accumulator is None:
            accumulator = shard.accumulators[name] = new_accumulator(shape, top_k)
            shard.shapes[name] = shape
        accumulator.add(reduced, 0, ids)


def _merged(shard: _Shard, layers: list[str], world: int, rank: int, seconds: float) -> ScanResult:
    """Every rank's shard merged (in rank order), on every rank."""
    shards = [shard]
    if world > 1:
        payload = {
            "arrays": {name: acc.arrays() for name, acc in shard.accumulators.items()},
            "shapes": shard.shapes,
            "done": shard.done,
            "skipped": shard.skipped,
        }
        gathered: list[dict | None] = [None] * world  # type: ignore[type-arg]
        dist.all_gather_object(gathered, payload)
        shards = [
            _Shard(
                {name: ChannelAccumulator.from_arrays(arrays) for name, arrays in g["arrays"].items()},
                g["shapes"],
                g["done"],
                g["skipped"],
            )
            for g in gathered
            if g is not None
        ]
    merged: dict[str, ChannelAccumulator] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for part in shards:
        for name, accumulator in part.accumulators.items():
            if name in merged:
                merged[name].merge(accumulator)
            else:
                merged[name] = ChannelAccumulator.from_arrays(accumulator.arrays())
                shapes[name] = tuple(part.shapes[name])
    order = [name for name in layers if name in merged]
    skipped = sum(part.skipped for part in shards)
    images = sum(part.done for part in shards) - skipped
    return ScanResult({name: merged[name] for name in order}, shapes, images, skipped, world, rank, seconds)
