"""Where weights come from: a local file or ``hf_hub:owner/name[/file]`` through huggingface_hub.

The hub path uses huggingface_hub's own cache (``HF_HOME`` / ``HF_HUB_CACHE``) and honours
``HF_HUB_OFFLINE``; a cached file is used without touching the network.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

__all__ = ["DEFAULT_WEIGHTS", "WeightsNotFoundError", "resolve_weights", "weights_available"]

DEFAULT_WEIGHTS = "hf_hub:xiangjx/musk"
DEFAULT_FILENAME = "model.safetensors"
HUB_PREFIX = "hf_hub:"

_HOW_TO = (
    "The released MUSK weights are gated on the Hugging Face hub. To get them:\n"
    "  1. accept the licence at https://huggingface.co/xiangjx/musk (logged in),\n"
    "  2. run `huggingface-cli login` with a read token on this machine,\n"
    "  3. run any openmusk command with network access once (or `huggingface-cli download "
    "xiangjx/musk model.safetensors`); later runs use the cache, offline too.\n"
    "Or pass --weights /path/to/model.safetensors (any checkpoint in the released layout)."
)


class WeightsNotFoundError(FileNotFoundError):
    """The requested weights are not available here; the message says how to get them."""


def _parse_hub(source: str) -> tuple[str, str]:
    """``hf_hub:owner/name[/sub/file]`` -> (repo_id, filename)."""
    parts = source[len(HUB_PREFIX):].strip("/").split("/")
    if len(parts) < 2 or not all(parts[:2]):
        raise ValueError(f"hub source must look like hf_hub:owner/name, got {source!r}")
    filename = "/".join(parts[2:]) or DEFAULT_FILENAME
    return f"{parts[0]}/{parts[1]}", filename


def resolve_weights(source: Optional[str | os.PathLike] = None, cache_dir: Optional[str | os.PathLike] = None) -> str:
    """Local path of the weights named by ``source`` (default: the released MUSK on the hub).

    Raises :class:`WeightsNotFoundError` with instructions when they are not available.
    """
    source = DEFAULT_WEIGHTS if source is None else source
    if isinstance(source, str) and source.startswith(HUB_PREFIX):
        return _resolve_hub(source, cache_dir)
    path = Path(source).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file not found: {path}")
    return str(path)


def _resolve_hub(source: str, cache_dir: Optional[str | os.PathLike]) -> str:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.utils import HfHubHTTPError, LocalEntryNotFoundError

    repo_id, filename = _parse_hub(source)
    cached = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
    if isinstance(cached, str) and os.path.isfile(cached):
        return cached
    try:
        return hf_hub_download(repo_id, filename, cache_dir=cache_dir)
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        where = "the hub cache (HF_HUB_OFFLINE is set)" if offline else "the hub cache or the hub"
        raise WeightsNotFoundError(
            f"{source}: {filename} of {repo_id} is not in {where} ({type(e).__name__}).\n{_HOW_TO}") from e


def weights_available(source: Optional[str | os.PathLike] = None,
                      cache_dir: Optional[str | os.PathLike] = None) -> bool:
    """True when ``resolve_weights(source)`` would succeed without the network."""
    source = DEFAULT_WEIGHTS if source is None else source
    if isinstance(source, str) and source.startswith(HUB_PREFIX):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(*_parse_hub(source), cache_dir=cache_dir)
        return isinstance(cached, str) and os.path.isfile(cached)
    return Path(source).expanduser().is_file()
