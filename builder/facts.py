"""The appliance's fixed facts: one place for each path, UID and port that templates and tests read."""

from __future__ import annotations

from typing import Final

OLLAMA_USER: Final = "neuraldrive-ollama"
OLLAMA_UID: Final = 901
GATEWAY_USER: Final = "neuraldrive-caddy"
GATEWAY_UID: Final = 902
# Members of this group may read the API key (the gateway and the admin).
API_KEY_GROUP: Final = "neuraldrive-api"
API_KEY_GID: Final = 903
# The page's status writer: a fixed user, not DynamicUser=, because the system bus (dbus-daemon)
# drops connections from DynamicUser= accounts even with nss-systemd, and its `systemctl
# is-active` asks systemd over that bus (measured in the image: "Transport endpoint is not
# connected"; systemd issue 22737).
STATUS_USER: Final = "neuraldrive-status"
STATUS_UID: Final = 904
ADMIN_USER: Final = "neuraldrive-admin"
ADMIN_UID: Final = 1000

OLLAMA_BIN: Final = "/usr/local/bin/ollama"
OLLAMA_LIB: Final = "/usr/local/lib/ollama"
OLLAMA_PORT: Final = 11434

# llama.cpp's server from the same verified archive (lib/ollama/llama-server), as its own engine:
# its own user (reads the model store through the engine's group, never writes it), loopback port.
LLAMA_BIN: Final = "/usr/local/lib/ollama/llama-server"
LLAMA_PORT: Final = 11440
LLAMA_UNIT: Final = "neuraldrive-llama-server.service"
# Its settings: the image's (rendered from the profile), then the persistent override (wins).
LLAMA_CONF_FILES: Final = ("/etc/neuraldrive/llama-server.conf", "/var/lib/neuraldrive/config/llama-server.conf")

ETC_DIR: Final = "/etc/neuraldrive"
# The in-image programs the units run (their logic: the neuraldrive package in Debian's python3 path).
PROGRAM_DIR: Final = "/usr/lib/neuraldrive"
STATE_DIR: Final = "/var/lib/neuraldrive"
MODELS_DIR: Final = "/var/lib/neuraldrive/models/"
# The engine's $HOME: `ollama serve` creates ~/.ollama/id_ed25519 before it listens and exits when
# it cannot; owned by the engine user, the only place in the state dir besides models/ it may write.
ENGINE_HOME: Final = "/var/lib/neuraldrive/engine"
OVERRIDE_DIR: Final = "/var/lib/neuraldrive/config"
# The settings files, read in this order (later files win): the image's defaults, then the persistent
# override of each. The units load them with EnvironmentFile= (config/templates/units.j2), the
# in-image programs with neuraldrive.paths.CONF_FILES (a unit test keeps the two equal).
CONF_FILES: Final = (
    f"{ETC_DIR}/ollama.conf",
    f"{OVERRIDE_DIR}/ollama.conf",
    f"{ETC_DIR}/neuraldrive.conf",
    f"{OVERRIDE_DIR}/neuraldrive.conf",
)
SECRETS_DIR: Final = "/var/lib/neuraldrive/secrets"
API_KEY_FILE: Final = "/var/lib/neuraldrive/secrets/api-key"
# Needed, besides the API key, for the routes that change the model store (create, copy, delete, push).
ADMIN_KEY_FILE: Final = "/var/lib/neuraldrive/secrets/admin-key"
# The gateway asks gateway-auth about every request here (Caddy forward_auth).
AUTH_SOCKET: Final = "/run/neuraldrive-auth/auth.sock"
TLS_DIR: Final = "/var/lib/neuraldrive/tls"
SSH_HOST_KEY_DIR: Final = "/var/lib/neuraldrive/ssh"
RUN_DIR: Final = "/run/neuraldrive"
GPU_ENV: Final = "/run/neuraldrive/gpu.env"
LOG_DIR: Final = "/var/log/neuraldrive"
# The journal: with persistence, live-boot binds this dir of the persistence partition over it
# (persistence.conf); without, the image has no such dir and journald keeps the journal in RAM.
JOURNAL_DIR: Final = "/var/log/journal"
# Public keys for the admin's SSH login written onto a stick (`build.py usb --authorized-keys`):
# sshd reads <dir>/<user> (root-owned, world-readable: sshd reads it as the user); while the admin's
# file is not empty any image runs sshd (ssh.service's drop-in and neuraldrive-ssh-keys.path, which
# also catches the console writing it at runtime); host keys: firstboot, on the persistence partition.
AUTHORIZED_KEYS_DIR: Final = "/var/lib/neuraldrive/authorized_keys"
# sshd's port; the firewall opens it only while sshd runs (the ssh.service drop-in adds it to this set).
SSH_PORT: Final = 22
SSH_FIREWALL_SET: Final = "ssh_open"
# persistence.conf of every stick and test disk: what live-boot keeps on the persistence partition.
PERSISTENCE_CONF: Final = f"{STATE_DIR} bind\n{JOURNAL_DIR} bind\n"

# live-build bind-mounts the config dir read-only at /live-build/config while chroot hooks run:
# the verified archives are staged there and never become part of the image.
STAGED_ARTIFACT_SUBDIR: Final = "neuraldrive-artifacts"
STAGED_ARTIFACT_DIR: Final = "/live-build/config/neuraldrive-artifacts"
# The builder installs the engine into the chroot and lists what it wrote (paths below /usr/local,
# sorted) in this file of that dir; hook 03-install-extras checks the chroot against it.
ENGINE_MANIFEST: Final = "engine-files.txt"
ENGINE_PREFIX: Final = "/usr/local"

OFFICIAL_OLLAMA_URL_PREFIX: Final = "https://github.com/ollama/ollama/releases/download/"
