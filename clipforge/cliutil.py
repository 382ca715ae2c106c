"""What every `clipforge` subcommand module shares: JSON output and loading the bundle a flag names.

Kept free of heavy imports: `clipforge --help` imports it before any subcommand runs.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
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


def error_line(exn: BaseException, parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The one line a failed command prints: the exception's text, except that an OSError in Python's bare
    form (`[Errno 13] Permission denied: 'x'`) says instead which argument the path came from and what is
    wrong with it, e.g. `--out: cannot create files in /data: permission denied`."""
    text = str(exn)
    if "\nOriginal Traceback" in text:  # raised in a DataLoader worker: torch prepends the worker's traceback
        last = text.rstrip().splitlines()[-1]  # "SomeError: the message", as the worker raised it
        return last.split(": ", 1)[1] if ": " in last else last
    if not isinstance(exn, OSError) or not exn.strerror or not text.startswith("[Errno"):
        return text  # a message of the code's own
    if not isinstance(exn.filename, str | bytes | os.PathLike):  # none, or a file descriptor
        return _lower_first(exn.strerror)
    path = os.fsdecode(exn.filename)
    what = path_problem(exn.errno, exn.strerror, path)
    if exn.filename2 is not None:
        what += f" -> {os.fsdecode(exn.filename2)}"
    argument = argument_of(path, parser, args)
    return f"{argument}: {what}" if argument else what


def path_problem(code: int | None, strerror: str, path: str) -> str:
    """What is wrong with `path`, named at the level where it is wrong (the missing directory of a path to
    create, the file that sits where a directory is needed)."""
    if code == errno.ENOENT:
        missing = path
        while not os.path.exists(_parent(missing)) and _parent(missing) != missing:
            missing = _parent(missing)
        return f"no such file or directory: {path}" if missing == path else f"no such directory: {missing}"
    if code == errno.ENOTDIR:
        file = next((p for p in _self_and_parents(path) if os.path.exists(p) and not os.path.isdir(p)), path)
        return f"not a directory: {file}"
    if code == errno.EISDIR:
        return f"is a directory, not a file: {path}"
    if code == errno.EEXIST and os.path.exists(path) and not os.path.isdir(path):
        return f"exists and is not a directory: {path}"
    if code in (errno.EACCES, errno.EPERM) and not os.path.lexists(path):
        parent = next((p for p in _self_and_parents(path)[1:] if os.path.isdir(p)), "")
        if parent and os.access(parent, os.X_OK) and not os.access(parent, os.W_OK):  # creating it failed
            return f"cannot create files in {parent}: permission denied"
    return f"{_lower_first(strerror)}: {path}"


def argument_of(path: str, parser: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
    """The command's argument that `path` is, is inside, or is a temporary sibling of (an atomic write's
    `.NAME.xyz`): `--out`, a positional's name, or the KEY of a `--set KEY=VALUE`; the most specific wins."""
    target = os.path.abspath(path)
    best: tuple[int, str] | None = None
    for action in _leaf(parser, args)._actions:
        value = getattr(args, action.dest, None)
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, str | os.PathLike) or not str(item):
                continue
            name = max(action.option_strings, key=len) if action.option_strings else str(action.metavar or action.dest)
            text = os.fsdecode(item)
            if action.metavar == "KEY=VALUE" and "=" in text:
                name, _, text = text.partition("=")
            given = os.path.abspath(text)
            inside = target == given or target.startswith(given.rstrip(os.sep) + os.sep)
            sibling = _parent(target) == _parent(given) and os.path.basename(target).startswith(
                f".{os.path.basename(given)}."
            )
            if (inside or sibling) and (best is None or len(given) > best[0]):
                best = (len(given), name)
    return best[1] if best else None


def _leaf(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)parser of the command that ran, e.g. the one of `index build`."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        chosen = getattr(args, subs[0].dest, None) if subs else None
        if chosen not in (subs[0].choices if subs else {}):
            return parser
        parser = subs[0].choices[chosen]


def _parent(path: str) -> str:
    return os.path.dirname(path) or "."  # a relative name's directory is the current one


def _self_and_parents(path: str) -> list[str]:
    out = [path]
    while _parent(out[-1]) != out[-1]:
        out.append(_parent(out[-1]))
    return out


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]
