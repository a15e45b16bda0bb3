"""The release stage's errors: a file or signature that does not verify (1), input it cannot use (2)."""

from __future__ import annotations

from builder.errors import NeuralDriveError


class ReleaseError(NeuralDriveError):
    """A file does not match its checksum, a signature does not verify, signing failed."""

    exit_code = 1


class ReleaseInputError(NeuralDriveError):
    """Missing or unreadable input: an ISO, SHA256SUMS, a signature, a keyring, the signing key."""

    exit_code = 2
