"""GPU benchmark: mnistlab's epoch time with each speed option, next to the tutorial's loop.

    python bench/gpu.py                   # on a CUDA machine: under 5 minutes
    python bench/gpu.py --device cpu --quick   # a smoke check of the script itself

For MLP and CNN at batch 64 and 512: fp32, bf16 autocast, bf16 + torch.compile, and
bf16 + compile with CUDA graphs (reduce_overhead). Each variant trains `--epochs` epochs on
device-resident data; the last epoch's time is reported (the first includes compilation),
with the test accuracy after training.
"""

import argparse
import time

import torch

from mnistlab.config import compose
from mnistlab.device import resolve_device
from mnistlab.loop import TrainState, evaluate, seed_everything, train_epoch
from mnistlab.parts import build_parts
from mnistlab.recipe import loop_settings

VARIANTS = {
    "fp32": ["device.amp=none", "device.compile=off"],
    "bf16": ["device.amp=bf16", "device.compile=off"],
    "bf16+compile": ["device.amp=bf16", "device.compile=default"],
    "bf16+cudagraphs": ["device.amp=bf16", "device.compile=reduce_overhead"],
}


def sync(device: torch.device) -> None:
    """Wait for queued device work, so timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(overrides: list[str], epochs: int) -> tuple[float, float]:
    """(last epoch seconds, test accuracy) of one variant."""
    cfg = compose(overrides)
    seed_everything(cfg.seed)
    parts = build_parts(cfg)
    state, opts, seconds = TrainState(), loop_settings(cfg), 0.0
    for _ in range(epochs):
        sync(parts.device)
        start = time.perf_counter()
        train_m = train_epoch(parts, state, opts)
        sync(parts.device)
        seconds = time.perf_counter() - start
        state.end_epoch({"train/acc": train_m["acc"], "val/acc": train_m["acc"]})
    test = evaluate(parts.net, parts.data, parts.data.test, 10_000, cfg.device.amp)
    return seconds, test["acc"]


def main() -> None:
    """Print one row per (model, batch size, variant)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--data-root", default=None, help="data.root (else MNISTLAB_DATA)")
    parser.add_argument("--quick", action="store_true", help="synthetic data, one variant")
    args = parser.parse_args()

    base = [f"device={args.device}", "train.log_every=1000000"]
    if args.quick:
        base.append("data=synthetic")
    elif args.data_root:
        base.append(f"data.root={args.data_root}")
    variants = dict(list(VARIANTS.items())[:1]) if args.quick else VARIANTS
    print(f"torch {torch.__version__}, device {resolve_device(compose(base).device.type)}")
    if torch.cuda.is_available():
        print(torch.cuda.get_device_name())
    print(f"{'model':<6}{'batch':>6}  {'variant':<17}{'epoch s':>8}{'test acc':>10}")
    for model in ("mlp", "cnn"):
        for batch in (64, 512):
            for name, extra in variants.items():
                overrides = [*base, f"model={model}", f"batch_size={batch}", *extra]
                seconds, acc = run(overrides, args.epochs)
                print(f"{model:<6}{batch:>6}  {name:<17}{seconds:>8.3f}{acc:>10.4f}", flush=True)


if __name__ == "__main__":
    main()
