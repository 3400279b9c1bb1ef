# Sourced by schemathesis.sh and kubernetes-check.sh: a private Python venv for one tool.
#
#   flashgate_venv DIR REQUIREMENT BIN   make DIR a venv holding REQUIREMENT (pip syntax) unless
#                                        DIR/bin/BIN is already there; installs python3-venv with
#                                        apt-get when venv is missing and this is root

flashgate_venv() {
  local dir=$1 requirement=$2 bin=$3
  [ -x "$dir/bin/$bin" ] && return 0
  python3 -m venv "$dir" 2>/dev/null || {
    [ "$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$dir"
  }
  "$dir/bin/pip" install --quiet --disable-pip-version-check "$requirement"
}
