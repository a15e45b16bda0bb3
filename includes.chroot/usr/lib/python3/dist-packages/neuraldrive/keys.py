"""`neuraldrive key show|rotate [--admin]`: the API key (or the admin key) clients must send."""

from __future__ import annotations

import argparse
import grp
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from .appliance import read_api_key
from .common import atomic_write, fail
from .paths import ISSUE_UNIT

if TYPE_CHECKING:
    from .neuraldrive import Context

PROG = "neuraldrive"


def _key_file(ctx: Context, args: argparse.Namespace) -> Path:
    return ctx.admin_key_file if args.admin else ctx.key_file


def cmd_key_show(ctx: Context, args: argparse.Namespace) -> int:
    key_file = _key_file(ctx, args)
    try:
        key = read_api_key(key_file)
    except PermissionError:
        return fail(PROG, f"cannot read {key_file}: permission denied (run as root or as a "
                          f"member of group {ctx.key_group})")
    except FileNotFoundError:
        kind = "admin" if args.admin else "API"
        return fail(PROG, f"no {kind} key at {key_file} yet (neuraldrive-firstboot.service creates it "
                          "at first boot)")
    except OSError as exc:
        return fail(PROG, f"cannot read the API key: {exc}")
    ctx.say(key)
    return 0


def cmd_key_rotate(ctx: Context, args: argparse.Namespace) -> int:
    if ctx.euid() != 0:
        return fail(PROG, "key rotate: must be run as root (sudo neuraldrive key rotate)")
    try:
        gid = grp.getgrnam(ctx.key_group).gr_gid
    except KeyError:
        return fail(PROG, f"group {ctx.key_group} does not exist; the gateway could not read a key")
    key_file = _key_file(ctx, args)
    key = "nd-" + secrets.token_urlsafe(32)
    try:
        # No trailing newline: readers that do not strip still get exactly the key.
        atomic_write(key_file, key, mode=0o640, gid=gid)
    except OSError as exc:
        return fail(PROG, f"cannot write {key_file}: {exc.strerror or exc}")
    # gateway-auth reads the key for every request: no restart, no dropped streams.
    if not args.admin:
        ctx.run(["systemctl", "start", "--no-block", ISSUE_UNIT])  # the console shows the key
    ctx.say(key)
    ctx.say(f"new {'admin' if args.admin else 'API'} key in {key_file}; the old one no longer works")
    return 0
