"""The two ways writing a stick fails: bad input or an unusable target (exit 2, nothing written), or a
failure while writing (exit 1)."""

from __future__ import annotations

from builder.errors import NeuralDriveError


class UsbError(NeuralDriveError):
    exit_code = 2


class UsbWriteError(NeuralDriveError):
    exit_code = 1
