"""Range-checking `type=` functions for the management command's numeric flags.

argparse turns the ArgumentTypeError they raise into its usage and one line,
`zeroshot train: error: argument --steps: must be an integer >= 1, not '-5'`, and exit status 2,
before any subcommand runs: a flag out of range never reaches training or the server.
The bounds are those of TrainConfig (model/train_config.py), which checks config files the same way.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _int_in(low: int, high: int | None, words: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer {words}, not {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be an integer {words}, not {text!r}")
        return value

    return parse


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):  # NaN fails every comparison: refuse it explicitly
        raise argparse.ArgumentTypeError(f"must be a number > 0, not {text!r}")
    return value


positive_int = _int_in(1, None, ">= 1")
non_negative_int = _int_in(0, None, ">= 0")
# 0 would make the operating system pick a port, which no one is told in advance; 65535 is TCP's last
port = _int_in(1, 65535, "from 1 to 65535")
