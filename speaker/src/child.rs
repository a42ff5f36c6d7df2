//! The daemons the speaker runs (BIRD, conntrackd) die with it: a speaker killed with -9 must not
//! leave a BIRD advertising its routes or a conntrackd holding its lock.

/// For a child's `pre_exec`: asks the kernel to kill the child when the speaker dies.
pub fn die_with_parent() -> std::io::Result<()> {
    // SAFETY: prctl is async-signal-safe and only changes the calling (child) process.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
