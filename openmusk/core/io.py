"""Atomic file writing shared by every long-running job (extraction, training, evaluation).

A job that dies halfway must never leave a file that looks finished: everything is written to a
temporary file in the destination folder and renamed into place, which is atomic on POSIX. The
finished file gets the permissions the umask gives any new file (colleagues on a shared cluster can
read it). Checkpoints are read here too, refusing anything that is not plain tensors with a message
naming the file.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

__all__ = ["atomic_path", "write_json", "read_json", "save_figure", "torch_load", "load_safetensors",
           "CheckpointFileError", "safe_filename", "read_table", "read_text"]


class CheckpointFileError(ValueError):
    """A weights/state file that cannot be loaded safely, with the file named in the message."""


def _new_file_mode() -> int:
    """The mode ``open()`` gives a new file under the current umask (mkstemp would give 0600)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, _new_file_mode())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def safe_filename(name: Any) -> str:
    """``name`` (a model, dataset or sample name) as ONE safe path component.

    Anything but letters, digits and ``._+=@-`` becomes ``_`` and leading dots go, so ``a/b`` or
    ``..`` can never leave or nest below the output folder; a changed name gets a short hash of the
    original so that two names never share a file.
    """
    text = str(name)
    safe = re.sub(r"[^A-Za-z0-9._+=@-]+", "_", text).lstrip(".")[:200] or "_"
    if safe != text:
        safe = f"{safe}-{hashlib.sha1(text.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"
    return safe


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as JSON atomically and return the path."""
    with atomic_path(path, suffix=".json.tmp") as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, default=_json_default) + "\n")
    return Path(path)


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, naming the file in the error when it is malformed."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def torch_load(path: str | os.PathLike, what: str = "checkpoint", **kwargs: Any) -> Any:
    """``torch.load(weights_only=True)`` whose refusals and failures name the file in one line."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointFileError(f"{path}: no such {what} file")
    kwargs.setdefault("map_location", "cpu")
    try:
        return torch.load(path, weights_only=True, **kwargs)
    except pickle.UnpicklingError as e:
        if "GLOBAL" in str(e) or _pickle_references_code(path):  # a class or function: code, not tensors
            raise CheckpointFileError(
                f"{path}: {what} holds code or objects that are not tensors and was refused for safety "
                "(only plain tensors, numbers and containers of them are loaded)") from None
        raise CheckpointFileError(f"{path}: not a readable {what} (corrupt or not a torch file)") from None
    except Exception as e:  # noqa: BLE001 - torch's legacy reader fails on noise in many ways (IndexError, KeyError, ...)
        raise CheckpointFileError(f"{path}: not a readable {what} (truncated or not a torch file: "
                                  f"{_first_line(e)})") from None


def _pickle_references_code(path: Path) -> bool:
    """Whether a plain pickle file names classes or functions (read opcode by opcode, never run)."""
    import pickletools

    code_ops = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX"}
    try:
        with open(path, "rb") as f:
            return any(op.name in code_ops for op, _, _ in pickletools.genops(f))
    except Exception:  # not a pickle at all (a zip, random bytes): nothing to say
        return False


def load_safetensors(path: str | os.PathLike, what: str = "weights", device: str = "cpu") -> dict:
    """All tensors of a ``.safetensors`` file; a missing or corrupt file is named in one line."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointFileError(f"{path}: no such {what} file")
    try:
        return load_file(str(path), device=device)
    except Exception as e:  # safetensors raises its own SafetensorError and OSError alike
        raise CheckpointFileError(f"{path}: not a valid safetensors {what} file ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    """The first line of an exception's message (torch's run to many lines of advice)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 text file's contents; invalid UTF-8 is an error naming the file and the line."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ValueError(f"{path}: line {line} is not valid UTF-8 (byte {data[e.start:e.start + 1]!r}); "
                         "save the file as UTF-8") from None


def read_table(path: str | os.PathLike, sheet: str | int | None = None, **kwargs: Any) -> Any:
    """A CSV, TSV (``.tsv``/``.txt``) or Excel file (``sheet``, else the first) as a DataFrame, with
    errors that name the file: missing, empty, not UTF-8 (with the line), or not parseable."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such table file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".xlsx", ".xls"):
            return pd.read_excel(path, sheet_name=sheet if sheet is not None else 0, **kwargs)
        kwargs.setdefault("sep", "\t" if suffix in (".tsv", ".txt") else ",")
        return pd.read_csv(path, **kwargs)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: the table is empty (no header row)") from None
    except UnicodeDecodeError as e:
        line = path.read_bytes()[:e.start].count(b"\n") + 1 if e.start is not None else "?"
        raise ValueError(f"{path}: line {line} is not valid UTF-8 (byte {e.object[e.start:e.start + 1]!r}); "
                         "save the table as UTF-8") from None
    except pd.errors.ParserError as e:
        raise ValueError(f"{path}: not a readable table ({_first_line(e)})") from None
    except ValueError as e:  # e.g. an Excel sheet that is not there
        raise ValueError(f"{path}: {e}") from None


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 120, **kwargs: Any) -> Path:
    """Save a matplotlib figure atomically (format from the suffix, PNG by default) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    with atomic_path(path, suffix=f".{fmt}") as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi, **kwargs)
    plt.close(fig)
    return path


def _json_default(o: Any) -> Any:
    """Serialise numpy scalars/arrays and paths that json does not know."""
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    raise TypeError(f"cannot serialise {type(o).__name__} to JSON")
