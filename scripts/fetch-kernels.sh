#!/usr/bin/env bash
# Downloads and extracts the Debian cloud kernels that `cargo xtask vm-test` boots in qemu:
# Debian 12's 6.1 (linux-image-cloud-amd64) and the newest 6.12 in bookworm (security/updates).
# The packages are only unpacked with `dpkg -x` into a cache directory; they are never installed
# as the host's kernel.
#
# Layout (MPTCP_TRACE_KERNELS overrides the directory):
#   /var/cache/mptcp-trace/kernels/<uname -r>/boot/vmlinuz-<uname -r>
#   /var/cache/mptcp-trace/kernels/<uname -r>/lib/modules/<uname -r>/...
#   /var/cache/mptcp-trace/kernels/versions     one line per series: "<series> <uname -r> <deb version>"
#
# Idempotent: when every series is already extracted it only checks and exits (no apt calls).
# --refresh looks for newer kernels (apt-get update) even when the cache is complete.
set -euo pipefail

CACHE=${MPTCP_TRACE_KERNELS:-/var/cache/mptcp-trace/kernels}
SERIES=(6.1 6.12)
refresh=0
[ "${1:-}" = "--refresh" ] && refresh=1

log() { printf '\033[1mfetch-kernels:\033[0m %s\n' "$*"; }

extracted() { # <uname -r>
  [ -f "$CACHE/$1/boot/vmlinuz-$1" ] && [ -f "$CACHE/$1/lib/modules/$1/modules.dep" ]
}

# Fast path: every series listed in the versions file and extracted.
if [ "$refresh" -eq 0 ] && [ -f "$CACHE/versions" ]; then
  complete=1
  for s in "${SERIES[@]}"; do
    kver=$(awk -v s="$s" '$1 == s { print $2 }' "$CACHE/versions")
    if [ -z "$kver" ] || ! extracted "$kver"; then complete=0; fi
  done
  if [ "$complete" -eq 1 ]; then
    log "kernels present in $CACHE: $(awk '{ printf "%s ", $2 }' "$CACHE/versions")"
    exit 0
  fi
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "fetch-kernels: run as root (apt-get and $CACHE need it)" >&2
  exit 2
fi

# The package (name) that provides each series, from the local apt lists.
resolve() { # <series>
  case "$1" in
    # The cloud meta-package of Debian 12 depends on the current 6.1 ABI.
    6.1) apt-cache depends linux-image-cloud-amd64 2>/dev/null |
      sed -n 's/^ *Depends: \(linux-image-6\.1\.0-[0-9]*-cloud-amd64\)$/\1/p' | head -n1 ;;
    # 6.12 has no meta-package in bookworm: take the highest ABI that has a candidate.
    *) apt-cache pkgnames "linux-image-$1." 2>/dev/null |
      grep -E "^linux-image-$(printf '%s' "$1" | sed 's/\./\\./g')\.[0-9]+\+deb12-cloud-amd64$" |
      sort -V | tail -n1 ;;
  esac
}

candidate() { # <package>
  apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: //p' | grep -v '(none)' || true
}

updated=0
apt_update() {
  if [ "$updated" -eq 0 ]; then
    log "apt-get update"
    apt-get update -qq
    updated=1
  fi
}
[ "$refresh" -eq 1 ] && apt_update

mkdir -p "$CACHE"
tmp=$(mktemp -d)
chmod 755 "$tmp" # apt-get download runs as _apt
trap 'rm -rf "$tmp"' EXIT
: >"$tmp/versions"

for s in "${SERIES[@]}"; do
  pkg=$(resolve "$s")
  if [ -z "$pkg" ] || [ -z "$(candidate "$pkg")" ]; then
    apt_update
    pkg=$(resolve "$s")
  fi
  ver=$(candidate "$pkg")
  if [ -z "$pkg" ] || [ -z "$ver" ]; then
    echo "fetch-kernels: no linux-image-$s.*-cloud-amd64 package in the apt sources" >&2
    exit 1
  fi
  kver=${pkg#linux-image-}
  if extracted "$kver"; then
    log "$s: $kver ($ver) already extracted"
  else
    log "$s: downloading $pkg ($ver)"
    (cd "$tmp" && apt-get download -qq "$pkg=$ver")
    deb=$(ls "$tmp"/linux-image-*.deb)
    rm -rf "$CACHE/$kver.partial"
    dpkg -x "$deb" "$CACHE/$kver.partial"
    rm -f "$deb"
    # Only boot/ and lib/modules/ are needed; drop the rest of the package (docs).
    rm -rf "$CACHE/$kver.partial/usr"
    if [ ! -f "$CACHE/$kver.partial/boot/vmlinuz-$kver" ]; then
      echo "fetch-kernels: $pkg has no boot/vmlinuz-$kver" >&2
      exit 1
    fi
    # The package ships modules.order/builtin; modules.dep is made by depmod at install time.
    if [ ! -f "$CACHE/$kver.partial/lib/modules/$kver/modules.dep" ]; then
      depmod -b "$CACHE/$kver.partial" "$kver"
    fi
    rm -rf "$CACHE/$kver"
    mv "$CACHE/$kver.partial" "$CACHE/$kver"
    log "$s: extracted to $CACHE/$kver"
  fi
  echo "$s $kver $ver" >>"$tmp/versions"
done

mv "$tmp/versions" "$CACHE/versions"
chmod 644 "$CACHE/versions"
log "recorded $CACHE/versions"
