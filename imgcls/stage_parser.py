"""``StageParser``: argparse for every stage, with usage errors as ONE line on stderr and exit 2,
and ``--help`` as plain text.

argparse prints the whole usage block before the error; for a stage with twenty flags that buries
the one line that matters. The README promises "2 bad input or usage (a one-line message)".
Descriptions are often the stage module's docstring, whose RST literals (double backquotes) mean
nothing on a terminal: the help drops them.
"""
from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class StageParser(argparse.ArgumentParser):
    def format_help(self) -> str:
        return super().format_help().replace("``", "")

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: {message} (see {self.prog} --help)\n")
        sys.exit(2)
