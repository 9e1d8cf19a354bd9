"""Where weights come from: a local file, or ``hf_hub:owner/name[@revision][/file]`` through huggingface_hub.

Both hub spellings are accepted: ``hf_hub:`` (ours, the authors') and ``hf-hub:`` (timm's and
open_clip's). The hub path uses huggingface_hub's own cache (``HF_HOME`` / ``HF_HUB_CACHE``) and
honours ``HF_HUB_OFFLINE``; a cached file is used without touching the network. The released MUSK
weights are also found where the authors' code caches them (``~/.cache/model.safetensors``).
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

__all__ = ["DEFAULT_WEIGHTS", "HubSource", "WeightsNotFoundError", "authors_cache", "is_hub_source",
           "parse_hub", "resolve_weights", "weights_available"]

DEFAULT_WEIGHTS = "hf_hub:xiangjx/musk"
DEFAULT_REPO = "xiangjx/musk"
DEFAULT_FILENAME = "model.safetensors"
HUB_PREFIX = "hf_hub:"
HUB_PREFIXES = ("hf_hub:", "hf-hub:")
HUB_GRAMMAR = "hf_hub:owner/name[@revision][/file] (or hf-hub:...)"
# the tensor every MUSK checkpoint holds: tells the authors' cache file apart from another model's
_MUSK_KEY = "beit3.encoder.embed_positions.A.weight"

_HOW_TO = (
    "The released MUSK weights are gated on the Hugging Face hub. To get them:\n"
    "  1. accept the licence at https://huggingface.co/xiangjx/musk (logged in),\n"
    "  2. run `hf auth login` with a read token on this machine (older huggingface_hub: "
    "`huggingface-cli login`),\n"
    "  3. run any openmusk command with network access once (or `hf download xiangjx/musk "
    "model.safetensors`); later runs use the cache, offline too.\n"
    "Or pass --weights /path/to/model.safetensors (any checkpoint in the released layout; in a YAML "
    "config its weights key), or --weights random[:CONFIG] to try a command with random weights."
)


def _advice(hub: HubSource) -> str:
    """What to do, on the error's first line (the CLI shows a long message's first line only)."""
    if hub.repo_id == DEFAULT_REPO:
        return (f"accept the licence at https://huggingface.co/{DEFAULT_REPO}, run `hf auth login`, then run "
                "once with network access; or pass --weights PATH (or random[:CONFIG])")
    return "if the repository is gated, accept its licence on the hub and run `hf auth login`; or pass a file path"


class WeightsNotFoundError(FileNotFoundError):
    """The requested weights are not available here; the message says how to get them."""


@dataclass(frozen=True)
class HubSource:
    """A file of a hub repository at a revision (None: the default branch)."""

    repo_id: str
    filename: str = DEFAULT_FILENAME
    revision: Optional[str] = None


def is_hub_source(source: object) -> bool:
    """True for ``hf_hub:...`` and ``hf-hub:...`` strings."""
    return isinstance(source, str) and source.startswith(HUB_PREFIXES)


def parse_hub(source: str) -> HubSource:
    """``hf_hub:owner/name[@revision][/file]`` or ``hf_hub:owner/name/file@revision`` -> :class:`HubSource`.

    A revision written after the repository runs to the next ``/`` (a branch, tag or commit),
    except the hub's ``refs/pr/N`` / ``refs/convert/X`` forms; written after the file it is the rest.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    body = source.split(":", 1)[1].strip("/")
    path, at, rev = body.partition("@")
    parts = path.split("/")
    revision: Optional[str] = None
    if at and len(parts) <= 2:  # owner/name@rev[/file]
        rev_parts = rev.split("/")
        n = 3 if rev.startswith(("refs/pr/", "refs/convert/")) else 1
        revision, parts = "/".join(rev_parts[:n]), parts + rev_parts[n:]
    elif at:  # owner/name/file@rev
        revision = rev
    if len(parts) < 2 or not all(parts) or (at and not revision):
        raise ValueError(f"{source!r}: a hub source must look like {HUB_GRAMMAR}")
    repo_id = f"{parts[0]}/{parts[1]}"
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ValueError(f"{source!r}: {repo_id!r} is not a valid hub repository id ({e}); "
                         f"expected {HUB_GRAMMAR}") from None
    return HubSource(repo_id, "/".join(parts[2:]) or DEFAULT_FILENAME, revision)


def authors_cache(hub: Optional[HubSource] = None) -> Optional[str]:
    """The released weights where the authors' ``load_model_and_may_interpolate`` caches them
    (``~/.cache/model.safetensors``, ``~`` from ``$HOME``), when ``hub`` is the released file
    and that file holds a MUSK checkpoint; else None."""
    hub = hub or HubSource(DEFAULT_REPO)
    if hub.repo_id != DEFAULT_REPO or hub.filename != DEFAULT_FILENAME or hub.revision not in (None, "main"):
        return None
    path = Path.home() / ".cache" / DEFAULT_FILENAME
    return str(path) if path.is_file() and _is_musk_safetensors(path) else None


def _is_musk_safetensors(path: Path) -> bool:
    """Whether the safetensors header of ``path`` names MUSK's vision position table (header only)."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100_000_000:
                return False
            return _MUSK_KEY in json.loads(f.read(n))
    except (OSError, ValueError, struct.error):
        return False


def resolve_weights(source: Optional[str | os.PathLike] = None, cache_dir: Optional[str | os.PathLike] = None) -> str:
    """Local path of the weights named by ``source`` (default: the released MUSK on the hub).

    Raises :class:`WeightsNotFoundError` with instructions when they are not available, and
    ValueError for a malformed hub source.
    """
    source = DEFAULT_WEIGHTS if source is None else source
    if is_hub_source(source):
        return _resolve_hub(str(source), cache_dir)
    path = Path(source).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file not found: {path} (a weights source is a file path, "
                                   f"{HUB_GRAMMAR}, or random[:CONFIG])")
    return str(path)


def _cached(hub: HubSource, cache_dir: Optional[str | os.PathLike]) -> Optional[str]:
    """The file from the huggingface_hub cache, without the network; None when not there."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(hub.repo_id, hub.filename, cache_dir=cache_dir, revision=hub.revision)
    return cached if isinstance(cached, str) and os.path.isfile(cached) else None


def _resolve_hub(source: str, cache_dir: Optional[str | os.PathLike]) -> str:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import HfHubHTTPError, LocalEntryNotFoundError

    hub = parse_hub(source)
    cached = _cached(hub, cache_dir) or authors_cache(hub)
    if cached:
        return cached
    unreachable = _hub_unreachable()
    if unreachable:  # fail at once instead of huggingface_hub's half a minute of retries
        raise WeightsNotFoundError(f"{source}: {hub.filename} of {hub.repo_id} is not in the hub cache and "
                                   f"{unreachable}; {_advice(hub)}\n{_HOW_TO}")
    try:
        return hf_hub_download(hub.repo_id, hub.filename, revision=hub.revision, cache_dir=cache_dir)
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
        where = "the hub cache (HF_HUB_OFFLINE is set)" if offline else "the hub cache or the hub"
        at = f" at revision {hub.revision}" if hub.revision else ""
        raise WeightsNotFoundError(
            f"{source}: {hub.filename} of {hub.repo_id}{at} is not in {where} ({type(e).__name__}); "
            f"{_advice(hub)}\n{_HOW_TO}") from e


def _hub_unreachable(timeout: float = 3.0) -> Optional[str]:
    """Why the hub cannot be reached (one quick TCP connect), or None; never probes when offline
    mode or a proxy is set (the proxy decides)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy",
                                                                     "ALL_PROXY", "all_proxy")):
        return None
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as e:
        return f"the hub ({constants.ENDPOINT}) cannot be reached from this machine ({e})"
    return None


def weights_available(source: Optional[str | os.PathLike] = None,
                      cache_dir: Optional[str | os.PathLike] = None) -> bool:
    """True when ``resolve_weights(source)`` would succeed without the network."""
    source = DEFAULT_WEIGHTS if source is None else source
    if is_hub_source(source):
        hub = parse_hub(str(source))
        return bool(_cached(hub, cache_dir) or authors_cache(hub))
    return Path(source).expanduser().is_file()
