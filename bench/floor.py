"""The least a process can do for the tutorial recipe: the floor under `python -m train`'s wall.

    python bench/floor.py [--epochs 1] [--jobs 1] [--threads 0]

Imports torch, reads MNIST's uint8 tensors from mnistlab's data cache (as a run on a warm cache
does), and trains the MLP 784-512-512-10 with fused Adam (lr 1e-3, batch 64) for `--epochs` per
job on 55,000 of its 60,000 training images, normalised as a run's, evaluating each epoch on the
other 5,000 (the last ones; a run's are drawn by its seed) and on the test set: no config, no
checks, no checkpoint, no record, no plots. Prints `first step S` (seconds from FLOOR_START,
the launcher's clock, if set, else from this script's first line), `epoch E: train S s` (job 0's
training seconds of each epoch, as a run's `epoch_time_s`) and `job K: val acc V, test acc A`.
`--jobs N` trains N fresh models in this one process, as a sweep's worker would;
`--threads N` sets torch's thread count (0: torch's default).
"""

import time

T0 = time.time()  # before torch's import: a first step's time counts it

import argparse  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from mnistlab.data import read_cached  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = Path(os.environ.get("MNISTLAB_DATA", HERE.parents[1] / "shared" / "data")).resolve()
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mnistlab"
MEAN, STD = 0.1307, 0.3081  # conf/data/mnist.yaml's


def job(k: int, epochs: int, data: dict, start: float) -> None:
    """One fresh model trained for `epochs` epochs, each evaluated on val and test; prints the
    first step's time on job 0 and the last epoch's accuracies."""
    torch.manual_seed(k)
    images, labels = data["train_images"][:55000], data["train_labels"][:55000]
    held_out = data["train_images"][55000:], data["train_labels"][55000:]
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512),
                          nn.ReLU(), nn.Linear(512, 10))  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    for epoch in range(epochs):
        began = time.perf_counter()
        order = torch.randperm(len(labels))
        for begin in range(0, len(labels), 64):
            idx = order[begin : begin + 64]
            loss = F.cross_entropy(model(normalised(images[idx])), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if k == epoch == begin == 0:
                print(f"first step {time.time() - start:.3f}", flush=True)
        if k == 0:
            print(f"epoch {epoch + 1}: train {time.perf_counter() - began:.3f} s", flush=True)
        val_acc = accuracy(model, *held_out)
        test_acc = accuracy(model, data["test_images"], data["test_labels"])
    print(f"job {k}: val acc {val_acc:.4f}, test acc {test_acc:.4f}", flush=True)


def normalised(images: torch.Tensor) -> torch.Tensor:
    """uint8 images as the network's float inputs, as mnistlab's data path makes them."""
    return (images.float() / 255 - MEAN) / STD


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """The share of `images` the model classifies right."""
    return (model(normalised(images)).argmax(1) == labels).float().mean().item()


def main() -> None:
    """Read the data once, then train the jobs one after another."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1, help="epochs per job")
    parser.add_argument("--jobs", type=int, default=1, help="fresh models trained in turn")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    start = float(os.environ.get("FLOOR_START", T0))
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as mnistlab's default device.flush_denormal
    data = read_cached("torchvision.datasets.MNIST", ROOT, False, CACHE)
    for k in range(args.jobs):
        job(k, args.epochs, data, start)


if __name__ == "__main__":
    main()
