#!/usr/bin/env bash
# A Lambda-like python3.13 base image from Debian packages, for `sam local invoke --invoke-image`
# where no image registry is reachable. Writes a root file system tarball named after a hash of this
# script (so any change here makes a new image) into the cache directory and prints its path.
# Cached: a second run with the same script prints the same path at once.
#
#   tools/lambda_image.sh <cache dir>
#
# Contents: Debian trixie (Python 3.13, the functions' runtime) minbase with ca-certificates and
# socat, the AWS Lambda runtime interface client (awslambdaric, from PyPI) in /var/runtime, and a
# /var/runtime/bootstrap that starts it. The runtime interface emulator is not here: SAM CLI adds
# its own (samcli/local/rapid) when it builds its image on top of this one.
set -euo pipefail

SUITE=trixie
ARCH=amd64
AWSLAMBDARIC=awslambdaric==4.2.2
cache=${1:?usage: tools/lambda_image.sh <cache dir>}
here=$(cd "$(dirname "$0")" && pwd)
hash=$(sha256sum "$here/lambda_image.sh" | cut -c1-12)
tarball="$cache/lambda-python3.13-$ARCH-$hash.tar"
if [[ -s $tarball ]]; then
    echo "$tarball"
    exit 0
fi
mkdir -p "$cache"

# The Debian mirror apt is configured with (deb822 .sources first, then sources.list).
mirror=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | grep -v -- '-security' | head -n1 || true)
if [[ -z $mirror ]]; then
    mirror=$(awk '$1 == "deb" && $2 !~ /^\[/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
[[ -n $mirror ]] || { echo "lambda_image: no Debian mirror configured in /etc/apt/sources.list*" >&2; exit 1; }

# pip for Python 3.13 (the runtime's version), so the client's compiled part matches it.
py313=
for candidate in "${HOME:-/root}"/.pyenv/versions/3.13*/bin/python3.13 "$(command -v python3.13 || true)"; do
    if [[ -x $candidate ]] && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 13)' 2>/dev/null; then
        py313=$candidate
        break
    fi
done
[[ -n $py313 ]] || { echo "lambda_image: python3.13 not found (~/.pyenv or PATH)" >&2; exit 1; }

work=$(mktemp -d "$cache/rootfs.XXXXXX")
trap 'rm -rf "$work"' EXIT
root="$work/root"
echo "lambda_image: debootstrap $SUITE ($ARCH) from $mirror" >&2
debootstrap --variant=minbase --arch="$ARCH" --include=python3,ca-certificates,socat \
    "$SUITE" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
"$py313" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-compile --only-binary=:all: \
    --target "$root/var/runtime" "$AWSLAMBDARIC"
mkdir -p "$root/var/task" "$root/opt"

cat >"$root/var/runtime/bootstrap" <<'BOOTSTRAP'
#!/bin/bash
# Starts the Lambda runtime interface client for $_HANDLER (what the managed python3.13 runtime
# does). When the code directory holds .aws.sock (rolekeeper's sam-local runner puts its embedded
# AWS there), AWS calls go through it: a relay on the container's own loopback, and
# AWS_ENDPOINT_URL pointing at the relay.
set -e
export PYTHONPATH="/var/runtime:${LAMBDA_TASK_ROOT:-/var/task}${PYTHONPATH:+:$PYTHONPATH}"
if [ -S "${LAMBDA_TASK_ROOT:-/var/task}/.aws.sock" ]; then
    socat TCP-LISTEN:4566,bind=127.0.0.1,reuseaddr,fork "UNIX-CONNECT:${LAMBDA_TASK_ROOT:-/var/task}/.aws.sock" &
    export AWS_ENDPOINT_URL=http://127.0.0.1:4566
    for _ in $(seq 50); do
        (exec 3<>/dev/tcp/127.0.0.1/4566) 2>/dev/null && break
        sleep 0.1
    done
fi
exec python3.13 -m awslambdaric "$_HANDLER"
BOOTSTRAP
chmod 0755 "$root/var/runtime/bootstrap"
rm -rf "$root/var/cache/apt/archives"/*.deb "$root/var/lib/apt/lists"/* "$root/usr/share/doc" "$root/usr/share/man"

tar -C "$root" --numeric-owner -cf "$work/rootfs.tar" .
mv "$work/rootfs.tar" "$tarball"
echo "$tarball"
