"""`data=imagefolder`: a user's own PNG/JPEG classes in torchvision's ImageFolder layout, trained,
evaluated and predicted through the CLI, and its bad folders answered in one line."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import cli_env, only_run, run_cli
from mnistlab.config import compose, validate
from mnistlab.errors import UserError
from mnistlab.parts import build_part
from mnistlab.plots import misclassified_grid

CLASSES = ("bars", "dots")


def draw(kind: str, size: int, seed: int, rgb: bool) -> Image.Image:
    """A noisy picture of horizontal bars or of dots."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(size, size, generator=g) * 60
    if kind == "bars":
        pixels[::4] += 180
    else:
        pixels[1::5, 1::5] += 190
    array = pixels.clamp(0, 255).to(torch.uint8).numpy()
    image = Image.fromarray(array, mode="L")
    return image.convert("RGB") if rgb else image


def make_folder(root: Path, per_class: int = 60, rgb: bool = False, size: int = 20) -> Path:
    """root/train/<class>/*.png and root/test/<class>/*.jpg, drawn for the test."""
    for split, n, suffix in (("train", per_class, "png"), ("test", per_class // 3, "jpg")):
        for c, kind in enumerate(CLASSES):
            folder = root / split / kind
            folder.mkdir(parents=True)
            for i in range(n):
                draw(kind, size, 1000 * c + i + (0 if split == "train" else 500), rgb).save(
                    folder / f"{i}.{suffix}"
                )
    return root


@pytest.mark.parametrize("channels", [1, 3])
def test_a_folder_of_images_trains_evaluates_and_predicts_with_its_class_names(tmp_path, channels):
    root = make_folder(tmp_path / "shapes", rgb=channels == 3)
    args = ["data=imagefolder", f"data.root={root}", f"data.channels={channels}",
            "data.val_size=20", f"data.cache_dir={tmp_path / 'cache'}", "model=cnn",
            "device=cpu", "epochs=3", "batch_size=16"]  # fmt: skip
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    _, run = only_run(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run.data.metrics["test/acc"] >= 0.9
    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    tool = [sys.executable, "-m", "mnistlab.evaluate", str(run_dir)]
    done = subprocess.run(tool, cwd=tmp_path, env=cli_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"test/acc  {run.data.metrics['test/acc']:.4f}" in done.stdout
    assert all(f"  {name} " in done.stdout for name in CLASSES)  # per-class lines by name
    image = root / "test" / "dots" / "0.jpg"
    tool = [sys.executable, "-m", "mnistlab.predict", str(run_dir), str(image)]
    done = subprocess.run(tool, cwd=tmp_path, env=cli_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"{image}: dots (p=")
    cached = list((tmp_path / "cache").glob("imagefolder-shapes-*.pt"))
    assert len(cached) == 1  # decoded once; a second build reads it
    data = build_part(compose(args[:5]).data, "data", seed=0)
    assert data.in_shape == (channels, 28, 28) and data.classes == list(CLASSES)
    assert len(data.val) == 20 and len(data.train) == 100 and len(data.test) == 40
    pixels = data.train.images.float() / 255
    assert data.mean == pytest.approx(float(pixels.mean()), rel=1e-5)  # measured on train


def test_an_unwritable_cache_only_costs_the_decode_next_time(tmp_path):
    root = make_folder(tmp_path / "shapes", per_class=12)
    (tmp_path / "a_file").write_text("not a folder")
    args = ["data=imagefolder", f"data.root={root}", "data.val_size=4",
            f"data.cache_dir={tmp_path / 'a_file' / 'cache'}"]  # fmt: skip
    for _ in range(2):  # decoded each time
        data = build_part(compose(args).data, "data", seed=0)
        assert (len(data.train), len(data.val), len(data.test)) == (20, 4, 8)
    assert (tmp_path / "a_file").read_text() == "not a folder"


def bad(root: Path, what: str) -> Path:
    """An image folder with one thing wrong."""
    make_folder(root, per_class=6)
    if what == "no train":
        (root / "train").rename(root / "training")
    elif what == "no test":
        (root / "test").rename(root / "testing")
    elif what == "empty class":
        (root / "train" / "stripes").mkdir()
    elif what == "unreadable":
        (root / "train" / "dots" / "broken.png").write_bytes(b"not a png at all")
    elif what == "unknown test class":
        (root / "test" / "bars").rename(root / "test" / "lines")
    return root


@pytest.mark.parametrize(
    ("what", "message"),
    [
        ("no train", "no train/ folder in it; put the images in"),
        ("no test", "no test/ folder in it"),
        ("empty class", "/train/stripes holds no .png or .jpg image"),
        ("unreadable", "cannot read the image"),
        ("unknown test class", "test classes ['lines'] are not in train/"),
    ],
)
def test_bad_image_folders_answer_in_one_line(tmp_path, what, message):
    root = bad(tmp_path / "images", what)
    cfg = compose(["data=imagefolder", f"data.root={root}", "data.val_size=2",
                   f"data.cache_dir={tmp_path / 'cache'}"])  # fmt: skip
    validate(cfg)
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
        build_part(cfg.data, "data", seed=0)
    if what == "unreadable":
        assert "broken.png" in str(err.value)
    result = run_cli(["data=imagefolder", f"data.root={root}", "data.val_size=2", "epochs=1",
                      "device=cpu"], cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("Error: data.root") and message in result.stderr


def test_the_root_must_be_given(tmp_path):
    result = run_cli(["data=imagefolder", "epochs=1"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "Error: data.root is not set: give it in the option's YAML or as data.root=..."
    )


def test_the_mistakes_plot_shows_colour_and_grey_images(tmp_path):
    # an RGB run with mistakes once failed at its end: imshow cannot take C x H x W
    red = torch.zeros(3, 3, 20, 20, dtype=torch.uint8)
    red[:, 0] = 255
    grey = torch.full((3, 1, 20, 20), 128, dtype=torch.uint8)
    for images in (red, grey, grey[:, 0]):  # N x 3 x H x W, N x 1 x H x W, N x H x W
        path = tmp_path / f"mistakes-{images.dim()}-{images.shape[1]}.png"
        misclassified_grid(images.numpy(), [0, 1, 0], [1, 0, 1], [0.9, 0.8, 0.7], CLASSES, path)
        colours = {c for _, c in Image.open(path).convert("RGB").getcolors(1 << 20)}
        shown = (255, 0, 0) if images is red else (128, 128, 128)
        assert shown in colours and (255, 255, 255) in colours  # the images on a white page
    none = tmp_path / "no-mistakes.png"  # a perfect test split: an empty page, no error
    misclassified_grid(red[:0].numpy(), [], [], [], CLASSES, none)
    assert Image.open(none).size[0] > 100
