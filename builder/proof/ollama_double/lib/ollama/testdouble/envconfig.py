"""Ollama's envconfig (envconfig/config.go, v0.32.7): Var, Host, ConnectableHost, KeepAlive,
LoadTimeout, Uint, BoolWithDefault, Models: how `ollama serve` and the CLI read OLLAMA_*."""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .goenv import (
    DEFAULT_KEEP_ALIVE_NS,
    DEFAULT_LOAD_TIMEOUT_NS,
    DEFAULT_PORT,
    FOREVER_NS,
    NS_PER_S,
    DurationError,
    log,
    parse_go_bool,
    parse_go_duration,
    parse_go_int64,
    user_home,
)


def var(key: str) -> str:
    """envconfig.Var: TrimSpace, then trim surrounding quote characters."""
    return os.environ.get(key, "").strip().strip("\"'")


@dataclass(frozen=True)
class HostURL:
    scheme: str
    host: str  # bind/connect host without brackets ("" = all interfaces)
    port: int
    path: str = ""

    @property
    def hostport(self) -> str:
        """net.JoinHostPort."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _split_host_port(hostport: str) -> tuple[str, str] | None:
    """net.SplitHostPort; None where Go returns an error."""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0 or hostport[end + 1:end + 2] != ":":
            return None
        host, port = hostport[1:end], hostport[end + 2:]
        return None if "[" in port or "]" in port else (host, port)
    if hostport.count(":") != 1:
        return None
    host, port = hostport.split(":")
    return host, port


def _parse_ip(text: str) -> str | None:
    import ipaddress
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def host() -> HostURL:
    """envconfig.Host: OLLAMA_HOST -> scheme, host, port (default 127.0.0.1:11434)."""
    default_port = str(DEFAULT_PORT)
    text = var("OLLAMA_HOST")
    scheme, sep, hostport = text.partition("://")
    if not sep:
        scheme, hostport = "http", text
        if text == "ollama.com":
            scheme, hostport = "https", "ollama.com:443"
    elif scheme == "http":
        default_port = "80"
    elif scheme == "https":
        default_port = "443"
    hostport, _, path = hostport.partition("/")
    split = _split_host_port(hostport)
    if split is None:
        bind, port = "127.0.0.1", default_port
        ip = _parse_ip(hostport.strip("[]"))
        if ip is not None:
            bind = ip
        elif hostport:
            bind = hostport
    else:
        bind, port = split
    try:
        number = parse_go_int64(port)
        if not 0 <= number <= 65535:
            raise ValueError(port)
    except ValueError:
        log("WARN", "config.go", "invalid port, using default", port=port, default=default_port)
        number = int(default_port)
    return HostURL(scheme, bind, number, path)


def connectable_host() -> HostURL:
    """envconfig.ConnectableHost: 0.0.0.0 -> 127.0.0.1, :: -> ::1 (for clients)."""
    url = host()
    ip = _parse_ip(url.host)
    if ip in ("0.0.0.0", "::"):
        return HostURL(url.scheme, "127.0.0.1" if ip == "0.0.0.0" else "::1", url.port, url.path)
    return url


def _duration_env(key: str, default_ns: int) -> int:
    value = default_ns
    text = var(key)
    if text:
        try:
            value = parse_go_duration(text)
        except DurationError:
            with contextlib.suppress(ValueError):  # upstream keeps the default silently
                value = parse_go_int64(text) * NS_PER_S
    return value


def keep_alive() -> int:
    """envconfig.KeepAlive: Go duration, else integer seconds, else 5m; < 0 = forever."""
    value = _duration_env("OLLAMA_KEEP_ALIVE", DEFAULT_KEEP_ALIVE_NS)
    return FOREVER_NS if value < 0 else min(value, FOREVER_NS)


def load_timeout() -> int:
    """envconfig.LoadTimeout: like KeepAlive but default 5m and <= 0 = forever."""
    value = _duration_env("OLLAMA_LOAD_TIMEOUT", DEFAULT_LOAD_TIMEOUT_NS)
    return FOREVER_NS if value <= 0 else min(value, FOREVER_NS)


def uint(key: str, default: int) -> int:
    """envconfig.Uint: strconv.ParseUint or a WARN line and the default."""
    text = var(key)
    if text:
        if re.fullmatch(r"\d+", text) and int(text) < 2**64:
            return int(text)
        log("WARN", "config.go", "invalid environment variable, using default",
            key=key, value=text, default=default)
    return default


def bool_with_default(key: str, default: bool) -> bool:
    """envconfig.BoolWithDefault: unparsable non-empty values mean true."""
    text = var(key)
    if not text:
        return default
    try:
        return parse_go_bool(text)
    except ValueError:
        return True


def models_dir() -> Path:
    """envconfig.Models: OLLAMA_MODELS or $HOME/.ollama/models."""
    text = var("OLLAMA_MODELS")
    return Path(text) if text else user_home() / ".ollama" / "models"
