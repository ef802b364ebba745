#!/bin/busybox sh
# /init of the qemu guests booted by `cargo xtask vm-test` (xtask/src/vm.rs builds the initramfs
# around it). Mounts what the tracer and the tests need, loads the kernel modules listed in
# /etc/vm/modules, runs every executable in /tests with libtest's --test-threads=1 plus the
# arguments in /etc/vm/test-args (each killed after /etc/vm/exe-timeout seconds), prints one
# result line for the runner and powers off.
#
# The result line is parsed by the runner; keep its format:
#   MPTCP-TRACE-VM-RESULT kernel=<uname -r> passed=<tests> failed=<tests>

/bin/busybox mkdir -p /proc /sys /dev /run /tmp /usr/bin /usr/sbin /sbin
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
# Applets for everything the initramfs does not ship itself (iproute2's ip, ss, tc stay).
for applet in $(/bin/busybox --list); do
  [ -e "/bin/$applet" ] || /bin/busybox ln -s busybox "/bin/$applet"
done
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root TERM=linux

mkdir -p /dev/pts
mount -t devpts devpts /dev/pts # tmux
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /var /root /run/netns
ln -sfn /run /var/run
mount -t bpf bpf /sys/fs/bpf
mkdir -p /sys/fs/cgroup
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null || true

ip link set lo up
sysctl -q -w net.mptcp.enabled=1

for m in $(cat /etc/vm/modules 2>/dev/null); do
  insmod "/lib/modules/$m" || echo "vm: insmod $m failed"
done

# MPTCP_TRACE_VM: tests that size themselves by count (scope.rs) use fewer under qemu.
export CI=true MPTCP_TRACE_BIN=/bin/mptcp-trace RUST_BACKTRACE=1 MPTCP_TRACE_VM=1
# $<NAME>_BIN for every binary the runner shipped (MPTCP_PEER_BIN, ...).
. /etc/vm/env
kernel=$(uname -r)
echo "vm: kernel $kernel, $(nproc) cpu(s), $(awk '/MemTotal/ { print $2 }' /proc/meminfo) kB"

passed=0
failed=0
args=$(cat /etc/vm/test-args 2>/dev/null)
limit=$(cat /etc/vm/exe-timeout 2>/dev/null || echo 600)
# A kernel without MPTCP runs only the executables listed here (xtask's WITHOUT_MPTCP).
only=$(cat /etc/vm/only 2>/dev/null || true)
[ -n "$only" ] && echo "vm: this kernel has no MPTCP: running only $(echo $only)"
for t in /tests/*; do
  [ -x "$t" ] || continue
  if [ -n "$only" ] && ! echo "$only" | grep -qx "$(basename "$t")"; then continue; fi
  echo "vm: ==> $(basename "$t")"
  start=$(date +%s)
  # Streamed to the console as it runs (--nocapture: a killed executable still shows why its
  # earlier tests failed), kept for the summary; a hung executable is killed so
  # that the others still run and the result line is still printed.
  # shellcheck disable=SC2086 # the arguments are split on purpose
  { timeout -s KILL "$limit" "$t" --test-threads=1 --nocapture $args 2>&1; echo $? >/tmp/rc; } | tee /tmp/out
  rc=$(cat /tmp/rc)
  if [ "$rc" -eq 137 ]; then echo "vm: $(basename "$t") killed after $limit s"; fi
  # libtest's summary: "test result: ok. 3 passed; 0 failed; 0 ignored; ..."
  p=$(sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\1/p' /tmp/out | tail -n1)
  f=$(sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\2/p' /tmp/out | tail -n1)
  p=${p:-0}
  f=${f:-0}
  # A crash, a panic outside a test or an unknown flag exits non-zero without a failed count.
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
  passed=$((passed + p))
  failed=$((failed + f))
  echo "vm: <== $(basename "$t"): exit $rc, $p passed, $f failed, $(($(date +%s) - start)) s"
done

echo "MPTCP-TRACE-VM-RESULT kernel=$kernel passed=$passed failed=$failed"
sync
poweroff -f
