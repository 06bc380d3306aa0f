//! CPU time and peak memory of this process, from `getrusage`.

use std::time::Duration;

/// Resource usage of the whole process so far.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Usage {
    /// User plus system CPU time, all threads. Kept in whole microseconds
    /// (as the kernel reports it) so that differences stay exact and the
    /// system part of a difference never exceeds the whole.
    pub cpu: Duration,
    /// The system part of `cpu`: mostly page faults for fresh memory,
    /// which on a virtual machine can cost more than the work.
    pub system: Duration,
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
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    Usage {
        cpu: time(ru.ru_utime) + time(ru.ru_stime),
        system: time(ru.ru_stime),
        minor_faults: ru.ru_minflt as u64,
        peak_rss: ru.ru_maxrss as u64 * 1024,
    }
}
