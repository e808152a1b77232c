"""A generated corpus of malformed and unusual ``POST /classify`` requests with their documented outcome.

Nothing binary is committed: every payload is built here from Pillow, numpy and a few byte strings.
``build_corpus(limits)`` returns ``Case``s; each holds the keyword arguments of an ``httpx`` POST,
the expected HTTP status and reason code (``imgcls.service.protocols.classify.schemas.REASON_STATUS``; ``None`` for 200) and, for
200 answers, how many images must come back classified. ``python tests/robustness/corpus.py DIR``
writes the image payloads to DIR for manual probing (curl, other servers).
"""
from __future__ import annotations

import argparse
import base64
import io
import random
import struct
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# exif_transpose undoes orientation N with these; we store the inverse so the upright image comes back.
INVERSE_OF_ORIENTATION: dict[int, Image.Transpose | None] = {
    1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@dataclass(frozen=True)
class Limits:
    """The server limits the corpus is built against (set through IMGCLS_* variables)."""

    max_body_bytes: int
    max_images: int
    max_image_bytes: int
    max_pixels: int

    def env(self) -> dict[str, str]:
        return {"IMGCLS_MAX_BODY_BYTES": str(self.max_body_bytes), "IMGCLS_MAX_IMAGES": str(self.max_images),
                "IMGCLS_MAX_IMAGE_BYTES": str(self.max_image_bytes), "IMGCLS_MAX_PIXELS": str(self.max_pixels)}


@dataclass(frozen=True)
class Case:
    name: str
    group: str  # "file" (one uploaded file), "request" (the HTTP request itself), "top_k", "limit"
    request: dict[str, Any]  # keyword arguments of httpx.Client.post("/classify", ...)
    status: int
    reason: str | None = None  # None: 200
    classified: int = 0  # for 200: images that must come back with predictions
    failed: int = 0  # for 200: images that must come back with an error
    payload: bytes | None = field(default=None, repr=False)  # the image bytes, for `main`


# ---------------------------------------------------------------- image payloads
def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth gradients plus noise: compresses like a photo, has structure to resize."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    channels = [127 + 120 * np.sin((c + 1) * 3.1 * xs / max(width, 1) + (3 - c) * 2.3 * ys / max(height, 1))
                for c in range(3)]
    array = np.stack(channels, axis=-1) + rng.normal(0, 10, size=(height, width, 3))
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "RGB")


def encode(image: Image.Image, fmt: str, **save_args: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def png_with_fake_size(width: int, height: int) -> bytes:
    """A ~100-byte PNG whose header claims width x height (a decompression bomb's shape), CRC fixed."""
    data = bytearray(encode(Image.new("RGB", (8, 8), (9, 9, 9)), "PNG"))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4: ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr: ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17: ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def exif_oriented_jpeg(upright: Image.Image, orientation: int, quality: int = 95) -> bytes:
    """JPEG whose stored pixels are rotated/flipped so that honouring EXIF ``orientation`` gives ``upright``."""
    inverse = INVERSE_OF_ORIENTATION[orientation]
    stored = upright if inverse is None else upright.transpose(inverse)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, "JPEG", quality=quality, exif=exif.tobytes())


def sixteen_bit_png() -> bytes:
    ramp = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)
    image = Image.fromarray(ramp)  # uint16 -> mode I;16
    assert image.mode == "I;16", image.mode
    return encode(image, "PNG")


def palette_png_with_transparency() -> bytes:
    palette = photo_like(64, 48).quantize(16)
    return encode(palette, "PNG", transparency=0)


def rgba_png() -> bytes:
    image = photo_like(64, 48).convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (48, 1))
    image.putalpha(Image.fromarray(alpha, "L"))
    return encode(image, "PNG")


def animated_gif() -> bytes:
    frames = [photo_like(40, 30, seed=s).quantize(64) for s in range(4)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0)


def multi_frame_tiff() -> bytes:
    frames = [photo_like(40, 30, seed=s) for s in range(3)]
    return encode(frames[0], "TIFF", save_all=True, append_images=frames[1:])


def corrupt_header_jpeg(kind: str) -> bytes:
    """A JPEG (SOI signature intact) with a damaged header: zeroed segments, a 0-pixel frame, a bad DQT."""
    data = bytearray(encode(photo_like(64, 64), "JPEG"))
    if kind == "zeroed":
        data[2:40] = b"\x00" * 38  # APP0/DQT segments destroyed
    elif kind == "zero height":
        sof = data.index(b"\xff\xc0")
        data[sof + 5: sof + 7] = b"\x00\x00"
    else:  # a quantisation table segment claiming 65535 bytes
        dqt = data.index(b"\xff\xdb")
        data[dqt + 2: dqt + 4] = b"\xff\xff"
    return bytes(data)


def fake_heic() -> bytes:
    return b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)


SVG = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'
HTML = b"<!DOCTYPE html><html><head><title>x</title></head><body><img src=cat.jpg></body></html>"
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


# ---------------------------------------------------------------- request builders
def one_file(data: bytes, filename: str = "upload.bin", content_type: str = "application/octet-stream") -> dict:
    return {"files": [("images", (filename, data, content_type))]}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _file_cases() -> list[Case]:
    jpeg = encode(photo_like(160, 120), "JPEG", quality=90)
    png = encode(photo_like(64, 48), "PNG")
    ok = {"status": 200, "classified": 1}
    items: list[tuple[str, bytes, dict]] = [
        ("zero bytes", b"", {"status": 400, "reason": "empty"}),
        ("random bytes", random.Random(7).randbytes(4096), {"status": 400, "reason": "not_an_image"}),
        ("plain text", b"hello, I am not a picture\n" * 10, {"status": 400, "reason": "not_an_image"}),
        ("html", HTML, {"status": 400, "reason": "not_an_image"}),
        ("svg", SVG, {"status": 415, "reason": "unsupported_format"}),
        ("pdf", PDF, {"status": 415, "reason": "unsupported_format"}),
        ("truncated jpeg", jpeg[: len(jpeg) // 2], {"status": 400, "reason": "truncated"}),
        ("truncated png", png[: len(png) // 2], {"status": 400, "reason": "truncated"}),
        ("jpeg with zeroed header segments", corrupt_header_jpeg("zeroed"), {"status": 400, "reason": "corrupt"}),
        ("jpeg with a zero-height frame", corrupt_header_jpeg("zero height"), {"status": 400, "reason": "corrupt"}),
        ("jpeg with an oversized table length", corrupt_header_jpeg("dqt"), {"status": 400, "reason": "corrupt"}),
        ("png signature only", b"\x89PNG\r\n\x1a\n", {"status": 400, "reason": "corrupt"}),
        ("heic (ftyp header)", fake_heic(), {"status": 415, "reason": "unsupported_format"}),
        ("decompression bomb 30000x30000 png", png_with_fake_size(30000, 30000),
         {"status": 413, "reason": "too_many_pixels"}),
        ("progressive jpeg", encode(photo_like(160, 120), "JPEG", progressive=True, quality=85), ok),
        ("cmyk jpeg", encode(photo_like(80, 60).convert("CMYK"), "JPEG"), ok),
        ("16-bit grayscale png", sixteen_bit_png(), ok),
        ("palette png with transparency", palette_png_with_transparency(), ok),
        ("rgba png", rgba_png(), ok),
        ("grayscale png", encode(photo_like(64, 48).convert("L"), "PNG"), ok),
        ("1x1 png", encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), ok),
        ("1x10000 png", encode(photo_like(1, 10000), "PNG"), ok),
        ("10000x1 png", encode(photo_like(10000, 1), "PNG"), ok),
        ("animated gif", animated_gif(), ok),
        ("multi-frame tiff", multi_frame_tiff(), ok),
        ("webp", encode(photo_like(64, 48), "WEBP", quality=80), ok),
        ("avif", encode(photo_like(64, 48), "AVIF"), ok),
        ("bmp", encode(photo_like(64, 48), "BMP"), ok),
    ]
    items += [(f"exif orientation {o}", exif_oriented_jpeg(photo_like(120, 80, seed=o), o), ok) for o in range(1, 9)]
    return [Case(name, "file", one_file(data, f"case{i}.bin"), payload=data, **expect)
            for i, (name, data, expect) in enumerate(items)]


def _request_cases(limits: Limits) -> list[Case]:
    png = encode(photo_like(64, 48), "PNG")
    boundary = "robustness0boundary"
    multipart = f"multipart/form-data; boundary={boundary}"
    many = [("images", (f"{i}.png", png, "image/png")) for i in range(limits.max_images)]
    return [
        Case("text/plain content type", "request", {"content": png, "headers": {"content-type": "text/plain"}},
             415, "unsupported_content_type"),
        Case("no content type", "request", {"content": png}, 415, "unsupported_content_type"),
        Case("image sent as application/json", "request",
             {"content": png, "headers": {"content-type": "application/json"}}, 400, "bad_json"),
        Case("png sent as image/jpeg (sniffed)", "request",
             {"content": png, "headers": {"content-type": "image/jpeg"}}, 200, classified=1),
        Case("json without images field", "request", {"json": {"top_k": 3}}, 400, "bad_json"),
        Case("multipart with only top_k", "request", {"files": {"top_k": (None, "3")}}, 400, "no_images"),
        Case("empty multipart", "request",
             {"content": f"--{boundary}--\r\n".encode(), "headers": {"content-type": multipart}}, 400, "no_images"),
        Case("multipart without boundary", "request",
             {"content": b"abc", "headers": {"content-type": "multipart/form-data"}}, 400, "bad_multipart"),
        Case("unknown form field", "request", {"files": [many[0]], "data": {"path": "/etc/passwd"}}, 400, "bad_field"),
        Case(f"{limits.max_images} images (the limit)", "limit", {"files": many}, 200, classified=limits.max_images),
        Case(f"{limits.max_images + 1} images", "limit", {"files": many + many[:1]}, 413, "too_many_images"),
        Case(f"{limits.max_images + 1} json images", "limit", {"json": {"images": [b64(png)] * (limits.max_images + 1)}},
             413, "too_many_images"),
        Case("oversize body", "limit", {"content": bytes(limits.max_body_bytes + 1),
                                        "headers": {"content-type": "image/png"}}, 413, "body_too_large"),
        Case("oversize image", "limit", one_file(b"\xff\xd8\xff" + bytes(limits.max_image_bytes)), 413, "too_large"),
        Case("invalid base64", "request", {"json": {"images": ["@@not*base64@@"]}}, 400, "bad_base64"),
        Case("base64 of text", "request", {"json": {"images": [b64(b"just text")]}}, 400, "not_an_image"),
        Case("json list instead of object", "request", {"json": [b64(png)]}, 400, "bad_json"),
        Case("deeply nested json", "request", {"content": b'{"images": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                                               "headers": {"content-type": "application/json"}}, 400, "bad_json"),
        Case("json images is an object", "request", {"json": {"images": {"data": b64(png)}}}, 400, "bad_json"),
        Case("json image is a number", "request", {"json": {"images": [42]}}, 400, "bad_base64"),
        Case("json image object with extra key", "request",
             {"json": {"images": [{"data": b64(png), "path": "/etc/passwd"}]}}, 400, "bad_field"),
        Case("malformed json", "request", {"content": b'{"images": [',
                                           "headers": {"content-type": "application/json"}}, 400, "bad_json"),
        Case("one good one bad image", "request",
             {"files": [many[0], ("images", ("bad.txt", b"text", "text/plain"))]}, 200, classified=1, failed=1),
    ]


def _top_k_cases() -> list[Case]:
    image = b64(encode(photo_like(64, 48), "PNG"))
    cases = [(0, 400, "bad_top_k"), (-1, 400, "bad_top_k"), (2.5, 400, "bad_top_k"), ("three", 400, "bad_top_k"),
             (None, 200, None), (10**9, 200, None), (1e30, 200, None), ([3], 400, "bad_top_k"),
             (True, 400, "bad_top_k")]
    built = [Case(f"top_k={value!r}", "top_k", {"json": {"images": [image], "top_k": value}}, status, reason,
                  classified=int(status == 200)) for value, status, reason in cases]
    built += [Case("query top_k=abc", "top_k", {"params": {"top_k": "abc"}, "json": {"images": [image]}}, 400, "bad_top_k"),
              Case("form top_k=99999999999", "top_k",
                   {"files": [("images", ("a.png", base64.b64decode(image), "image/png"))], "data": {"top_k": "9" * 11}},
                   400, "bad_top_k")]
    return built


def build_corpus(limits: Limits) -> list[Case]:
    cases = _file_cases() + _request_cases(limits) + _top_k_cases()
    names = [case.name for case in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the corpus's image payloads to a directory.")
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    limits = Limits(max_body_bytes=8 << 20, max_images=32, max_image_bytes=2 << 20, max_pixels=40_000_000)
    for index, case in enumerate(build_corpus(limits)):
        if case.payload is not None:
            slug = "".join(c if c.isalnum() else "-" for c in case.name).strip("-")
            (args.out / f"{index:02d}-{slug}.bin").write_bytes(case.payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
