"""The appliance facts the in-image programs need.

These mirror builder/facts.py, which the image cannot import (the builder is not in the
image); tests/unit/test_inimage_units.py fails if the two disagree.
"""

from __future__ import annotations

from typing import Final

API_KEY_FILE: Final = "/var/lib/neuraldrive/secrets/api-key"
ADMIN_KEY_FILE: Final = "/var/lib/neuraldrive/secrets/admin-key"
API_KEY_GROUP: Final = "neuraldrive-api"
STATE_DIR: Final = "/var/lib/neuraldrive"
RUN_DIR: Final = "/run/neuraldrive"
GPU_ENV: Final = "/run/neuraldrive/gpu.env"
OLLAMA_PORT: Final = 11434

# Read in this order, later files win: the image's defaults, then the user's persistent
# overrides. The units load the same list with EnvironmentFile= (builder/facts.py CONF_FILES).
CONF_FILES: Final = (
    "/etc/neuraldrive/ollama.conf",
    "/var/lib/neuraldrive/config/ollama.conf",
    "/etc/neuraldrive/neuraldrive.conf",
    "/var/lib/neuraldrive/config/neuraldrive.conf",
)

ENGINE_UNIT: Final = "neuraldrive-ollama.service"
GATEWAY_UNIT: Final = "neuraldrive-caddy.service"
ISSUE_UNIT: Final = "neuraldrive-issue.service"
# The admin's SSH public keys (one a line), on the persistence partition: sshd runs while the
# file of ADMIN_USER holds a key (builder/facts.py AUTHORIZED_KEYS_DIR).
AUTHORIZED_KEYS_DIR: Final = "/var/lib/neuraldrive/authorized_keys"
ADMIN_USER: Final = "neuraldrive-admin"
