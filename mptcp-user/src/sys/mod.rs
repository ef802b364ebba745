//! Operating-system idioms, one module each, so that every command enters a namespace, finds a
//! cgroup, checks a capability or waits for a signal the same way.

pub mod caps;
pub mod cgroup;
pub mod errno;
pub mod mountns;
pub mod mptcp;
pub mod netns;
pub mod netstat;
pub mod preempt;
pub mod signals;
pub mod sockdiag;
pub mod sockowner;
