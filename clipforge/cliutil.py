"""What every `clipforge` subcommand module shares: JSON output and loading the bundle a flag names.

Kept free of heavy imports: `clipforge --help` imports it before any subcommand runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, NoReturn


class OneLineParser(argparse.ArgumentParser):
    """argparse with a usage mistake reported in one line naming the subcommand and a pointer to --help
    (argparse's default prints the whole usage block first); subparsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def print_json(obj: Any) -> None:
    """A command's result on stdout, indented; values JSON cannot hold (paths, numpy numbers) as strings."""
    print(json.dumps(obj, indent=2, default=str))


def load_bundle_arg(path: str | None, device: str = "auto", flag: str = "--bundle") -> Any:
    """The bundle a command-line flag names, or a one-line error (missing flag, missing directory)."""
    from clipforge.encoders.bundle import load_bundle

    if not path:
        raise ValueError(f"{flag} is required")
    if not Path(path).exists():
        raise FileNotFoundError(f"no bundle at {path}")
    return load_bundle(path, device=device)


def at_least(low: int, high: int | None = None) -> Any:
    """An argparse type: an integer >= `low` (and <= `high`; argparse prints the one-line usage error)."""

    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high:,}, got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its message for a non-number
    return parse
