"""llama-server's command line, as common/arg.cpp parses the options its callers pass."""

from __future__ import annotations

from dataclasses import dataclass, field

# Flags taking a value (every spelling common/arg.cpp accepts for them), and flags without one.
VALUED = {
    "-m": "model", "--model": "model", "--host": "host", "--port": "port",
    "-a": "alias", "--alias": "alias", "-c": "ctx_size", "--ctx-size": "ctx_size",
    "-np": "parallel", "--parallel": "parallel", "-fa": "flash_attn", "--flash-attn": "flash_attn",
    "-ngl": "n_gpu_layers", "--gpu-layers": "n_gpu_layers", "--n-gpu-layers": "n_gpu_layers",
    "-b": "batch_size", "--batch-size": "batch_size", "-ub": "ubatch_size", "--ubatch-size": "ubatch_size",
    "-t": "threads", "--threads": "threads", "-ctk": "cache_type_k", "--cache-type-k": "cache_type_k",
    "-ctv": "cache_type_v", "--cache-type-v": "cache_type_v", "-lv": "log_verbosity",
    "--log-verbosity": "log_verbosity", "--verbosity": "log_verbosity", "--log-colors": "log_colors",
}
SWITCHES = {"--no-webui": "no_webui", "--offline": "offline", "--embedding": "embeddings",
            "--embeddings": "embeddings", "--no-log-prefix": "", "--no-log-timestamps": "",
            "--list-devices": "list_devices"}
# common/arg.cpp `-fa, --flash-attn [on|off|auto]`: the value spellings it maps to each state.
FLASH_ATTN = {"on": "on", "enabled": "on", "1": "on", "off": "off", "disabled": "off", "0": "off",
              "auto": "auto", "-1": "auto"}
INTEGERS = ("port", "ctx_size", "parallel", "n_gpu_layers", "batch_size", "ubatch_size", "threads")


class ArgError(Exception):
    """What common_params_parse prints before it returns false (the server exits 1)."""


@dataclass
class Options:
    model: str = ""
    host: str = "127.0.0.1"
    port: int = 8080
    alias: str = ""
    ctx_size: int = 0
    parallel: int = -1
    flash_attn: str = "auto"
    n_gpu_layers: int = -1
    batch_size: int = 2048
    ubatch_size: int = 512
    threads: int = -1
    embeddings: bool = False
    no_webui: bool = False
    offline: bool = False
    list_devices: bool = False
    extra: dict[str, str] = field(default_factory=dict)  # accepted, not acted on


def parse(argv: list[str]) -> Options:
    opts = Options()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in SWITCHES:
            if SWITCHES[arg]:
                setattr(opts, SWITCHES[arg], True)
            i += 1
            continue
        if arg not in VALUED:
            raise ArgError(f"error: invalid argument: {arg}")
        if i + 1 >= len(argv):
            raise ArgError(f"error while handling argument \"{arg}\": expected value for argument")
        key, value = VALUED[arg], argv[i + 1]
        if key in INTEGERS:
            try:
                setattr(opts, key, int(value))
            except ValueError:
                raise ArgError(f"error while handling argument \"{arg}\": stoi") from None
        elif key == "flash_attn":
            if value not in FLASH_ATTN:
                raise ArgError(f"error while handling argument \"{arg}\": unknown value for --flash-attn: "
                               f"'{value}'")
            opts.flash_attn = FLASH_ATTN[value]
        elif hasattr(opts, key):
            setattr(opts, key, value)
        else:
            opts.extra[key] = value
        i += 2
    if not opts.list_devices and not opts.model:
        # Without -m the real server starts in router mode; the double does not reproduce it.
        raise ArgError("error: this test double runs single-model mode only: -m/--model is required")
    return opts
