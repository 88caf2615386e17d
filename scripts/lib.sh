# Shared by the scripts: root for apt, and installing missing Debian packages.

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root to run: $*" >&2; return 1; fi
}

# apt_install PACKAGE...: one apt run for the given packages (after apt-get update).
apt_install() {
  [ $# -gt 0 ] || return 0
  echo "installing $*" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
