"""imgcls: transfer learning for image classification, from a pretrained backbone to HTTP.

One import namespace. The stages live in the design card's top-level folders and import as
``imgcls.models`` (``core`` contract, ``zoo``, ``training``), ``imgcls.export`` and
``imgcls.service`` (the inference core, its engine, protocols, host and ``scoring``): setuptools'
``package_dir`` mapping (setup.py) installs them under ``imgcls/`` in a wheel, and an editable
install (``pip install -e .``) maps the same names onto the folders of a checkout.
See docs/architecture.md.
"""
from __future__ import annotations

__version__ = "0.1.0"
