"""Train the embedded demo model (featviz_report/demo/model.py) on scikit-learn's bundled digits.

Reproducible: fixed seeds, deterministic CPU kernels, one thread. The 8×8 digits (values 0..16) get a
one-pixel black border and are upsampled bilinearly to 28×28, white stroke on black as in MNIST. A
stratified 20 % of them is held out: the accuracy printed is measured there, and the ten sample PNGs
written to samples/digits/ (one per class) come from it too, so the report never shows a training
image. A 4×4 grid of conv1's 16 filters is saved as a visual check (by default to the temp folder).
The weights after epoch 5 (about 79 % held-out) are saved too: the "before" of ``--demo-compare``, and
those before training and after epochs 1, 2, 10 and 20 in ``featviz_report/demo/history/``: with epochs
5 and 40, the training history ``--demo-site`` shows.
``--site DIR`` also records the run with :class:`featviz_report.Recorder` every ``--record-every`` epochs
(and before the first), on the shipped sample digits, and prints the time training and recording took:
recording restores torch's random number generators, so the weights come out the same with or without it.
Run: ``.venv/bin/python scripts/train_demo.py`` (about 15 s on 2 cores; dev-only: needs scikit-learn).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from featviz_report import Recorder, ReportConfig
from featviz_report.demo.model import DigitsCNN

ROOT = Path(__file__).resolve().parent.parent
SEED = 0


def digits_28() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as N×1×28×28 floats in [0, 1], and their labels."""
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.pad(images, (1, 1, 1, 1))
    images = F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False).clamp(0, 1)
    return images, torch.tensor(data.target)


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shifts of up to ±2 pixels and small rotations/scalings, as an affine grid."""
    n = batch.shape[0]
    angle = (torch.rand(n, generator=generator) - 0.5) * (2 * np.pi / 12)  # ±15°
    scale = 1 + (torch.rand(n, generator=generator) - 0.5) * 0.2
    shift = (torch.rand(n, 2, generator=generator) - 0.5) * (4 / 14)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    return F.grid_sample(batch, grid, align_corners=False, padding_mode="zeros")


def roughness(weight: torch.Tensor) -> torch.Tensor:
    """Squared differences between neighbouring kernel taps: penalising it makes conv1's filters smooth
    stroke and edge detectors instead of pixel noise that fits the blurry upsampled digits just as well."""
    return (weight.diff(dim=2) ** 2).sum() + (weight.diff(dim=3) ** 2).sum()


def accuracy(model: DigitsCNN, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``images`` classified as ``labels``, in eval mode."""
    model.eval()
    with torch.no_grad():
        return float((model(images).argmax(1) == labels).float().mean())


def save_filter_grid(weight: torch.Tensor, path: Path, zoom: int = 16) -> None:
    """conv1's 16 single-channel kernels as a 4×4 grid, each min-max scaled and enlarged (nearest neighbour),
    on a mid-grey two-pixel gutter."""
    tiles = []
    for kernel in weight.detach()[:, 0]:
        scaled = (kernel - kernel.min()) / (kernel.max() - kernel.min()).clamp_min(1e-12)
        tile = np.kron((scaled.numpy() * 255).round().astype(np.uint8), np.ones((zoom, zoom), np.uint8))
        tiles.append(np.pad(tile, 2, constant_values=128))
    rows = [np.hstack(tiles[row : row + 4]) for row in range(0, len(tiles), 4)]
    Image.fromarray(np.vstack(rows), mode="L").save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--smoothness", type=float, default=0.02, help="weight of the conv1 roughness penalty")
    parser.add_argument("--weights", type=Path, default=ROOT / "featviz_report" / "demo" / "digits_cnn.pt")
    parser.add_argument("--samples", type=Path, default=ROOT / "samples" / "digits")
    parser.add_argument("--early-epoch", type=int, default=5, help="also save the weights after this epoch")
    parser.add_argument(
        "--early-weights",
        type=Path,
        default=ROOT / "featviz_report" / "demo" / "digits_cnn_early.pt",
        help="where the early checkpoint goes (the 'before' of featviz-report --demo-compare)",
    )
    parser.add_argument("--history", type=Path, default=ROOT / "featviz_report" / "demo" / "history")
    parser.add_argument("--history-epochs", default="0,1,2,10,20", help="epochs whose weights go to --history")
    parser.add_argument("--site", type=Path, help="record the run as a featviz-report site here")
    parser.add_argument("--record-every", type=int, default=5, help="with --site: record every N epochs")
    parser.add_argument(
        "--filters", type=Path, default=Path(tempfile.gettempdir()) / "conv1_filters.png", help="conv1 filter grid PNG"
    )
    args = parser.parse_args()

    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    images, labels = digits_28()
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=0.2, stratify=labels.numpy(), random_state=SEED
    )
    x_train, y_train = images[train_idx], labels[train_idx]
    x_test, y_test = images[test_idx], labels[test_idx]

    model = DigitsCNN()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=3e-3, total_steps=args.epochs * ((len(x_train) + 63) // 64)
    )
    generator = torch.Generator().manual_seed(SEED)
    history = {int(e) for e in args.history_epochs.split(",") if e}
    args.history.mkdir(parents=True, exist_ok=True)
    recorder = Recorder(args.site, ROOT / "samples" / "digits", ReportConfig(input_size=28)) if args.site else None
    recording = 0.0

    def checkpoint(epoch: int) -> None:
        nonlocal recording
        if epoch in history:
            torch.save(
                {k: v.detach().clone() for k, v in model.state_dict().items()}, args.history / f"epoch-{epoch:02d}.pt"
            )
        if recorder is not None and epoch % args.record_every == 0:
            start = time.perf_counter()
            recorder.record(model, epoch)
            recording += time.perf_counter() - start

    started = time.perf_counter()
    checkpoint(0)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), 64):
            batch = order[start : start + 64]
            logits = model(augment(x_train[batch], generator))
            loss = F.cross_entropy(logits, y_train[batch]) + args.smoothness * roughness(model.conv1.weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        if epoch + 1 == args.early_epoch:
            model.eval()
            torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, args.early_weights)
            print(f"early_accuracy={accuracy(model, x_test, y_test):.4f} after epoch {epoch + 1}: {args.early_weights}")
        if (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1}: loss {loss.item():.4f} held-out accuracy {accuracy(model, x_test, y_test):.4f}")
        checkpoint(epoch + 1)
    total = time.perf_counter() - started
    if recorder is not None:
        print(
            f"train_s={total - recording:.2f} record_s={recording:.2f} overhead={recording / (total - recording):.1%}"
        )

    model.eval()
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, args.weights)
    print(f"heldout_accuracy={accuracy(model, x_test, y_test):.4f} on {len(y_test)} held-out images")
    print(f"wrote {args.weights} ({args.weights.stat().st_size} bytes)")
    save_filter_grid(model.conv1.weight, args.filters)
    print(f"wrote {args.filters}")

    args.samples.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        predicted = model(x_test).argmax(1)
    for digit in range(10):
        index = next(i for i in range(len(y_test)) if y_test[i] == digit and predicted[i] == digit)
        pixels = (x_test[index, 0].numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(args.samples / f"digit-{digit}.png", optimize=False)
    print(f"wrote 10 held-out digits to {args.samples}")


if __name__ == "__main__":
    main()
