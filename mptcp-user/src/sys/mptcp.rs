//! Whether this kernel has MPTCP at all: every command needs it, and on a kernel built without
//! it (Debian 11's 5.10) each says so in the same words instead of failing further on.

use std::path::Path;

/// The one sentence every command prints on a kernel without MPTCP.
pub const MISSING: &str = "this kernel has no MPTCP: /proc/sys/net/mptcp is missing (it was \
built without CONFIG_MPTCP, as Debian 11's kernels are); MPTCP needs Linux ≥ 5.6 built with \
CONFIG_MPTCP=y";

/// The `net.mptcp` sysctls exist in every network namespace of a kernel with MPTCP (it cannot
/// be a module), and in none otherwise.
pub fn in_kernel() -> bool {
    Path::new("/proc/sys/net/mptcp").is_dir()
}
