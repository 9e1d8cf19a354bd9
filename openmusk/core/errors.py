"""User errors and the exit codes of the ``openmusk`` command, in one place.

A user error (a bad file, config key, flag or output path) reaches the user as ONE line naming the
culprit, never a traceback; a bug still shows its traceback. ``OPENMUSK_TRACEBACK=1`` shows the
traceback of a user error too.
"""
from __future__ import annotations

import os
import pickle

__all__ = ["UserError", "EXIT_OK", "EXIT_SOME_FAILED", "EXIT_USER_ERROR", "EXIT_INTERRUPTED",
           "user_message", "check_writable"]

EXIT_OK = 0             # everything done
EXIT_SOME_FAILED = 1    # the run finished but some items failed (listed in its summary) / a bug
EXIT_USER_ERROR = 2     # bad input, config, flag or output path: nothing was run or written
EXIT_INTERRUPTED = 130  # Ctrl-C: finished items are kept; rerun the same command to resume


class UserError(Exception):
    """An error whose message is meant for the user as it stands (no stack trace)."""


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that describe a bad input rather than a bug in openmusk."""
    types: list[type[BaseException]] = [UserError, ValueError, OSError, pickle.UnpicklingError]
    try:
        import yaml

        types.append(yaml.YAMLError)
    except ImportError:  # pragma: no cover - yaml is a core dependency
        pass
    return tuple(types)


def user_message(exc: BaseException) -> str | None:
    """One line for an error caused by the user's input, or None when it looks like a bug."""
    if not isinstance(exc, _user_error_types()):
        return None
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        where = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
        return f"{where}: {exc.strerror}"
    text = str(exc).strip() or type(exc).__name__
    # a short message folds into one line; a long one (e.g. every mismatched tensor of a checkpoint)
    # keeps its lines, whose first names the culprit: details are never dropped
    return " ".join(text.split()) if "\n" in text and len(text) < 400 else text


def check_writable(path: str | os.PathLike, folder: bool) -> None:
    """Refuse an output path that cannot be written, BEFORE any work is done.

    ``folder``: the output is a folder (it may exist); otherwise a file (it must not be a folder).
    Raises :class:`UserError` naming the path.
    """
    p = os.path.abspath(os.fspath(path))
    if not folder and os.path.isdir(p):
        raise UserError(f"{path}: is an existing folder; --out must name a file here")
    if folder and os.path.exists(p) and not os.path.isdir(p):
        raise UserError(f"{path}: is an existing file; --out must name a folder here")
    parent = p if folder else os.path.dirname(p)
    probe = parent
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UserError(f"{path}: cannot be created because {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{path}: cannot write in {probe} (permission denied)")
