"""The option groups build.py's commands share, each defined once, and the error mapping every command
wears (`Commands`): a NeuralDriveError becomes one line on stderr and its exit code (2 bad input, 1 build
or run failure), Ctrl-C (and SIGTERM) exit 130; the terminal prompts commands hand to builder/.

A group is a composed click decorator (`options(...)`); a group whose options make one value
(`artifact_options` -> ArtifactOptions) hands the command that value instead of the loose options.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from builder import console
from builder.errors import NeuralDriveError

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "neuraldrive"
PATH = click.Path(path_type=Path)


class Commands(click.Group):
    """build.py's group: every command's NeuralDriveError becomes one line on stderr (its first line
    `error: ...` last, after any detail lines) and its exit code; Ctrl-C exits 130."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NeuralDriveError as exc:
            lines = str(exc).splitlines() or [exc.__class__.__name__]
            for extra in lines[1:]:
                click.echo(extra, err=True)
            click.echo(f"error: {lines[0]}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


def sigterm_as_interrupt() -> None:
    """SIGTERM (CI timeouts, `kill`) unwinds like Ctrl-C: every VM and temp dir is cleaned up."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def terminal_confirm(question: str) -> None:
    click.confirm(question, abort=True, err=True)


def terminal_passphrase() -> bytes:
    return str(click.prompt("LUKS passphrase", hide_input=True, confirmation_prompt=True, err=True)).encode()


def options(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """Compose click options into one decorator, in the order given."""
    def apply(func: F) -> F:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


def profile_option(default: str | None, help: str) -> Callable[[F], F]:
    return click.option("--profile", "profile_name", default=default, show_default=default is not None, help=help)


def out_option(default: str = "out") -> Callable[[F], F]:
    return click.option("--out", "out_dir", type=PATH, default=Path(default), show_default=True,
                        help="Directory for the ISO and its companion files.")


CACHE = click.option("--cache-dir", type=PATH, default=DEFAULT_CACHE, show_default=True,
                     help="Artifact cache, live-build package/bootstrap cache and build dirs.")
OFFLINE = click.option("--offline", is_flag=True, help="Never download artifacts: use the cache or fail.")
VERBOSE = click.option("-v", "--verbose", is_flag=True, expose_value=False, help="Print more detail.",
                       callback=lambda ctx, param, value: console.set_verbose(value))
ACCEL = click.option("--accel", type=click.Choice(["auto", "kvm", "tcg"]), default="auto", show_default=True,
                     help="auto uses KVM only if it really runs a guest.")
AUTHORIZED_KEYS = click.option("--authorized-keys", type=PATH,
                               help="SSH public keys for neuraldrive-admin (profile must enable SSH).")
COMMON = options(profile_option("default", "Profile name (config/profiles/NAME.yaml) or path to a YAML file."),
                 out_option(), CACHE, OFFLINE, VERBOSE)


def artifact_options(func: F) -> F:
    """--artifact-mirror, --ollama-archive, --ollama-sha256, --allow-unofficial-artifacts (with --offline)
    become one `artifacts: ArtifactOptions` argument."""
    @functools.wraps(func)
    def wrapper(*args: Any, artifact_mirror: str | None, ollama_archive: str | None, ollama_sha256: str | None,
                allow_unofficial_artifacts: bool, offline: bool, **kwargs: Any) -> Any:
        from builder.image.pipeline import ArtifactOptions

        kwargs["artifacts"] = ArtifactOptions(mirror=artifact_mirror, archive=ollama_archive,
                                              archive_sha256=ollama_sha256, allow_unofficial=allow_unofficial_artifacts,
                                              offline=offline)
        return func(*args, **kwargs)

    return options(
        click.option("--artifact-mirror", metavar="URL",
                     help="Base URL serving the release assets by file name (local or air-gapped mirror)."),
        click.option("--ollama-archive", metavar="PATH|URL", envvar="NEURALDRIVE_OLLAMA_ARCHIVE",
                     help="Use this ollama-linux-amd64.tar.zst instead of the pinned URL "
                          "(env NEURALDRIVE_OLLAMA_ARCHIVE). Verified against the pin unless --ollama-sha256."),
        click.option("--ollama-sha256", metavar="HEX",
                     help="sha256 of --ollama-archive when it is not the pinned release (makes it unofficial)."),
        click.option("--allow-unofficial-artifacts", is_flag=True,
                     help="Let a release profile use an archive that is not an official Ollama release asset."),
    )(wrapper)  # type: ignore[return-value]
