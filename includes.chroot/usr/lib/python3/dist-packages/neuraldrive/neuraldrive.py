"""neuraldrive: the administrator's command (status, models, load/unload, health, API key).

Run from a shell, not by systemd, so it reads the same config files the units load (later
files win, then the environment).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from . import bench, healthcheck, instances, keys, llama_server, logs, status, status_text
from .appliance import api_urls
from .common import (
    ConfigError,
    Runner,
    fail,
    human_bytes,
    run_command,
)
from .context import SettingsContext
from .ollama import UNLOAD_WAIT_S, Client, EngineDownError, EngineError, entry_name, matches
from .paths import (
    ADMIN_KEY_FILE,
    API_KEY_FILE,
    API_KEY_GROUP,
    ENGINE_UNIT,
    GPU_ENV,
    STATE_DIR,
)

PROG = "neuraldrive"


@dataclass
class Context(SettingsContext):
    """Everything a command touches outside itself, so tests can point it elsewhere."""

    run: Runner = run_command
    out: TextIO = field(default_factory=lambda: sys.stdout)
    gpu_env: Path = Path(GPU_ENV)
    state_dir: Path = Path(STATE_DIR)
    key_file: Path = Path(API_KEY_FILE)
    admin_key_file: Path = Path(ADMIN_KEY_FILE)
    key_group: str = API_KEY_GROUP
    euid: Callable[[], int] = os.geteuid
    unload_wait: float = UNLOAD_WAIT_S

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)


def _vram(entry: dict[str, object]) -> str:
    size_vram = int(str(entry.get("size_vram") or 0))
    if size_vram:
        return f"{human_bytes(size_vram)} VRAM"
    return f"{human_bytes(int(str(entry.get('size') or 0)))} RAM"


def status_sources(ctx: Context) -> status.Sources:
    limits = healthcheck.Limits.from_settings(ctx.settings)
    return status.Sources(Client(ctx.settings.text("OLLAMA_HOST"), timeout=status.ENGINE_TIMEOUT_S),
                          ctx.gpu_env, ctx.state_dir, ctx.run, vram_warn=limits.vram_warn,
                          disk_warn=limits.disk_warn, settings=ctx.settings)


def cmd_status(ctx: Context, args: argparse.Namespace) -> int:
    state = status.collect(status_sources(ctx))
    if args.json:
        ctx.say(json.dumps(state.to_dict(), indent=2))
        return 0 if state.engine_state == "running" else 1
    port = ctx.settings.integer("NEURALDRIVE_GATEWAY_PORT", 8443, minimum=1)
    by_address, by_name = api_urls(port, ctx.run)
    ctx.say(f"API       {by_address}" + (f"  (also {by_name})" if by_name != by_address else ""))
    services = status.unit_states(ctx.run)
    if isinstance(services, str):
        ctx.say(f"Services  {services}")
    else:
        for i, (unit, state_) in enumerate(services):
            ctx.say(f"{'Services' if i == 0 else '':<10}{unit:<40} {state_}")
    for line in [*status_text.render_text(state, ctx.client.url), *filter(None, [llama_server.status_line(ctx.run)])]:
        ctx.say(line)
    if state.engine_state == "down":
        return fail(PROG, f"{state.engine_error}; see systemctl status {ENGINE_UNIT}")
    return 1 if state.engine_state == "error" else 0


def cmd_llama(ctx: Context, _args: argparse.Namespace) -> int:
    line = llama_server.status_line(ctx.run)
    if line is None:
        return fail(PROG, "llama: this image does not run llama.cpp's server (profile llama_server.enabled)")
    ctx.say(line)
    return 0 if line.endswith("  ready") else 1


def cmd_bench(ctx: Context, args: argparse.Namespace) -> int:
    if args.runs < 1:
        return fail(PROG, "bench: --runs must be at least 1", 2)
    client = ctx.client
    report = bench.bench(client, bench.pick_model(client, args.model), args.runs,
                         status.collect(status_sources(ctx)))
    for line in [json.dumps(report, indent=2)] if args.json else bench.render_text(report):
        ctx.say(line)
    return 0


def cmd_models(ctx: Context, _args: argparse.Namespace) -> int:
    client = ctx.client
    models = client.tags()
    loaded = client.ps()
    if not models:
        ctx.say("no models on this appliance yet (pull one through the API)")
        return 0
    ctx.say(f"{'NAME':<40} {'SIZE':>10}  LOADED")
    for entry in sorted(models, key=entry_name):
        name = entry_name(entry)
        here = next((e for e in loaded if matches(e, name)), None)
        size = human_bytes(int(str(entry.get("size") or 0)))
        ctx.say(f"{name:<40} {size:>10}  {_vram(here) if here else ''}".rstrip())
    return 0


def cmd_load(ctx: Context, args: argparse.Namespace) -> int:
    client = ctx.client
    client.load(args.model)
    entry = next((e for e in client.ps() if matches(e, args.model)), None)
    where = f" ({_vram(entry)})" if entry else ""
    ctx.say(f"loaded {args.model}{where}; it stays loaded until unloaded or idle too long")
    return 0


def cmd_unload(ctx: Context, args: argparse.Namespace) -> int:
    if bool(args.models) == bool(args.all):
        return fail(PROG, "unload: name the models to unload, or give --all", 2)
    client = ctx.client
    loaded = client.ps()
    targets = []
    if args.all:
        targets = [entry_name(e) for e in loaded]
        if not targets:
            ctx.say("no models loaded")
    for name in args.models:
        if any(matches(e, name) for e in loaded):
            targets.append(name)
        else:
            ctx.say(f"{name} is not loaded")
    for name in targets:
        client.request_unload(name)
    # The engine says "done" before it has let go of the memory: watch /api/ps instead.
    left = client.wait_gone(targets, ctx.unload_wait) if targets else []
    for name in targets:
        if name not in left:
            entry = next((e for e in loaded if matches(e, name)), {})
            ctx.say(f"unloaded {name} (freed {_vram(entry)})")
    if left:
        return fail(PROG, f"still loaded after {ctx.unload_wait:g} s: {' '.join(left)} "
                          "(busy with a request? it unloads when that finishes)")
    return 0


def cmd_health(ctx: Context, _args: argparse.Namespace) -> int:
    # Report only: restarting the engine is the health timer's job.
    return healthcheck.run_checks(ctx.settings, ctx.gpu_env, ctx.state_dir, ctx.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Administer this NeuralDrive appliance: see its state, manage "
                               "the models in GPU memory, check its health, show or rotate "
                               "the API key.")
    parser.add_argument("-i", "--instance", metavar="NAME", help="engine instance NAME (ollama.instances)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    stat = sub.add_parser("status", help="services, GPU, loaded models, health, disk and the API URL")
    stat.add_argument("--json", action="store_true", help="the status as JSON (what the page reads)")
    stat.set_defaults(handler=cmd_status)
    bench.add_arguments(sub.add_parser("bench", help="time to first token and tokens/s from the "
                                                     "engine's counters")).set_defaults(handler=cmd_bench)
    sub.add_parser("models", help="models on disk (and which are loaded)"
                   ).set_defaults(handler=cmd_models)
    load = sub.add_parser("load", help="load a model and keep it loaded (keep_alive -1)")
    load.add_argument("model")
    load.set_defaults(handler=cmd_load)
    unload = sub.add_parser("unload", help="unload models and wait until their memory is free")
    unload.add_argument("models", nargs="*", metavar="MODEL")
    unload.add_argument("--all", action="store_true", help="every loaded model")
    unload.set_defaults(handler=cmd_unload)
    sub.add_parser("llama", help="llama.cpp's server: its model and whether it is ready (exit 0 ready)"
                   ).set_defaults(handler=cmd_llama)
    sub.add_parser("health", help="run the health check (exit 0 ok, 1 failed, 3 warnings)"
                   ).set_defaults(handler=cmd_health)
    key = sub.add_parser("key", help="the API key clients must send")
    key_sub = key.add_subparsers(dest="key_command", required=True, metavar="ACTION")
    show = key_sub.add_parser("show", help="print the key (root or group " + API_KEY_GROUP + ")")
    rotate = key_sub.add_parser("rotate", help="make a new key; it counts at once (root)")
    for action, handler in ((show, keys.cmd_key_show), (rotate, keys.cmd_key_rotate)):
        action.add_argument("--admin", action="store_true",
                            help="the admin key (create, copy, delete, push) instead of the API key")
        action.set_defaults(handler=handler)
    logs.add_parser(sub, lambda _ctx, args: logs.show(args))
    return parser


def dispatch(handler: Callable[[Context, argparse.Namespace], int], ctx: Context,
             args: argparse.Namespace) -> int:
    """Expected failures become one line on stderr and an exit status, never a traceback."""
    try:
        return handler(ctx, args)
    except EngineDownError as exc:
        return fail(PROG, f"{exc}; is {ENGINE_UNIT} running? (systemctl status {ENGINE_UNIT})")
    except EngineError as exc:
        return fail(PROG, str(exc))
    except ConfigError as exc:
        return fail(PROG, str(exc), 2)


def main(argv: Sequence[str] | None = None, ctx: Context | None = None) -> int:
    args, ctx = build_parser().parse_args(argv), ctx or Context.from_system()
    return dispatch(lambda c, a: args.handler(instances.select(c, a.instance), a), ctx, args)


# The short commands of the seed's GPU manager, kept for muscle memory.
def _status_json(ctx: Context, _args: argparse.Namespace) -> int:
    loaded = ctx.client.call("GET", "/api/ps")
    ctx.say(json.dumps(loaded, indent=2))
    return 0


ALIASES: dict[str, tuple[str, Callable[[Context, argparse.Namespace], int]]] = {
    "ollama-unload": ("Unload the named models, or all loaded models when none is named; "
                      "waits until their memory is free. Same as `neuraldrive unload`.",
                      cmd_unload),
    "ollama-status": ("Print the engine's loaded models (GET /api/ps) as JSON.", _status_json),
    "ollama-models": ("List the models on this appliance. Same as `neuraldrive models`.",
                      cmd_models),
}


def alias_main(name: str, argv: Sequence[str] | None = None, ctx: Context | None = None) -> int:
    description, handler = ALIASES[name]
    parser = argparse.ArgumentParser(prog=name, description=description)
    if handler is cmd_unload:
        parser.add_argument("models", nargs="*", metavar="MODEL")
        parser.add_argument("--all", action="store_true", help="every loaded model (the default)")
    args = parser.parse_args(argv)
    if handler is cmd_unload:
        args.all = not args.models
    return dispatch(handler, ctx or Context.from_system(), args)
