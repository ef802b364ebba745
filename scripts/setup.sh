#!/usr/bin/env bash
# Installs everything mptcp-trace needs to build and test on Debian 12: Debian packages, the eBPF
# toolchain (Debian's rustc-web + rust-web-src, bpf-linker), rustfmt/clippy, and the Debian
# kernels the VM tests boot. Idempotent: a second run only checks and takes seconds.
set -euo pipefail

log() { printf '\033[1msetup:\033[0m %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: run as root (sudo $0)" >&2
  exit 2
fi

PACKAGES=(
  # eBPF compiler: Debian's Rust with library sources for -Z build-std, LLVM for bpf-linker
  rustc-web cargo-web rust-web-src rust-web-clippy llvm-22-dev libpolly-22-dev libzstd-dev
  # the test bed and oracles: ip mptcp / ss, ncat, tcpdump, mptcpize, bpftrace for comparison
  iproute2 ncat tcpdump mptcpd mptcpize bpftrace bpftool kmod
  # a "middlebox" that changes one payload byte, for the mid-connection fallback test
  nftables
  # the VM tests: qemu (TCG), busybox initramfs
  qemu-system-x86 busybox-static cpio xz-utils zstd
  # driving the live view in tests; rendering `report`'s page headless in its test
  tmux chromium
  # the exporter's test: a real Prometheus scrapes it (promtool checks contrib/)
  prometheus curl
  gcc pkg-config
  # run's seccomp upgrade method (libseccomp builds the filter); libc6-dev's libc.a links the
  # tests' static Go-like client (gcc -static); util-linux for setpriv
  libseccomp-dev libc6-dev util-linux
  # `cargo xtask dist` (dpkg-shlibdeps computes Depends, strip) and its test (`man -w`, the
  # installed completions in bash, `systemd-analyze verify` on the units)
  dpkg-dev binutils man-db bash systemd
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  log "Debian packages present"
fi
# Debian's prometheus package starts its own server on :9090; the tests run theirs on a port
# of their own and need only the binaries.
if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled prometheus >/dev/null 2>&1; then
  log "stopping and disabling the prometheus service the package started (only its binary is used)"
  systemctl disable --now prometheus >/dev/null 2>&1 || true
fi

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v rustup >/dev/null 2>&1; then
  echo "setup: rustup (a stable Rust toolchain) is required for userspace; install it first" >&2
  exit 1
fi
for c in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$c" || { log "adding $c"; rustup component add "$c"; }
done

if ! bpf-linker --version 2>/dev/null | grep -q "0.13.0"; then
  log "building bpf-linker 0.13.0 against LLVM 22 (about a minute)"
  LLVM_PREFIX=/usr/lib/llvm-22 cargo install --locked bpf-linker@0.13.0 --no-default-features --features llvm-22 \
    || LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker@0.13.0 --no-default-features --features llvm-22
else
  log "bpf-linker 0.13.0 present"
fi

# Kernels for the VM tests (never installed as the host's kernel: only extracted).
here=$(cd "$(dirname "$0")/.." && pwd)
"$here/scripts/fetch-kernels.sh"

# The tool itself, so that `sudo mptcp-trace demo` works right after set-up. A release build:
# `cargo xtask vm-test` builds the same artifacts, so the suite does not pay for it twice.
log "building mptcp-trace (release) and installing it as /usr/local/bin/mptcp-trace"
(cd "$here" && cargo build --quiet --locked --release -p mptcp-user)
install -m 0755 "${CARGO_TARGET_DIR:-$here/target}/release/mptcp-trace" /usr/local/bin/mptcp-trace

log "done"
