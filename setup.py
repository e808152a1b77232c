"""The package list for setuptools (everything else is in pyproject.toml).

One import namespace, ``imgcls``: the design card's top-level folders are installed as
``imgcls.models``, ``imgcls.export`` and ``imgcls.service`` by setuptools' own ``package_dir``
mapping, and every package folder under them (a folder with ``__init__.py``) is found here, so a new
subfolder needs no list to be kept up to date. A wheel holds only ``imgcls/``
(tests/test_packaging.py builds one and checks).
"""
import tempfile

from setuptools import find_packages, setup

# A fresh build folder for every build, removed when the build ends: setuptools never empties
# build/lib, so a module deleted or moved in the sources would otherwise linger in every later wheel.
BUILD = tempfile.TemporaryDirectory(prefix="imgcls-build-")
STAGES = {"imgcls.models": "models", "imgcls.export": "export", "imgcls.service": "service"}

setup(
    package_dir={"imgcls": "imgcls", **STAGES},
    packages=["imgcls", *(f"{name}.{sub}" if sub else name
                          for name, folder in STAGES.items() for sub in ["", *find_packages(folder)])],
    # the pages' static files (HTML, JS, CSS) of whichever serving package holds them; the gRPC protocol's
    # .proto files and their licence beside the message modules generated from them
    package_data={"": ["static/*"], "imgcls.service.protocols.oip_grpc": ["proto/*"]},
    options={"build": {"build_base": BUILD.name}},
)
