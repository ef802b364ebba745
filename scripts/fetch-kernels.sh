#!/usr/bin/env bash
# Downloads and extracts the Debian cloud kernels that `cargo xtask vm-test` boots in qemu:
#   5.10  bullseye's newest linux-image-5.10.*-cloud-amd64 (Debian 11)
#   6.1   Debian 12's linux-image-cloud-amd64
#   6.12  the newest 6.12 in bookworm (security/updates)
#   sid   the kernel sid's linux-image-cloud-amd64 depends on today (resolved at every fetch, so
#         the matrix follows sid forward; SID_FALLBACK below when sid cannot be resolved)
# 6.1 and 6.12 come from the machine's own apt sources (bookworm). bullseye and sid come from a
# private source list and list directory under $CACHE/apt: the machine's apt configuration is
# never changed. The packages are only unpacked with `dpkg -x` into the cache; they are never
# installed as the host's kernel.
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
SERIES=(5.10 6.1 6.12 sid)
# Used when sid's meta-package cannot be resolved (mirror without sid, lists unavailable): the
# sid kernel this project was last checked against, if the mirror still has it.
SID_FALLBACK=linux-image-7.2.13+deb14-cloud-amd64
MIRROR=${MPTCP_TRACE_MIRROR:-http://deb.debian.org}
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

# The private apt configuration for the suites the machine does not use (bullseye, sid).
PRIV="$CACHE/apt"
priv_opts=(-o "Dir::Etc::SourceList=$PRIV/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::State::Lists=$PRIV/lists" -o "Dir::Cache=$PRIV/cache" -o "Dir::State::Status=/dev/null"
  -o "APT::Get::List-Cleanup=0")
priv_updated=0
priv_update() {
  if [ "$priv_updated" -eq 0 ]; then
    mkdir -p "$PRIV/lists/partial" "$PRIV/cache/archives/partial"
    key=/usr/share/keyrings/debian-archive-keyring.gpg
    cat >"$PRIV/sources.list" <<SRC
deb [signed-by=$key] $MIRROR/debian bullseye main
deb [signed-by=$key] $MIRROR/debian-security bullseye-security main
deb [signed-by=$key] $MIRROR/debian sid main
SRC
    log "apt-get update (private lists in $PRIV: bullseye, sid)"
    apt-get "${priv_opts[@]}" update -qq || log "apt-get update of bullseye/sid failed"
    priv_updated=1
  fi
}
private() { # <series>: whether the series comes from the private lists
  [ "$1" = 5.10 ] || [ "$1" = sid ]
}
acache() { # <series> apt-cache args...
  local s=$1
  shift
  if private "$s"; then apt-cache "${priv_opts[@]}" "$@"; else apt-cache "$@"; fi
}

# The package (name) that provides each series, from the apt lists.
resolve() { # <series>
  case "$1" in
    5.10) acache 5.10 pkgnames linux-image-5.10. 2>/dev/null |
      grep -E '^linux-image-5\.10\.0-[0-9]+-cloud-amd64$' | sort -V | tail -n1 ;;
    # sid's meta-package depends on its one current kernel (the highest candidate of all
    # suites in the private lists is sid's).
    sid) acache sid depends linux-image-cloud-amd64 2>/dev/null |
      sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-cloud-amd64\)$/\1/p' | sort -V | tail -n1 ;;
    # The cloud meta-package of Debian 12 depends on the current 6.1 ABI.
    6.1) apt-cache depends linux-image-cloud-amd64 2>/dev/null |
      sed -n 's/^ *Depends: \(linux-image-6\.1\.0-[0-9]*-cloud-amd64\)$/\1/p' | head -n1 ;;
    # 6.12 has no meta-package in bookworm: take the highest ABI that has a candidate.
    *) apt-cache pkgnames "linux-image-$1." 2>/dev/null |
      grep -E "^linux-image-$(printf '%s' "$1" | sed 's/\./\\./g')\.[0-9]+\+deb12-cloud-amd64$" |
      sort -V | tail -n1 ;;
  esac
}

candidate() { # <series> <package>
  acache "$1" policy "$2" 2>/dev/null | sed -n 's/^ *Candidate: //p' | grep -v '(none)' || true
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
chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT
: >"$tmp/versions"

download() { # <series> <package=version>...: into $tmp
  if private "$1"; then
    shift
    (cd "$tmp" && apt-get "${priv_opts[@]}" -o APT::Sandbox::User=root download -qq "$@")
  else
    shift
    (cd "$tmp" && apt-get -o APT::Sandbox::User=root download -qq "$@")
  fi
}

for s in "${SERIES[@]}"; do
  if private "$s"; then
    # Private lists are refreshed at every full fetch: sid moves daily.
    priv_update
  fi
  pkg=$(resolve "$s")
  if [ -z "$pkg" ] || [ -z "$(candidate "$s" "$pkg")" ]; then
    if ! private "$s"; then
      apt_update
      pkg=$(resolve "$s")
    fi
  fi
  if [ "$s" = sid ] && { [ -z "$pkg" ] || [ -z "$(candidate sid "$pkg")" ]; }; then
    old=$(awk '$1 == "sid" { print $2 }' "$CACHE/versions" 2>/dev/null || true)
    if [ -n "$old" ] && extracted "$old"; then
      log "sid: cannot resolve sid's kernel; keeping the extracted $old"
      awk '$1 == "sid"' "$CACHE/versions" >>"$tmp/versions"
      continue
    fi
    log "sid: cannot resolve sid's kernel; trying the pinned $SID_FALLBACK"
    pkg=$SID_FALLBACK
  fi
  ver=$(candidate "$s" "$pkg")
  if [ -z "$pkg" ] || [ -z "$ver" ]; then
    echo "fetch-kernels: no package for kernel series $s in the apt sources" >&2
    exit 1
  fi
  kver=${pkg#linux-image-}
  if extracted "$kver"; then
    log "$s: $kver ($ver) already extracted"
  else
    log "$s: downloading $pkg ($ver)"
    download "$s" "$pkg=$ver"
    # Newer kernels (sid) split the image into a meta-package and linux-binary/modules/base
    # packages that hold vmlinuz and the modules under usr/lib/modules.
    parts=$(acache "$s" show "$pkg=$ver" 2>/dev/null | sed -n 's/^Depends: //p' | tr ',' '\n' |
      sed 's/^ *//; s/ .*//' | grep -E "^linux-(binary|modules|base)-" | grep -F -- "-$kver" || true)
    for p in $parts; do
      download "$s" "$p=$ver"
    done
    rm -rf "$CACHE/$kver.partial"
    for deb in "$tmp"/*.deb; do
      dpkg -x "$deb" "$CACHE/$kver.partial"
      rm -f "$deb"
    done
    if [ -d "$CACHE/$kver.partial/usr/lib/modules/$kver" ]; then
      mkdir -p "$CACHE/$kver.partial/boot" "$CACHE/$kver.partial/lib/modules"
      mv "$CACHE/$kver.partial/usr/lib/modules/$kver" "$CACHE/$kver.partial/lib/modules/$kver"
      if [ -f "$CACHE/$kver.partial/lib/modules/$kver/vmlinuz" ]; then
        mv "$CACHE/$kver.partial/lib/modules/$kver/vmlinuz" "$CACHE/$kver.partial/boot/vmlinuz-$kver"
      fi
      if [ -f "$CACHE/$kver.partial/lib/modules/$kver/config" ]; then
        mv "$CACHE/$kver.partial/lib/modules/$kver/config" "$CACHE/$kver.partial/boot/config-$kver"
      fi
    fi
    # Only boot/ and lib/modules/ are needed; drop the rest of the packages (docs).
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
