"""imgcls: transfer learning for image classification, from a pretrained backbone to HTTP.

One import namespace. The stages live in the design card's top-level folders and import as
``imgcls.models`` (``core`` contract, ``zoo``, ``training``), ``imgcls.export`` and
``imgcls.service`` (the inference core, ``http`` and ``scoring``). An installed wheel holds them
under ``imgcls/``; in a source tree (a checkout, the serving image, a bento) they sit beside this
folder, and the repository root is added to this package's search path so the same names resolve.
See docs/architecture.md.
"""
from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

_HERE = Path(__file__).resolve().parent
if not (_HERE / "service").is_dir() and (_HERE.parent / "service" / "__init__.py").is_file():
    __path__.append(str(_HERE.parent))  # source tree: imgcls.models -> <root>/models, ...
