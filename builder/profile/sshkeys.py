"""authorized_keys files: only lines that parse as OpenSSH public keys ever go into an image.

A private key, /etc/shadow or any other file given as `ssh.authorized_keys` / `--authorized-keys`
is refused naming file and line; the image gets the validated lines, never the file's bytes.
Format: sshd(8) "AUTHORIZED_KEYS FILE FORMAT": [options] keytype base64-key [comment].
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from pathlib import Path

from builder.errors import ProfileError
from builder.image.escape import describe, first_control
from builder.profile.strict_yaml import read_utf8, shown

MAX_BYTES = 256 * 1024
KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-rsa",
)
_EC_POINT_BYTES = {"nistp256": 65, "nistp384": 97, "nistp521": 133}  # 0x04 || X || Y
_FLAG_OPTIONS = frozenset({
    "agent-forwarding", "cert-authority", "no-agent-forwarding", "no-port-forwarding", "no-pty",
    "no-touch-required", "no-user-rc", "no-x11-forwarding", "port-forwarding", "pty", "restrict",
    "user-rc", "verify-required", "x11-forwarding",
})
_VALUE_OPTIONS = frozenset({
    "command", "environment", "expiry-time", "from", "permitlisten", "permitopen", "principals", "tunnel",
})
_OPTION = re.compile(r'([A-Za-z0-9-]+)(="(?:[^"\\]|\\.)*")?')


class _BadKeyError(Exception):
    pass


def read_authorized_keys(path: Path) -> list[str]:
    """The key lines of `path`, normalised; ProfileError `file:line: what is wrong` otherwise."""
    where = shown(path)
    text = read_utf8(path, MAX_BYTES, "an authorized_keys file")
    keys: list[str] = []
    for number, raw_line in enumerate(text.split("\n"), start=1):
        line = raw_line.removesuffix("\r").strip(" \t")
        if not line or line.startswith("#"):
            continue
        try:
            keys.append(parse_key_line(line))
        except _BadKeyError as exc:
            raise ProfileError(f"{where}:{number}: {exc}") from None
    if not keys:
        raise ProfileError(f"{where}: holds no public key")
    return keys


def parse_key_line(line: str) -> str:
    bad = first_control(line.replace("\t", " "))
    if bad is not None:
        raise _BadKeyError(f"control character {describe(bad)}")
    options, rest = _split_options(line)
    parts = rest.split(None, 2)
    if len(parts) < 2 or parts[0] not in KEY_TYPES:
        raise _BadKeyError(f"not an OpenSSH public key (type one of {', '.join(KEY_TYPES)})")
    key_type, blob = parts[0], parts[1]
    try:
        data = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        raise _BadKeyError(f"{key_type}: key data is not base64") from None
    if not _blob_ok(key_type, data):
        raise _BadKeyError(f"{key_type}: key data is not a {key_type} key")
    comment = parts[2].strip() if len(parts) > 2 else ""
    return " ".join(p for p in (options, key_type, blob, comment) if p)


def _split_options(line: str) -> tuple[str, str]:
    """sshd's options: comma-separated `name` or `name="value"` (\\" inside), up to a blank."""
    if line.split(None, 1)[0] in KEY_TYPES:
        return "", line
    pos = 0
    while True:
        match = _OPTION.match(line, pos)
        if match is None:
            raise _BadKeyError("not an OpenSSH public key")
        name = match.group(1).lower()
        if name not in (_VALUE_OPTIONS if match.group(2) else _FLAG_OPTIONS):
            raise _BadKeyError("not an OpenSSH public key (unknown option or option without its value)")
        pos = match.end()
        if pos < len(line) and line[pos] == ",":
            pos += 1
            continue
        if pos < len(line) and line[pos] in " \t":
            return line[:pos], line[pos:].strip(" \t")
        raise _BadKeyError("not an OpenSSH public key")


def _blob_ok(key_type: str, data: bytes) -> bool:
    fields: list[bytes] = []
    pos = 0
    while pos < len(data):
        if pos + 4 > len(data):
            return False
        (length,) = struct.unpack_from(">I", data, pos)
        if pos + 4 + length > len(data):
            return False
        fields.append(data[pos + 4: pos + 4 + length])
        pos += 4 + length
    if not fields or fields[0] != key_type.encode():
        return False
    body = fields[1:]
    if key_type == "ssh-ed25519":
        return len(body) == 1 and len(body[0]) == 32
    if key_type == "sk-ssh-ed25519@openssh.com":
        return len(body) == 2 and len(body[0]) == 32 and body[1].startswith(b"ssh:")
    if key_type.startswith(("ecdsa-sha2-", "sk-ecdsa-sha2-")):
        curve = key_type.removeprefix("sk-").removesuffix("@openssh.com").removeprefix("ecdsa-sha2-")
        wanted = 3 if key_type.startswith("sk-") else 2
        if len(body) != wanted or body[0] != curve.encode():
            return False
        if wanted == 3 and not body[2].startswith(b"ssh:"):
            return False
        return len(body[1]) == _EC_POINT_BYTES[curve] and body[1][0] == 4
    # ssh-rsa: mpint e, mpint n; at least 2048 bits (OpenSSH refuses shorter keys too)
    if len(body) != 2:
        return False
    e, n = (int.from_bytes(x, "big") for x in body)
    return e >= 3 and e % 2 == 1 and 2048 <= n.bit_length() <= 16384
