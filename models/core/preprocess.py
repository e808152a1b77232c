"""The one evaluation-time image preprocessing of imgcls (numpy + Pillow only, no torch).

``load_image`` turns bytes or a path into an upright RGB ``PIL.Image`` (or raises
``ImageDecodeError`` with a reason code); ``Preprocess`` resizes the shorter side, centre-crops and
produces either uint8 ``[3, H, W]`` pixels (what exported graphs take) or normalised float32.
The resize/crop arithmetic mirrors torchvision's ``ImageClassification`` transform exactly, so the
same weights see the same pixels in training, export, batch scoring and the HTTP service.
"""
from __future__ import annotations

import io
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

try:  # optional HEIC/AVIF support
    import pillow_heif  # type: ignore[import-not-found]

    pillow_heif.register_heif_opener()
except ImportError:  # pragma: no cover - depends on the environment
    pass

ImageFile.LOAD_TRUNCATED_IMAGES = False

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000
ALPHA_BACKGROUND = (255, 255, 255)
# Beyond this long:short side ratio, resize_crop resamples only the crop region (bounded memory).
MAX_RESIZED_ASPECT = 32

INTERPOLATIONS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}

REASONS = (
    "not_found",  # a path that names no file (batch scoring; HTTP never reads paths)
    "unreadable",  # a path the process may not read (permissions, a directory, an I/O error)
    "empty",
    "too_large",
    "not_an_image",
    "unsupported_format",
    "truncated",
    "too_many_pixels",
    "corrupt",
)


class ImageDecodeError(ValueError):
    """Any image that cannot become model input; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, message: str) -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def _read_source(source: bytes | bytearray | memoryview | str | Path, max_bytes: int) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        path = Path(source)
        try:
            size = path.stat().st_size
            if size > max_bytes:
                raise ImageDecodeError("too_large", f"{size} bytes exceeds the limit of {max_bytes}")
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise ImageDecodeError("not_found", f"no such file: {path}") from exc
        except OSError as exc:
            raise ImageDecodeError("unreadable", f"cannot read {path}: {exc.strerror or exc}") from exc
    if not data:
        raise ImageDecodeError("empty", "zero bytes")
    if len(data) > max_bytes:
        raise ImageDecodeError("too_large", f"{len(data)} bytes exceeds the limit of {max_bytes}")
    return data


def _sniff_unsupported(data: bytes) -> str | None:
    """Name formats that are images (or documents) we recognise but cannot decode here."""
    head = data[:64]
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"):
        return "HEIC/HEIF images need the optional pillow-heif package"
    if head.startswith(b"%PDF"):
        return "PDF documents are not images"
    text = head.lstrip().lower()
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in data[:1024].lower()):
        return "SVG (vector graphics) is not supported; send a raster image"
    return None


SIGNATURES = ((b"\xff\xd8", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
              (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def _signature(data: bytes) -> str | None:
    """The raster format whose magic bytes ``data`` starts with (a damaged file, not a non-image)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in SIGNATURES if data.startswith(magic)), None)


def _open(data: bytes, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError("too_many_pixels", str(exc)) from exc
    except UnidentifiedImageError as exc:
        known = _sniff_unsupported(data)
        if known:
            raise ImageDecodeError("unsupported_format", known) from exc
        damaged = _signature(data)
        if damaged:
            raise ImageDecodeError("corrupt", f"{damaged} signature, but its header cannot be read") from exc
        raise ImageDecodeError("not_an_image", "not a recognised image format") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError("corrupt", f"unreadable image header ({exc})") from exc
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError("corrupt", f"invalid size {width}x{height}")
    if width * height > max_pixels:
        raise ImageDecodeError(
            "too_many_pixels", f"{width}x{height} = {width * height} pixels exceeds {max_pixels}"
        )
    return image


def _apply_draft(image: Image.Image, min_short_side: int | None) -> None:
    """Let the JPEG decoder downscale by 1/2, 1/4 or 1/8 while keeping the short side >= target."""
    if not min_short_side or image.format != "JPEG":
        return
    width, height = image.size
    scale = min_short_side / min(width, height)
    if scale >= 0.5:
        return
    requested = (math.ceil(width * scale), math.ceil(height * scale))
    image.draft("RGB" if image.mode in ("RGB", "YCbCr") else image.mode, requested)


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if mode.startswith("I;16") or (mode == "I" and array.max(initial=0) > 255):
            array = array / 257.0 if array.max(initial=0) <= 65535 else array * 255.0 / array.max()
        gray = np.clip(np.rint(array), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(
    source: bytes | bytearray | memoryview | str | Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_short_side: int | None = None,
) -> Image.Image:
    """Decode ``source`` into an upright RGB image, or raise ``ImageDecodeError``.

    ``min_short_side`` enables JPEG draft decoding: the decoder may shrink the image by a power
    of two as long as its shorter side stays at least that long (pass the resize size).
    Animated and multi-frame images give their first frame.
    """
    data = _read_source(source, max_bytes)
    image = _open(data, max_pixels)
    try:
        _apply_draft(image, min_short_side)
        image.load()
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except ImageDecodeError:
        raise
    except OSError as exc:
        text = str(exc).lower()
        if "truncated" in text or "broken data stream" in text or "premature end" in text:
            raise ImageDecodeError("truncated", f"image data ends early ({exc})") from exc
        if "decoder" in text and "not available" in text:
            raise ImageDecodeError("unsupported_format", f"{image.format}: {exc}") from exc
        raise ImageDecodeError("corrupt", f"cannot decode {image.format} data ({exc})") from exc
    except (ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError) as exc:
        raise ImageDecodeError("corrupt", f"cannot decode {image.format} data ({exc})") from exc
    except Image.DecompressionBombError as exc:  # pragma: no cover - caught at open already
        raise ImageDecodeError("too_many_pixels", str(exc)) from exc


def resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """torchvision's shorter-side resize: the long side is truncated, not rounded."""
    if width <= height:
        return short_side, int(short_side * height / width)
    return int(short_side * width / height), short_side


@dataclass(frozen=True)
class Preprocess:
    """Evaluation transform: shorter side to ``resize_size``, centre crop ``crop_size``, normalise."""

    resize_size: int
    crop_size: int
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"preprocess.interpolation: unknown {self.interpolation!r}")
        if not 0 < self.crop_size <= self.resize_size:
            raise ValueError(
                f"preprocess: need 0 < crop_size <= resize_size, got {self.crop_size}, {self.resize_size}"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("preprocess.mean/std: need three values each, std > 0")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Preprocess":
        unknown = set(data) - {"resize_size", "crop_size", "interpolation", "mean", "std"}
        if unknown:
            raise ValueError(f"preprocess: unknown field(s) {sorted(unknown)}")
        return cls(
            resize_size=int(data["resize_size"]),
            crop_size=int(data["crop_size"]),
            interpolation=str(data["interpolation"]),
            mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
        )

    def load(self, source: bytes | str | Path, **limits: int) -> Image.Image:
        """``load_image`` with draft decoding sized for this transform."""
        return load_image(source, min_short_side=self.resize_size, **limits)

    def resize_crop(self, image: Image.Image) -> Image.Image:
        width, height = resized_size(image.width, image.height, self.resize_size)
        top = int(round((height - self.crop_size) / 2.0))
        left = int(round((width - self.crop_size) / 2.0))
        crop = self.crop_size
        if max(width, height) > MAX_RESIZED_ASPECT * self.resize_size:
            # Extreme aspect ratio (e.g. a 1x10000 strip would become 256x2560000, gigabytes):
            # resample only the source region that lands in the crop. Pillow's box resize uses the
            # same sample positions, but its rounding may differ by a few levels from resize-then-crop,
            # so normal images keep the exact torchvision path below.
            sx, sy = image.width / width, image.height / height
            box = (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)
            return image.resize((crop, crop), INTERPOLATIONS[self.interpolation], box=box)
        if (width, height) != image.size:
            image = image.resize((width, height), INTERPOLATIONS[self.interpolation])
        return image.crop((left, top, left + crop, top + crop))

    def pixels(self, image: Image.Image) -> np.ndarray:
        """uint8 ``[3, crop, crop]``: the input of an exported graph (it normalises itself)."""
        if image.mode != "RGB":  # load_image already gives RGB; convert() would copy it anyway
            image = image.convert("RGB")
        array = np.asarray(self.resize_crop(image), dtype=np.uint8)
        return np.ascontiguousarray(array.transpose(2, 0, 1))

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 ``[..., 3, H, W]`` -> float32 normalised the same way torchvision does."""
        mean = np.asarray(self.mean, dtype=np.float32).reshape(3, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(3, 1, 1)
        return ((pixels.astype(np.float32) / np.float32(255.0)) - mean) / std

    def __call__(self, image: Image.Image) -> np.ndarray:
        """float32 ``[3, crop, crop]``, normalised."""
        return self.normalize(self.pixels(image))
