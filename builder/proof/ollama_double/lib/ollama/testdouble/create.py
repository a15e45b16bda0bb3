"""`ollama create -f Modelfile` (cmd/cmd.go CreateHandler; parser/parser.go, v0.32.7): the Modelfile's
commands become one /api/create request; a FROM file is uploaded as a blob first."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from . import goenv
from .client import ClientError, print_statuses, stream, upload


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """parser/parser.go: COMMAND args lines, '#' comments, triple-quoted values."""
    commands, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        command, _, args = line.partition(" ")
        args = args.strip()
        if args.startswith('"""'):
            value = args[3:]
            while '"""' not in value and i < len(lines):
                value += "\n" + lines[i]
                i += 1
            args = value.split('"""', 1)[0]
        elif len(args) >= 2 and args[0] == args[-1] == '"':
            args = args[1:-1]
        commands.append((command.lower(), args))
    return commands


def cmd_create(model: str, filename: str | None) -> None:
    path = Path(filename or "Modelfile")
    try:
        text = path.read_text()
    except OSError as exc:
        raise ClientError(goenv.go_os_error("open", exc)) from exc
    print("gathering model components", file=sys.stderr, flush=True)
    req: dict[str, Any] = {"model": model}
    params: dict[str, Any] = {}
    for command, args in parse_modelfile(text):
        if command == "from":
            source = Path(args).expanduser()
            if not source.is_absolute():
                source = path.parent / source
            if source.exists():
                req["files"] = {source.name: upload(source)}
            else:
                req["from"] = args
        elif command in ("template", "system", "license"):
            req[command] = args
        elif command == "parameter":
            key, _, value = args.partition(" ")
            params[key] = _param_value(value.strip())
        elif command == "message":
            role, _, content = args.partition(" ")
            req.setdefault("messages", []).append({"role": role, "content": content})
        else:
            raise ClientError(f'command must be one of "from", "license", "template", "system", "adapter", '
                              f'"renderer", "parser", "parameter", or "message"; got {command!r}')
    if params:
        req["parameters"] = params
    print_statuses(stream("/api/create", req))


def _param_value(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return shlex.split(value)[0] if value.startswith('"') else value
