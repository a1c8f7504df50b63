"""The fast data path and its options: DataLoader parity, decode cache, bf16, compile, threads."""

import torch

from conftest import only_run
from mnistlab.config import compose
from mnistlab.parts import build_part, build_parts
from mnistlab.recipe import train


def test_tensor_and_dataloader_paths_give_the_same_inputs_and_splits(data_root, tmp_path):
    common = [f"data.root={data_root}", f"data.cache_dir={tmp_path}"]
    fast = build_part(compose([*common, "data.loader=tensor"]).data, "data", seed=3)
    slow = build_part(compose([*common, "data.loader=torch"]).data, "data", seed=3)
    for split in ("train", "val", "test"):
        (x_fast, y_fast), (x_slow, y_slow) = (
            next(d.batches(getattr(d, split), 256)) for d in (fast, slow)
        )
        assert x_fast.shape == x_slow.shape == (256, 1, 28, 28)
        assert torch.equal(y_fast, y_slow)
        assert torch.allclose(x_fast, x_slow, atol=1e-5)
    assert len(slow.train.samples) == len(fast.train) == 55_000


def test_shuffled_batches_cover_the_split_once_and_keep_the_last_partial_batch():
    cfg = compose(["data=synthetic", "data.train_size=1000", "data.val_size=10"])
    data = build_part(cfg.data, "data", seed=0)
    batches = list(data.batches(data.train, 64, torch.Generator().manual_seed(1)))
    assert [len(y) for _, y in batches] == [64] * 15 + [990 - 15 * 64]
    seen = torch.cat([y for _, y in batches]).sort().values
    assert torch.equal(seen, data.train.labels.sort().values)
    again = list(data.batches(data.train, 64, torch.Generator().manual_seed(2)))
    assert not torch.equal(batches[0][1], again[0][1])  # another epoch, another order


def test_decoded_dataset_is_cached_and_a_corrupt_cache_is_rebuilt(data_root, tmp_path):
    cfg = compose([f"data.root={data_root}", f"data.cache_dir={tmp_path}"])
    first = build_part(cfg.data, "data", seed=0)
    (cache,) = tmp_path.glob("MNIST-*.pt")
    cache.write_bytes(cache.read_bytes()[:1000])  # truncate it
    second = build_part(cfg.data, "data", seed=0)
    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.test.labels, second.test.labels)
    assert cache.stat().st_size > 40_000_000  # rewritten whole
    third = build_part(cfg.data, "data", seed=0)
    assert torch.equal(first.val.images, third.val.images)


def test_cpu_threads_come_from_device_threads_then_a_sweep_jobs_share():
    before = torch.get_num_threads()
    try:
        base = ["data=synthetic", "data.train_size=256", "data.val_size=64", "device=cpu"]
        assert build_parts(compose([*base, "device.threads=3"]), threads=1).threads == 3
        assert torch.get_num_threads() == 3  # set by hand: it wins over a job's share
        assert build_parts(compose(base), threads=1).threads == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_bf16_autocast_threads_and_compile_train_on_cpu(tmp_path, store):
    before = torch.get_num_threads()
    try:
        cfg = compose(
            [
                "data=synthetic",
                "epochs=2",
                "device=cpu",
                "device.amp=bf16",
                "device.threads=1",
                "device.compile=default",
                f"mlflow.tracking_uri={store}",
            ]
        )
        best = train(cfg, output_dir=tmp_path / "out")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    _, run = only_run(store)
    assert run.info.status == "FINISHED"
    assert best > 0.8 and run.data.metrics["test/acc"] > 0.8
    # the saved weights belong to the plain model, not the compiled wrapper
    state = torch.load(tmp_path / "out" / "model.pth")
    assert all(not key.startswith("_orig_mod") for key in state)
