"""Byte encodings both protocols accept: base64 (standard or URL-safe, padding optional, a data: URL prefix)."""
from __future__ import annotations

import base64
import binascii
import re

DATA_URL = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)


def decode_base64(text: str) -> bytes:
    """Standard or URL-safe base64, padding optional, whitespace and a data: URL prefix ignored."""
    text = DATA_URL.sub("", text.strip(), count=1)
    compact = "".join(text.split())
    if "-" in compact or "_" in compact:
        compact = compact.replace("-", "+").replace("_", "/")
    compact += "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"invalid base64 ({exc})") from None
