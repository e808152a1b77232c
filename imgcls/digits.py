"""``imgcls digits OUT``: scikit-learn's bundled handwritten digits written out as an ImageFolder.

1,797 real 8x8 grayscale digits (10 classes, shipped inside scikit-learn, no download) become
``OUT/<digit>/<index>.png`` upscaled to ``--size`` pixels, so every stage can run offline on real
data. Grayscale PNGs are fine: ``load_image`` brings every mode to RGB.
"""
from __future__ import annotations

import logging
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from imgcls.models.core.ownership import check_replaceable, write_marker
from imgcls.stage_parser import StageParser

log = logging.getLogger(__name__)

DEFAULT_SIZE = 32


def digit_image(pixels_8x8: np.ndarray, size: int,
                resample: Image.Resampling = Image.Resampling.BICUBIC) -> Image.Image:
    """One digit (values 0..16) as a white-on-black ``size`` x ``size`` grayscale image."""
    gray = np.clip(np.rint(pixels_8x8 * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").resize((size, size), resample)


def write_digits(out: str | Path, limit_per_class: int | None = None, size: int = DEFAULT_SIZE) -> dict[str, int]:
    """Write the digits (the first ``limit_per_class`` of each class) under ``out``; counts per class."""
    from sklearn.datasets import load_digits

    if limit_per_class is not None and limit_per_class < 1:
        raise ValueError(f"limit_per_class must be at least 1, got {limit_per_class}")
    if size < 8:
        raise ValueError(f"size must be at least 8, got {size}")
    digits = load_digits()
    out = Path(out)
    write_marker(out, "digits")
    counts: Counter[str] = Counter()
    for index, (pixels, target) in enumerate(zip(digits.images, digits.target)):
        name = str(int(target))
        if limit_per_class is not None and counts[name] >= limit_per_class:
            continue
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        digit_image(pixels, size).save(folder / f"{index:04d}.png")
        counts[name] += 1
    return dict(sorted(counts.items()))


def main(argv: list[str] | None = None) -> int:
    parser = StageParser(
        prog="imgcls digits", description="Write scikit-learn's handwritten digits as an ImageFolder (OUT/<digit>/*.png)."
    )
    parser.add_argument("out", type=Path, help="output folder (created)")
    parser.add_argument("--limit-per-class", type=int, default=None, help="at most N images per digit")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help=f"side length in pixels (default {DEFAULT_SIZE})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.out.exists() and not args.out.is_dir():
        log.error("imgcls digits: %s exists and is not a directory; give a folder to write the images into", args.out)
        return 2
    try:
        check_replaceable(args.out, "digits", overwrite=True, flag="OUT")  # its own dataset: rewritten in place
        counts = write_digits(args.out, args.limit_per_class, args.size)
    except ValueError as exc:
        log.error("imgcls digits: %s", exc)
        return 2
    except OSError as exc:
        log.error("imgcls digits: cannot write under %s: %s", args.out, exc.strerror or exc)
        return 2
    log.info("wrote %d images in %d classes to %s", sum(counts.values()), len(counts), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
