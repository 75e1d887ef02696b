#!/bin/sh
# `docker build` on a laptop through irsa-secrets on the mock identity: the Dockerfile that gets
# the pod's IRSA identity in CI gets a realistic fake one here (a token with the same shape and
# claims, a fake role ARN), so its secret mounts work unchanged. Nothing reaches AWS.
#
#   examples/laptop/build.sh -f examples/sccache/Dockerfile .
#
# Arguments go to `docker build`. The helper stands in front of $DOCKER_HOST (default
# unix:///var/run/docker.sock) for this one build and stops afterwards.
# IRSA_SECRETS and DOCKER name the binaries (default: from PATH).
set -eu
irsa=${IRSA_SECRETS:-irsa-secrets}
docker=${DOCKER:-docker}
upstream=${DOCKER_HOST:-unix:///var/run/docker.sock}
dir=$(mktemp -d)
helper=
cleanup() {
  [ -z "$helper" ] || { kill "$helper" 2>/dev/null; wait "$helper" 2>/dev/null || true; }
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM

"$irsa" proxy --mock --listen "unix://$dir/helper.sock" --upstream "$upstream" \
  2>"$dir/helper.log" &
helper=$!
tries=0
until "$irsa" health --socket "unix://$dir/helper.sock" >/dev/null 2>&1; do
  tries=$((tries + 1))
  if [ "$tries" -ge 100 ] || ! kill -0 "$helper" 2>/dev/null; then
    echo "irsa-secrets did not start:" >&2
    cat "$dir/helper.log" >&2
    exit 1
  fi
  sleep 0.1
done

DOCKER_HOST="unix://$dir/helper.sock" DOCKER_BUILDKIT=1 "$docker" build "$@"
