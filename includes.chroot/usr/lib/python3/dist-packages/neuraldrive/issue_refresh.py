"""issue-refresh: put what a person at the console needs to connect a client into /etc/issue.

getty shows /etc/issue above the login prompt: the API URL, the API key and a one-line
status. Run by a timer, so a new DHCP address shows up within a minute.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .appliance import api_urls, read_api_key
from .common import ConfigError, Runner, Settings, atomic_write, fail, log, run_command
from .gpu import read_gpu_state
from .ollama import Client, EngineError
from .paths import API_KEY_FILE, GPU_ENV

PROG = "issue-refresh"
ISSUE = "/etc/issue"
# The console must not wait on a hung engine.
ENGINE_TIMEOUT_S = 3.0


def _plain(text: str) -> str:
    """agetty expands backslash escapes in /etc/issue; ours must show literally."""
    return text.replace("\\", "\\\\")


def render_issue(by_address: str, by_name: str, key: str, engine: str, gpu: str) -> str:
    lines = [
        "NeuralDrive LLM appliance on \\S{PRETTY_NAME} - \\n (\\l)",
        "",
        f"  API URL:  {_plain(by_address)}",
    ]
    if by_name != by_address:
        lines.append(f"        or  {_plain(by_name)}")
    lines += [
        f"  API key:  {_plain(key)}",
        "            (for the Ollama API and the OpenAI-compatible /v1 API)",
        f"  Engine:   {_plain(engine)}",
        f"  GPU:      {_plain(gpu)}",
        "",
        "  Log in as the administrator and run `neuraldrive status` for details.",
        "",
        "",
    ]
    return "\n".join(lines)


def engine_line(client: Client) -> str:
    try:
        version = client.version(timeout=ENGINE_TIMEOUT_S)
        loaded = client.ps()
    except EngineError:
        return "not answering yet (starting, or see `neuraldrive status`)"
    names = ", ".join(str(e.get("name") or e.get("model")) for e in loaded) or "none"
    return f"Ollama {version}, models loaded: {names}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=f"Rewrite {ISSUE} (atomically, only when it changed) with the appliance's "
                    "API URL (NEURALDRIVE_GATEWAY_PORT), API key and engine/GPU status.")
    parser.add_argument("--output", type=Path, default=Path(ISSUE), metavar="FILE",
                        help=f"file to write (default {ISSUE}); '-' prints it instead")
    parser.add_argument("--key-file", type=Path, default=Path(API_KEY_FILE), metavar="FILE",
                        help=f"where the API key is (default {API_KEY_FILE})")
    parser.add_argument("--gpu-env", type=Path, default=Path(GPU_ENV), metavar="FILE",
                        help=f"GPU facts to show (default {GPU_ENV})")
    return parser


def main(argv: Sequence[str] | None = None, run: Runner = run_command) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings(os.environ)
    try:
        port = settings.integer("NEURALDRIVE_GATEWAY_PORT", 8443, minimum=1)
    except ConfigError as exc:
        return fail(PROG, str(exc), 2)
    by_address, by_name = api_urls(port, run)
    try:
        key = read_api_key(args.key_file)
    except OSError:
        key = "not created yet (first boot still running?)"
    gpu = read_gpu_state(args.gpu_env)
    text = render_issue(by_address, by_name, key,
                        engine_line(Client(settings.text("OLLAMA_HOST"), timeout=ENGINE_TIMEOUT_S)),
                        gpu.summary() if gpu else "not detected yet")
    if str(args.output) == "-":
        print(text, end="")
        return 0
    try:
        if args.output.read_text(encoding="utf-8") == text:
            return 0  # unchanged: do not make getty redraw every minute
    except (OSError, UnicodeDecodeError):
        pass  # missing or unreadable: write it
    try:
        # Root-only: agetty (root) shows it at the console; no other account or service reads the key.
        atomic_write(args.output, text, mode=0o600)
    except OSError as exc:
        return fail(PROG, f"cannot write {args.output}: {exc.strerror or exc}")
    # Running gettys only re-read the file when told (or at the next prompt).
    reload = run(["agetty", "--reload"])
    log(f"updated {args.output}: {by_address}"
        + ("" if reload.ok else f" (gettys not reloaded: {reload.reason()})"))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
