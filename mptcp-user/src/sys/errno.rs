//! Errno names (`ENETUNREACH`) for every message and event field, from one table: nix's.

use nix::errno::Errno;

/// The symbolic name of `errno`; `None` for a number libc does not name (the kernel-internal
/// `ENOTSUPP`, 524, among them).
pub fn name(errno: i32) -> Option<String> {
    let e = Errno::from_raw(errno);
    (e != Errno::UnknownErrno).then(|| format!("{e:?}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_the_libc_symbols() {
        assert_eq!(
            super::name(libc::ENETUNREACH).as_deref(),
            Some("ENETUNREACH")
        );
        assert_eq!(
            super::name(libc::ECONNREFUSED).as_deref(),
            Some("ECONNREFUSED")
        );
        assert_eq!(super::name(libc::EPERM).as_deref(), Some("EPERM"));
        assert_eq!(super::name(524), None);
        assert_eq!(super::name(9999), None);
    }
}
