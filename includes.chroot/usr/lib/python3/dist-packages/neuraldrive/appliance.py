"""How a client reaches this appliance: its address, the gateway URL and the API key."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from .common import Runner


def first_address(run: Runner) -> str | None:
    """The first global address of an interface that is up, IPv4 preferred (what DHCP gave us)."""
    result = run(["ip", "-j", "addr", "show", "scope", "global", "up"])
    if not result.ok:
        return None
    try:
        links = json.loads(result.stdout or "[]")
    except ValueError:
        return None
    addresses = [a for link in links if isinstance(link, dict)
                 for a in link.get("addr_info", []) if isinstance(a, dict) and a.get("local")]
    for family in ("inet", "inet6"):
        for addr in addresses:
            if addr.get("family") == family:
                return str(addr["local"])
    return None


def api_urls(port: int, run: Runner) -> tuple[str, str]:
    """(URL by address, URL by host name): the address works without DNS, the name is nicer."""
    host = socket.gethostname()
    address = first_address(run)
    by_name = f"https://{host}:{port}/"
    if address is None:
        return by_name, by_name
    shown = f"[{address}]" if ":" in address else address
    return f"https://{shown}:{port}/", by_name


def read_api_key(path: str | Path) -> str:
    """The key, stripped; OSError (missing, no permission) is the caller's to explain."""
    key = Path(path).read_text(encoding="utf-8").strip()
    if not key:
        raise OSError(f"{path} is empty")
    return key
