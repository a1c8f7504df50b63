"""`python -m mnistlab.predict SOURCE IMAGE [IMAGE ...] [--tracking-uri URI]`

Prints the predicted class and the class probabilities for each grayscale image (28x28, or
resized to the model's input size). SOURCE is as for `python -m mnistlab.evaluate`. Images are
read as the training data was stored: light strokes on a dark background, as in MNIST.
"""

import argparse
from pathlib import Path

import torch

from mnistlab.cli import one_line_errors
from mnistlab.data import normalize
from mnistlab.errors import UserError
from mnistlab.inference import load_trained


def read_image(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """A grayscale uint8 tensor (H x W) of the image, resized to `size` if it differs."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            gray = image.convert("L")
            if gray.size != (size[1], size[0]):
                gray = gray.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return torch.frombuffer(bytearray(gray.tobytes()), dtype=torch.uint8).view(*size)
    except (OSError, UnidentifiedImageError) as err:
        raise UserError(f"image {path}: not a readable image ({err}); pass PNG or JPEG") from err


@torch.inference_mode()
def predict(source: str, images: list[Path], tracking_uri: str | None = None) -> list[dict]:
    """For each image: its path, predicted class and probabilities (printed, and returned)."""
    trained = load_trained(source, tracking_uri)
    info = trained.data_info
    pixels = torch.stack([read_image(p, tuple(info["in_shape"][1:])) for p in images])
    probs = trained.model(normalize(pixels, info["mean"], info["std"])).softmax(dim=1)
    results = []
    for path, p in zip(images, probs, strict=True):
        k = int(p.argmax())
        results.append({"image": str(path), "class": info["classes"][k], "index": k,
                        "probabilities": p.tolist()})  # fmt: skip
        spread = " ".join(f"{i}:{v:.3f}" for i, v in enumerate(p.tolist()))
        print(f"{path}: {info['classes'][k]} (p={p[k]:.4f})  [{spread}]")
    return results


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    """Parse the command line and predict; bad input gets one line and exit code 2."""
    parser = argparse.ArgumentParser(prog="python -m mnistlab.predict", description=__doc__)
    parser.add_argument("source", help="run output dir, .pth file, runs:/<id>/model.pth or run id")
    parser.add_argument("images", nargs="+", type=Path, help="grayscale image files")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default as train)")
    args = parser.parse_args(argv)
    predict(args.source, args.images, args.tracking_uri)


if __name__ == "__main__":
    main()
