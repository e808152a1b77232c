"""``imgcls train``'s log: our progress lines at INFO, other libraries' lines only from WARNING up."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO_ROOT
from tests.train_helpers import cli_env

PROBE = """
import logging
from imgcls.models.training.cli import _setup_logging
_setup_logging(verbose={verbose})
logging.getLogger("timm.models._builder").info("THIRD-PARTY INFO")
logging.getLogger("torch.distributed").warning("THIRD-PARTY WARNING")
logging.getLogger("imgcls.models.training.session").info("OUR INFO")
logging.getLogger("imgcls.models.training.session").debug("OUR DEBUG")
"""


def _logged(verbose: bool) -> str:
    result = subprocess.run([sys.executable, "-c", PROBE.format(verbose=verbose)], cwd=REPO_ROOT, env=cli_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_third_party_info_is_kept_out_and_warnings_in():
    log = _logged(verbose=False)
    assert "OUR INFO" in log and "THIRD-PARTY WARNING" in log
    assert "THIRD-PARTY INFO" not in log and "OUR DEBUG" not in log


def test_verbose_shows_everything():
    log = _logged(verbose=True)
    assert all(text in log for text in ("OUR INFO", "OUR DEBUG", "THIRD-PARTY INFO", "THIRD-PARTY WARNING"))
