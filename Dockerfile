# Build container for hosts that are not Debian 12/13. live-build needs a privileged container
# (debootstrap, chroot mounts, loop-free ISO assembly):
#   docker build -t neuraldrive-builder .
#   docker run --privileged --rm -v "$PWD/out:/src/out" -v neuraldrive-cache:/root/.cache/neuraldrive \
#       neuraldrive-builder iso --profile nvidia
#   docker run --privileged --rm -v "$PWD/out:/src/out" neuraldrive-builder test --iso out/ci/...iso
FROM debian:trixie

ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        live-build debootstrap squashfs-tools xorriso mtools dosfstools e2fsprogs zstd cpio \
        qemu-system-x86 qemu-utils ovmf openssh-client shellcheck systemd nftables curl ca-certificates \
        python3 python3-venv git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY requirements.txt .
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir -r requirements.txt
ENV PATH=/opt/venv/bin:$PATH
COPY . .
ENTRYPOINT ["python3", "build.py"]
CMD ["--help"]
