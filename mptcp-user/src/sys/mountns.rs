//! A private mount namespace for one short-lived thread: a filesystem mounted for one piece of
//! work (securityfs to read the lockdown mode, an empty tmpfs to hide a file from a library),
//! seen by nobody else — not the host, not this process's other threads.
//!
//! `unshare(CLONE_NEWNS | CLONE_FS)` moves only the calling thread. Its mounts are made private
//! first, so that nothing propagates back to the namespace it came from (systemd makes `/`
//! shared), and the namespace ends with the thread.

use std::{ffi::CStr, io};

/// Runs `f` on a new thread whose private mount namespace has `fstype` (from `source`)
/// mounted at `target`, and returns what `f` returned. When the namespace or the mount cannot
/// be made (no CAP_SYS_ADMIN, a seccomp profile, no such `target`), `f` does not run and the
/// error says why.
pub fn with_mount<T: Send>(
    source: &CStr,
    target: &CStr,
    fstype: &CStr,
    f: impl FnOnce() -> T + Send,
) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare moves only this thread (its filesystem attributes are unshared
            // with it); mount gets NUL-terminated strings and null pointers where it allows.
            unsafe {
                if libc::unshare(libc::CLONE_NEWNS | libc::CLONE_FS) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                if libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    fstype.as_ptr(),
                    0,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
