# Sourced by scripts/demo and scripts/bench: a private dockerd in $work/d (no bridge, no
# iptables, no forwarding, its own data/exec roots and socket) with a busybox base image.
# Needs root. Sets DAEMON_SOCK; stop_dockerd stops it and releases its mounts.

start_dockerd() {
  [ "$(id -u)" = 0 ] || { echo "this needs root: it starts a private dockerd" >&2; exit 1; }
  local d="$work/d"
  mkdir -p "$d"
  DAEMON_SOCK="$d/docker.sock"
  /usr/sbin/dockerd --data-root "$d/data" --exec-root "$d/exec" --pidfile "$d/dockerd.pid" \
    --host "unix://$DAEMON_SOCK" --bridge=none --iptables=false --ip6tables=false \
    --ip-forward=false --ip-masq=false >"$d/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 300); do
    DOCKER_HOST="unix://$DAEMON_SOCK" /usr/bin/docker version >/dev/null 2>&1 && break
    sleep 0.1
  done
  DOCKER_HOST="unix://$DAEMON_SOCK" /usr/bin/docker version >/dev/null || {
    tail "$d/dockerd.log" >&2; exit 1; }
  mkdir -p "$d/rootfs/bin"
  cp /bin/busybox "$d/rootfs/bin/"
  for a in sh sha256sum cat find sort xargs wc echo sleep head; do ln -sf busybox "$d/rootfs/bin/$a"; done
  tar -C "$d/rootfs" -cf "$d/rootfs.tar" .
  DOCKER_HOST="unix://$DAEMON_SOCK" /usr/bin/docker import "$d/rootfs.tar" irsa-demo-base >/dev/null
}

stop_dockerd() {
  [ -n "${DOCKERD_PID:-}" ] || return 0
  kill "$DOCKERD_PID" 2>/dev/null || true
  for _ in $(seq 200); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$DOCKERD_PID" 2>/dev/null || true
  grep -o " $work/[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
}
