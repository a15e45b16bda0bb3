"""The base of a program's context: the settings read as the units load them, and the engine they name.

Shared by neuraldrive.Context (the administrator's command) and console.Device (the menu). A
subclass's own fields need defaults: dataclass fields follow this base's `settings`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Self

from .common import Settings, load_conf_files
from .ollama import Client
from .paths import CONF_FILES


@dataclass
class SettingsContext:
    settings: Settings

    @classmethod
    def from_system(cls) -> Self:
        """The config files (later files win), then the environment: what a shell's command sees."""
        return cls(Settings(load_conf_files(CONF_FILES, os.environ)))

    @property
    def client(self) -> Client:
        return Client(self.settings.text("OLLAMA_HOST"))
