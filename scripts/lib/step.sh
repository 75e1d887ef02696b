# Sourced by the install scripts: `step WHAT CMD...` says what it is about to do, runs CMD, and
# when CMD fails names the step and its exit code before exiting with it, so a failed install
# never ends in silence. The caller sets $script to its own name.

step() {
  local what=$1 rc=0
  shift
  echo "$script: $what" >&2
  "$@" || rc=$?
  if [ "$rc" != 0 ]; then
    echo "$script: failed ($rc): $what" >&2
    exit "$rc"
  fi
}
