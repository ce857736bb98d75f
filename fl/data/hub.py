"""Is the Hugging Face hub there? Offline, from_pretrained and load_dataset retry for close to a
minute before failing; these checks answer in a moment so that fl can say so in one line."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse


def hub_reachable() -> bool:
    """Whether the hub's host resolves (fails in a moment offline, where from_pretrained retries)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        return False
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def in_hub_cache(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(name, "config.json"), str)
