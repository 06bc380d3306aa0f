//! CPU time and peak memory of this process, from `getrusage`.

/// Resource usage of the whole process so far.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Usage {
    /// User plus system CPU seconds, all threads.
    pub cpu_seconds: f64,
    /// The system part of `cpu_seconds`: mostly page faults for fresh
    /// memory, which on a virtual machine can cost more than the work.
    pub system_seconds: f64,
    /// Page faults served without I/O (first touches of fresh memory).
    pub minor_faults: u64,
    /// Peak resident set size, bytes.
    pub peak_rss: u64,
}

pub(crate) fn usage() -> Usage {
    // SAFETY: getrusage only writes the zeroed struct we pass it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer cannot fail.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Usage {
        cpu_seconds: secs(ru.ru_utime) + secs(ru.ru_stime),
        system_seconds: secs(ru.ru_stime),
        minor_faults: ru.ru_minflt as u64,
        peak_rss: ru.ru_maxrss as u64 * 1024,
    }
}
