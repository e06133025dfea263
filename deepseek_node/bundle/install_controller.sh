#!/bin/bash
# Installs the deepseek-node controller on an air-gapped Debian machine from the bundle alone, as root:
#
#     BUNDLE/controller/install.sh
#
# First it checks, changing nothing: that the bundle's controller part is for this machine's release and
# architecture, and (with the stdlib manifest checker) that every file it installs from is intact. Then it
# installs the Debian packages from the bundle's own signed repository through a temporary apt source (the
# system's sources are neither used nor changed), a virtualenv with the locked wheelhouse (no index, every
# wheel's sha256 required) and the Ansible tree, and links `provision` into /usr/local/bin. It never reaches
# the network. A second run only checks.
#
# Each bundle gets a virtualenv of its own, PREFIX/<id>; PREFIX/current points at the one in use and
# PREFIX/previous at the one before (older ones are removed), so an upgrade switches over in one rename.
#
# Environment: DEEPSEEK_NODE_PREFIX (default /opt/deepseek-node-controller, apart from the inference daemon's
# /opt/deepseek-node should one machine be both), DEEPSEEK_NODE_BINDIR (default /usr/local/bin).
set -euo pipefail
umask 022
# Ansible refuses any locale encoding but UTF-8; C.UTF-8 exists on every Debian.
export LC_ALL=C.UTF-8

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
bundle=$(dirname -- "$here")
prefix=${DEEPSEEK_NODE_PREFIX:-/opt/deepseek-node-controller}
bindir=${DEEPSEEK_NODE_BINDIR:-/usr/local/bin}
# Debian's own interpreter: the one whose python3-venv this installs (not a pyenv shim first on PATH).
python=/usr/bin/python3
changed=()

say() { printf 'install.sh: %s\n' "$*"; }
die() {
  printf 'install.sh: error: %s\n' "$*" >&2
  exit 1
}

# --- what the bundle says it is for (KEY=VALUE lines, read, never sourced) ---
env_file=$here/controller.env
[ -f "$env_file" ] || die "$env_file is missing: this bundle has no controller part or arrived incomplete;" \
  "copy it again, or rebuild it with provision bundle build (without --without-controller)"
declare -A cfg=()
while IFS='=' read -r key value; do
  case $key in '' | '#'*) continue ;; esac
  cfg[$key]=$value
done <"$env_file"
for key in VERSION CONTROLLER_ID DISTRIBUTION RELEASE SUITE ARCH APT_PACKAGES KEY; do
  [ -n "${cfg[$key]:-}" ] || die "$env_file has no $key: the bundle is damaged; copy it again or rebuild it"
done
[[ ${cfg[CONTROLLER_ID]} =~ ^[0-9a-f]{16}$ ]] ||
  die "$env_file: CONTROLLER_ID is malformed: the bundle is damaged; copy it again or rebuild it"

# --- this machine: the release and architecture the packages and wheels were resolved for ---
os_info() {
  # shellcheck source=/dev/null
  (. /etc/os-release 2>/dev/null &&
    printf '%s\n%s\n%s\n' "${ID:-?}" "${VERSION_ID:-?}" "${PRETTY_NAME:-?}") ||
    printf '?\n?\nan unknown system (no /etc/os-release)\n'
}
mapfile -t os < <(os_info)
arch=$(dpkg --print-architecture 2>/dev/null || uname -m)
want="${cfg[DISTRIBUTION]^} ${cfg[RELEASE]} (${cfg[SUITE]}, ${cfg[ARCH]})"
if [ "${os[0]}" != "${cfg[DISTRIBUTION]}" ] || [ "${os[1]}" != "${cfg[RELEASE]}" ] ||
  [ "$arch" != "${cfg[ARCH]}" ]; then
  die "this bundle's controller part is for $want and this machine runs ${os[2]} ($arch): its packages and" \
    "wheels would not install here. Install it on a $want machine, or build the bundle with" \
    "provision bundle build --controller-suite SUITE for this machine's release"
fi

# --- the bundle: every file install.sh uses, checked against manifest.json ---
verified=
verify() { # $1: what has been installed so far
  say "checking the bundle's controller part and keys against manifest.json"
  if ! "$python" "$here/bundle_manifest.py" verify "$bundle" --subset=controller/ --subset=keys/; then
    die "the bundle failed verification (above); $1. Copy it again from its source (or rebuild it), then" \
      "run $0 again"
  fi
  verified=1
}
# On a bare Debian python3 itself comes from the bundle: until then apt's signature check guards the packages.
[ -x "$python" ] && verify "nothing was installed"

[ "$(id -u)" -eq 0 ] || die "run this as root: it installs Debian packages, $prefix and" \
  "$bindir/provision (sudo $0)"

# --- Debian packages, from the bundle's signed repository only ---
read -r -a packages <<<"${cfg[APT_PACKAGES]}"
missing=()
for p in "${packages[@]}"; do
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" = installed ] || missing+=("$p")
done
if ((${#missing[@]})); then
  case $here in
    *[[:space:]]*) die "the bundle's path ($bundle) has blanks, which an apt source cannot name: move the" \
      "bundle to a path without blanks" ;;
  esac
  work=$(mktemp -d)
  trap 'rm -rf -- "$work"' EXIT
  chmod 0755 "$work"
  install -m 0644 -- "$bundle/${cfg[KEY]}" "$work/bundle-key.asc"
  mkdir -p "$work/lists/partial" "$work/sources.list.d"
  printf 'deb [signed-by=%s] file:%s ./\n' "$work/bundle-key.asc" "$here/apt" >"$work/sources.list"
  # Only this source and private lists: the system's sources (unreachable mirrors here) are not read, and
  # its package lists and caches are left as they were.
  apt_opts=(
    -o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=$work/sources.list.d"
    -o "Dir::State::Lists=$work/lists" -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache="
    -o "Acquire::Languages=none" -o "APT::Get::List-Cleanup=false"
    # The bundle may lie in a directory apt's unprivileged _apt user cannot enter (root's home).
    -o "APT::Sandbox::User=root"
  )
  say "installing ${missing[*]} from the bundle's signed repository"
  apt_log=$work/apt.log
  apt-get "${apt_opts[@]}" -q update >"$apt_log" 2>&1 || {
    tail -n 20 "$apt_log" >&2
    die "apt could not read the bundle's repository (above): copy the bundle again or rebuild it"
  }
  DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" -q -y --no-install-recommends \
    install "${missing[@]}" >"$apt_log" 2>&1 || {
    tail -n 30 "$apt_log" >&2
    die "apt could not install ${missing[*]} from the bundle (above): fix what apt names, then run $0 again"
  }
  changed+=("Debian packages")
else
  say "Debian packages: present (${packages[*]})"
fi
[ -n "$verified" ] || verify "only Debian's own packages were installed (apt checked their signatures)"

# --- the virtualenv: the locked wheelhouse and the Ansible tree ---
id=${cfg[CONTROLLER_ID]}
dest=$prefix/$id
tree=$dest/share/deepseek-node
if [ -f "$dest/.installed" ] &&
  "$dest/bin/python" -m pip check --disable-pip-version-check >/dev/null 2>&1; then
  say "virtualenv $dest: present"
else
  rm -rf -- "$dest" # an interrupted install, or one whose packages no longer fit together
  mkdir -p -- "$prefix"
  say "creating the virtualenv $dest (deepseek-node ${cfg[VERSION]}: no index, every wheel's sha256 checked)"
  "$python" -m venv "$dest"
  # --no-compile: byte-compiling all of Ansible's collections takes minutes; Python compiles what it imports.
  "$dest/bin/python" -m pip install --isolated --disable-pip-version-check --no-input -q --no-compile \
    --no-index --require-hashes --no-deps --find-links "$here/wheels" -r "$here/wheels/requirements.lock" ||
    die "pip could not install the bundle's wheelhouse (above): copy the bundle again or rebuild it"
  mkdir -p -- "$tree"
  cp -R -- "$here/ansible/." "$tree/"
  printf '%s\n' "$id" >"$dest/.installed"
  changed+=("virtualenv $dest")
fi
if ! diff -rq -x __pycache__ -- "$here/ansible" "$tree" >/dev/null; then
  rm -rf -- "$tree"
  mkdir -p -- "$tree"
  cp -R -- "$here/ansible/." "$tree/"
  changed+=("Ansible tree $tree (restored)")
fi

# --- switch over: PREFIX/current, PREFIX/previous, older installs removed ---
current=$(readlink -- "$prefix/current" 2>/dev/null || true)
if [ "$current" != "$id" ]; then
  ln -sfn -- "$id" "$prefix/.current.new"
  mv -Tf -- "$prefix/.current.new" "$prefix/current"
  if [ -n "$current" ]; then
    ln -sfn -- "$current" "$prefix/.previous.new"
    mv -Tf -- "$prefix/.previous.new" "$prefix/previous"
  fi
  changed+=("$prefix/current -> $id")
fi
previous=$(readlink -- "$prefix/previous" 2>/dev/null || true)
for old in "$prefix"/*/; do
  name=$(basename -- "$old")
  if [[ $name =~ ^[0-9a-f]{16}$ ]] && [ "$name" != "$id" ] && [ "$name" != "$previous" ]; then
    rm -rf -- "${old%/}"
    changed+=("removed $prefix/$name")
  fi
done

# --- provision on PATH ---
link=$bindir/provision
target=$prefix/current/bin/provision
if [ "$(readlink -- "$link" 2>/dev/null || true)" != "$target" ]; then
  if [ -e "$link" ] || [ -L "$link" ]; then
    case $(readlink -- "$link" 2>/dev/null || true) in
      "$prefix"/*) ;;
      *) die "$link exists and is not deepseek-node's link: move it away, or set DEEPSEEK_NODE_BINDIR to" \
        "another directory on PATH, then run $0 again" ;;
    esac
  fi
  mkdir -p -- "$bindir"
  ln -sfn -- "$target" "$link"
  changed+=("$link")
fi

# --- the check: provision starts, Ansible loads the tree with its collections ---
version=$("$link" --version) || die "provision does not start (above): remove $dest and run $0 again"
syntax=$(cd -- "$tree" && ANSIBLE_CONFIG=$tree/ansible.cfg "$dest/bin/ansible-playbook" --syntax-check \
  -i localhost, site.yml 2>&1) || {
  printf '%s\n' "$syntax" >&2
  die "Ansible cannot load site.yml from $tree (above): remove $dest and run $0 again"
}
say "$version ready: $link; Ansible tree $prefix/current/share/deepseek-node"
summary=nothing
((${#changed[@]} == 0)) || summary=$(printf '%s, ' "${changed[@]}")
say "changed: ${summary%, }"
say "next: provision bundle verify $bundle, then provision run -i INVENTORY (deepseek_bundle_dir: $bundle)"
