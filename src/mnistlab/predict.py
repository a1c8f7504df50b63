"""`python -m mnistlab.predict SOURCE IMAGE [IMAGE ...] [--tracking-uri URI]`

Prints the predicted class and the class probabilities for each image (converted to the model's
channels, grayscale or RGB, and resized to its input size). SOURCE is as for
`python -m mnistlab.evaluate`. Images are read as the training data was stored: for MNIST, light
strokes on a dark background.
"""

import argparse
from pathlib import Path

import torch

from mnistlab.cli import one_line_errors
from mnistlab.data import normalize
from mnistlab.errors import UserError
from mnistlab.inference import SOURCE_HELP, load_trained


def read_image(path: Path, shape: tuple[int, int, int]) -> torch.Tensor:
    """The image as the model's inputs were stored: uint8, grayscale (H x W) for 1 channel or
    RGB (3 x H x W), resized to the model's input size if it differs."""
    from PIL import Image, UnidentifiedImageError

    channels, height, width = shape
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
            pixels = pixels.view(height, width, channels)
            return pixels[..., 0] if channels == 1 else pixels.permute(2, 0, 1)
    except (OSError, UnidentifiedImageError) as err:
        raise UserError(f"image {path}: not a readable image ({err}); pass PNG or JPEG") from err


@torch.inference_mode()
def predict(source: str, images: list[Path], tracking_uri: str | None = None) -> list[dict]:
    """For each image: its path, predicted class and probabilities (printed, and returned)."""
    trained = load_trained(source, tracking_uri)
    info = trained.data_info
    pixels = torch.stack([read_image(p, tuple(info["in_shape"])) for p in images])
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
    parser = argparse.ArgumentParser(prog="mnistlab predict", description=__doc__)
    parser.add_argument("source", help=SOURCE_HELP)
    parser.add_argument("images", nargs="+", type=Path, help="grayscale image files")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default as train)")
    args = parser.parse_args(argv)
    predict(args.source, args.images, args.tracking_uri)


if __name__ == "__main__":
    main()
