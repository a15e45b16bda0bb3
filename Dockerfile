# Build container for hosts that are not Debian 12/13. live-build needs a privileged container
# (debootstrap, chroot mounts, loop devices for `usb`):
#   docker build -t neuraldrive-builder .
#   docker run --privileged --rm -v "$PWD/out:/src/out" -v neuraldrive-cache:/root/.cache/neuraldrive \
#       neuraldrive-builder iso --profile nvidia
#   docker run --privileged --rm -v "$PWD/out:/src/out" neuraldrive-builder test --iso out/ci/...iso
# With podman, mount the cache volume with `:dev` (podman mounts named volumes nodev, and live-build's
# chroot with its device nodes lives there): -v neuraldrive-cache:/root/.cache/neuraldrive:dev
# The image is set up by the same script as a bare host (scripts/setup-host), so the two cannot drift.
# BASE names the Debian trixie image to start from; where no registry is reachable, scripts/docker-proof
# makes one with debootstrap and imports it (--build-arg BASE=localhost/neuraldrive-base:trixie).
ARG BASE=debian:trixie
FROM ${BASE}

ENV DEBIAN_FRONTEND=noninteractive
WORKDIR /src
COPY scripts/setup-host scripts/setup-host
COPY requirements.txt .
RUN bash scripts/setup-host && apt-get clean && rm -rf /var/lib/apt/lists/* /root/.cache/pip
COPY . .
ENTRYPOINT ["python3", "build.py"]
CMD ["--help"]
