#!/usr/bin/env bash
# make sam-local: every file in events/ through `sam local invoke`, in a Lambda-like container,
# against the embedded AWS. Installs what it needs (Debian packages, the base image, `sam build`),
# then runs `python -m tools.sam_local run` in a network namespace of its own (loopback and Docker's
# bridge only; no route anywhere else). Where containers cannot run here (not root, no kernel support,
# no apt) it says why and exits 0, unless SAM_LOCAL_REQUIRED=1.
#
#   tools/sam_local.sh <sam> <python of the project venv> [<dir with python3.13>]
set -euo pipefail
cd "$(dirname "$0")/.."
sam=${1:?usage: tools/sam_local.sh <sam> <python> [<python3.13 dir>]}
python=${2:?usage: tools/sam_local.sh <sam> <python> [<python3.13 dir>]}
py313_dir=${3:-}
work=.sam-local
cache=${ROLEKEEPER_SAM_LOCAL_CACHE:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/rolekeeper-sam-local}
start=$(date +%s)

skip() {
    echo "sam-local: SKIPPED: $*" >&2
    if [[ ${SAM_LOCAL_REQUIRED:-0} == 1 ]]; then exit 1; fi
    exit 0
}

# Can a container engine run here?
[[ $(uname -s) == Linux ]] || skip "needs Linux (this is $(uname -s)); see README, 'Try it in a container'"
[[ $(id -u) == 0 ]] || skip "needs root to start its own Docker daemon and network namespace (see README for running it against your own Docker)"
[[ $(uname -m) == x86_64 ]] || skip "the local image is x86_64; this machine is $(uname -m)"
unshare --net true 2>/dev/null || skip "cannot create a network namespace here (unshare --net failed)"
[[ -d /sys/fs/cgroup ]] && [[ -n $(ls -A /sys/fs/cgroup 2>/dev/null) ]] || skip "no cgroup file system mounted"
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v socat >/dev/null || missing+=(socat)
command -v ip >/dev/null || missing+=(iproute2)
if ((${#missing[@]})); then
    command -v apt-get >/dev/null || skip "needs ${missing[*]} and there is no apt-get"
    echo "sam-local: apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get update -qq >/dev/null
    timeout 900 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# dockerd's own containerd and runc come with docker.io; iptables too.
for tool in dockerd docker containerd runc iptables; do
    command -v "$tool" >/dev/null || skip "$tool not found after installing docker.io"
done

# The base image (mostly downloads) and sam build at the same time.
mkdir -p "$work"
t=$(date +%s)
timeout 900 bash tools/lambda_image.sh "$cache" >"$work/rootfs.path" 2>"$work/image.log" &
image_pid=$!
"$python" -m tools.sam_local template "$work/template.yaml"
PATH="${py313_dir:+$py313_dir:}$PATH" timeout 900 "$sam" build --template "$work/template.yaml" --base-dir . \
    --build-dir "$work/build" --cache-dir "$work/build-cache" --cached >"$work/build.log" 2>&1 \
    || { tail -n 40 "$work/build.log"; kill "$image_pid" 2>/dev/null; exit 1; }
echo "sam-local: sam build (x86_64) in $(( $(date +%s) - t )) s"
wait "$image_pid" || { cat "$work/image.log"; exit 1; }
rootfs=$(cat "$work/rootfs.path")
echo "sam-local: base image root file system $rootfs (ready $(( $(date +%s) - t )) s after the start of both)"

# The network namespace ends with its last process: nothing started in it outlives this run.
# unshare holds SIGTERM and SIGINT while it waits, so they are passed on to the runner (its only
# child), which stops what it started and exits.
status=0
unshare --net --fork --kill-child=SIGTERM -- "$python" -m tools.sam_local run --sam "$sam" --rootfs "$rootfs" \
    --build-dir "$work/build" --cache "$cache" --work "$work" &
ns_pid=$!
trap 'pkill -TERM -P "$ns_pid" 2>/dev/null || true' TERM INT HUP
wait "$ns_pid" || status=$?
while kill -0 "$ns_pid" 2>/dev/null; do  # a signal ended the first wait: the runner is cleaning up
    status=0
    wait "$ns_pid" || status=$?
done
trap - TERM INT HUP
echo "sam-local: done in $(( $(date +%s) - start )) s"
exit $status
