"""Fail at once, with the fix, on a model name that cannot be loaded here: a local folder that
is not there, or a hub name that is neither in the local Hugging Face cache nor reachable
(offline, transformers would retry for about a minute, then blame a missing file)."""
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from huggingface_hub import constants, try_to_load_from_cache

FIX = ("pass a local folder written by save_pretrained, or run once with network access so the Hugging Face "
       "cache holds it")


def looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).expanduser().exists()


def in_cache(name: str) -> bool:
    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except ValueError:  # not a valid repository id
        return False


def hub_reachable(timeout: float = 3.0) -> bool:
    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", constants.ENDPOINT))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
    except OSError:
        return False
    return True


def check_model_name(name: str, flag: str) -> None:
    """Raise OSError naming `flag` when `name` cannot be loaded on this machine."""
    if looks_local(name):
        if not (Path(name).expanduser() / "config.json").is_file():
            raise OSError(f"{flag} {name}: no model folder there (no config.json); {FIX}")
        return
    if in_cache(name) or hub_reachable():
        return
    raise OSError(f"{flag} {name}: not a local folder, not in the Hugging Face cache, and the hub cannot be reached "
                  f"from here; {FIX}")
