"""Time one training epoch of the tutorial recipe three ways, side by side in one process.

    python bench/epoch.py [--repeats 3] [--device cpu]

- tutorial: the tutorial's loop (torchvision DataLoader + ToTensor, per-sample PIL decode);
- mnistlab: mnistlab's own path (`mnistlab.loop.train_epoch` on device-resident uint8 data);
- floor:    preloaded, normalised float tensors and a bare loop (no metrics, no logging).

Each way trains the same MLP (784-512-512-10) from the same seed for one epoch at batch 64;
the ways take turns, `--repeats` times, and the best time of each is compared.
"""

import argparse
import contextlib
import io
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import ToTensor

from mnistlab.config import compose
from mnistlab.device import resolve_device
from mnistlab.loop import TrainState, seed_everything, train_epoch
from mnistlab.parts import Parts, build_part
from mnistlab.recipe import loop_settings
from mnistlab.schedules import Schedule

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"
ROOT = str(Path(os.environ.get("MNISTLAB_DATA", DEFAULT_ROOT)).resolve())


def tutorial_epoch(cfg, device) -> float:
    """The tutorial's train_loop, as written (with its print every 100 steps)."""
    loader = DataLoader(
        datasets.MNIST(ROOT, train=True, download=False, transform=ToTensor()),
        batch_size=cfg.batch_size,
        shuffle=True,
    )
    model = build_part(cfg.model, "model", in_shape=(1, 28, 28), num_classes=10).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    criterion = torch.nn.CrossEntropyLoss()
    start = time.perf_counter()
    model.train()
    with contextlib.redirect_stdout(io.StringIO()):
        for i, (img, label) in enumerate(loader):
            img, label = img.to(device), label.to(device)
            optimizer.zero_grad()
            loss = criterion(model(img), label)
            loss.backward()
            optimizer.step()
            if (i + 1) % 100 == 0:
                print(f"Step [{i + 1:>6d} / {len(loader):>6d}] Loss: {loss:>7f}")
    return time.perf_counter() - start


def mnistlab_epoch(cfg, data) -> float:
    """mnistlab's training path: the same function `python -m train` calls each epoch."""
    model = build_part(cfg.model, "model", in_shape=data.in_shape, num_classes=data.num_classes)
    model = model.to(data.device)
    optimizer = build_part(cfg.optimizer, "optimizer", params=model.parameters())
    start = time.perf_counter()
    parts = Parts(data, model, model, optimizer, data.device, Schedule())
    train_epoch(parts, TrainState(), loop_settings(cfg))
    return time.perf_counter() - start


def floor_epoch(cfg, data) -> float:
    """Preloaded float tensors and the barest loop: the cost of the arithmetic alone."""
    images, labels = data.inputs(data.train.images), data.train.labels
    model = build_part(cfg.model, "model", in_shape=data.in_shape, num_classes=data.num_classes)
    model = model.to(data.device)
    optimizer = build_part(cfg.optimizer, "optimizer", params=model.parameters())
    start = time.perf_counter()
    order = torch.randperm(len(labels), device=data.device)
    for begin in range(0, len(labels), cfg.batch_size):
        idx = order[begin : begin + cfg.batch_size]
        loss = F.cross_entropy(model(images[idx]), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    loss.item()  # wait for the device
    return time.perf_counter() - start


def main() -> None:
    """Run the three ways in turn and print their times and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="epochs timed per way")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    args = parser.parse_args()

    cfg = compose([f"data.root={ROOT}", f"device={args.device}"])
    device = resolve_device(cfg.device.type)
    data = build_part(cfg.data, "data", seed=cfg.seed).to(device)
    ways = {
        "tutorial": lambda: tutorial_epoch(cfg, device),
        "mnistlab": lambda: mnistlab_epoch(cfg, data),
        "floor": lambda: floor_epoch(cfg, data),
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.repeats):
        for name, run in ways.items():
            seed_everything(cfg.seed)
            times[name].append(run())

    best = {name: min(ts) for name, ts in times.items()}
    print(
        f"one epoch of the tutorial recipe on {device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, best of {args.repeats}"
    )
    print(f"{'way':<10}{'best s':>9}{'median s':>10}")
    for name, ts in times.items():
        print(f"{name:<10}{best[name]:>9.2f}{statistics.median(ts):>10.2f}")
    print(f"tutorial / mnistlab = {best['tutorial'] / best['mnistlab']:.2f}x  (target >= 2.5x)")
    print(f"mnistlab / floor    = {best['mnistlab'] / best['floor']:.2f}x  (target <= 1.15x)")


if __name__ == "__main__":
    main()
