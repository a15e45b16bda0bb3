"""One exception type per stage; the CLI maps them to a one-line message and an exit code."""

from __future__ import annotations


class NeuralDriveError(Exception):
    """Base: `exit_code` 2 means bad input, 1 means the build or run failed."""

    exit_code = 1


class ProfileError(NeuralDriveError):
    exit_code = 2


class OptionError(NeuralDriveError):
    """A command-line option the CLI will not act on (e.g. a --tree-dir it did not make)."""

    exit_code = 2


class LockError(NeuralDriveError):
    exit_code = 2


class ArtifactError(NeuralDriveError):
    exit_code = 1


class TreeError(NeuralDriveError):
    exit_code = 1


class LiveBuildError(NeuralDriveError):
    exit_code = 1


class HostError(NeuralDriveError):
    """The host cannot build: missing tool, wrong live-build, not root."""

    exit_code = 2


class VMError(NeuralDriveError):
    exit_code = 1


class UnofficialArtifactError(ArtifactError):
    """A release profile was given an archive that is not an official release asset."""

    exit_code = 2


class UnsafeArchiveError(ArtifactError):
    """A verified archive holds something the builder will not write (device, `..`, escaping link)."""

    exit_code = 2
