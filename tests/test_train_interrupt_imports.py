"""A Ctrl-C while plotting stops ``imgcls train`` with 130, even where it lands in a compiled module's import.

The plots follow the last epoch's saved state; matplotlib loaded its Agg backend's compiled module at
the first figure, and a KeyboardInterrupt inside that module's initialisation came out as an ImportError
(exit 1). The backend now loads with the plotting module, and an ImportError caused by an interrupt
is reported as the interrupt.
"""
from __future__ import annotations

import subprocess
import sys

from imgcls.models.training.cli import caused_by_interrupt


def test_the_plotting_module_loads_the_agg_backends_compiled_module_before_any_figure():
    code = ("import sys, imgcls.models.training.session; "
            "print('matplotlib.backends._backend_agg' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True", out.stderr[-2000:]


def test_an_import_error_raised_from_a_keyboard_interrupt_counts_as_the_interrupt():
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as interrupt:
            raise ImportError("initialization failed") from interrupt
    except ImportError as exc:
        assert caused_by_interrupt(exc)
    assert not caused_by_interrupt(ImportError("No module named 'nothing_here'"))
