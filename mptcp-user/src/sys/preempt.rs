//! The kernel's preemption model: whether a task can be preempted in kernel code, and so in
//! the middle of a tracing program. Where it can (full, lazy or RT preemption; Debian's 7.x
//! kernels allow nothing else), another task on the same CPU hits the tracepoint while the
//! program is still running, and the kernel skips that run: the tracer then loads its rescue
//! program (see `NESTING` in mptcp-ebpf).
//!
//! Read from what the running kernel says, in this order: debugfs's `sched/preempt` (the model
//! in force, on kernels with dynamic preemption), else the kernel's build configuration
//! (`/proc/config.gz`, `/boot/config-RELEASE`) with a `preempt=` boot parameter where the build
//! lets it choose.

use std::{fmt, fs, io::Read};

const DEBUGFS: &str = "/sys/kernel/debug/sched/preempt";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    None,
    Voluntary,
    Full,
    Lazy,
    Rt,
}

impl Model {
    /// Whether a task can be preempted in kernel code outside explicit scheduling points.
    pub fn preemptible(self) -> bool {
        matches!(self, Model::Full | Model::Lazy | Model::Rt)
    }

    fn from_name(name: &str) -> Option<Model> {
        Some(match name {
            "none" => Model::None,
            "voluntary" => Model::Voluntary,
            "full" => Model::Full,
            "lazy" => Model::Lazy,
            "rt" => Model::Rt,
            _ => return None,
        })
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Model::None => "none",
            Model::Voluntary => "voluntary",
            Model::Full => "full",
            Model::Lazy => "lazy",
            Model::Rt => "rt",
        })
    }
}

/// The model and where it was read; `None` when the kernel says nothing readable.
pub fn model() -> Option<(Model, &'static str)> {
    if let Some(m) = fs::read_to_string(DEBUGFS)
        .ok()
        .as_deref()
        .and_then(from_debugfs)
    {
        return Some((m, DEBUGFS));
    }
    let (config, source) = kernel_config()?;
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    from_config(&config, &cmdline).map(|m| (m, source))
}

/// `none (voluntary) full lazy`: the model in force is in parentheses.
fn from_debugfs(text: &str) -> Option<Model> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix('(')?.strip_suffix(')'))
        .and_then(Model::from_name)
}

/// The build's model; with dynamic preemption, `preempt=` on the command line chooses.
fn from_config(config: &str, cmdline: &str) -> Option<Model> {
    let set = |name: &str| config.lines().any(|l| l == format!("CONFIG_{name}=y"));
    if set("PREEMPT_RT") {
        return Some(Model::Rt);
    }
    if set("PREEMPT_DYNAMIC") {
        let chosen = cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix("preempt="))
            .and_then(Model::from_name);
        if chosen.is_some() {
            return chosen;
        }
    }
    [
        ("PREEMPT_LAZY", Model::Lazy),
        ("PREEMPT", Model::Full),
        ("PREEMPT_VOLUNTARY", Model::Voluntary),
        ("PREEMPT_NONE", Model::None),
    ]
    .into_iter()
    .find(|(name, _)| set(name))
    .map(|(_, m)| m)
}

fn kernel_config() -> Option<(String, &'static str)> {
    if let Ok(f) = fs::File::open("/proc/config.gz") {
        let mut text = String::new();
        if flate2::read::GzDecoder::new(f)
            .read_to_string(&mut text)
            .is_ok()
        {
            return Some((text, "/proc/config.gz"));
        }
    }
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    fs::read_to_string(format!("/boot/config-{}", release.trim()))
        .ok()
        .map(|t| (t, "/boot/config-RELEASE"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debugfs_names_the_model_in_force() {
        assert_eq!(
            from_debugfs("none (voluntary) full lazy\n"),
            Some(Model::Voluntary)
        );
        assert_eq!(
            from_debugfs("none voluntary full (lazy)\n"),
            Some(Model::Lazy)
        );
        assert_eq!(from_debugfs("none voluntary full lazy\n"), None);
    }

    #[test]
    fn the_build_decides_unless_dynamic_preemption_lets_the_command_line_choose() {
        // Debian 12's 6.1: dynamic, voluntary by default.
        let debian12 =
            "CONFIG_PREEMPT_BUILD=y\nCONFIG_PREEMPT_VOLUNTARY=y\nCONFIG_PREEMPT_DYNAMIC=y\n";
        assert_eq!(from_config(debian12, "quiet"), Some(Model::Voluntary));
        assert_eq!(
            from_config(debian12, "quiet preempt=full"),
            Some(Model::Full)
        );
        // Debian's 7.2: lazy only.
        let sid = "CONFIG_PREEMPT_BUILD=y\nCONFIG_PREEMPT_LAZY=y\nCONFIG_PREEMPT_DYNAMIC=y\n";
        assert_eq!(from_config(sid, ""), Some(Model::Lazy));
        // Not dynamic: the command line cannot change it.
        let fixed = "CONFIG_PREEMPT_NONE=y\n# CONFIG_PREEMPT is not set\n";
        assert_eq!(from_config(fixed, "preempt=full"), Some(Model::None));
        assert_eq!(from_config("CONFIG_PREEMPT=y\n", ""), Some(Model::Full));
        assert_eq!(
            from_config(
                "CONFIG_PREEMPT_RT=y\nCONFIG_PREEMPT_DYNAMIC=y\n",
                "preempt=none"
            ),
            Some(Model::Rt)
        );
        assert_eq!(from_config("CONFIG_BPF=y\n", ""), None);
        assert!(!Model::Voluntary.preemptible() && Model::Lazy.preemptible());
    }
}
