//! Kernel timestamps (`bpf_ktime_get_boot_ns`) to wall-clock time.

use std::time::{Duration, SystemTime};

use nix::time::{ClockId, clock_gettime};

/// Wall-clock time of boot, re-read per batch so NTP steps are followed.
#[derive(Clone, Copy, Debug)]
pub struct BootClock {
    boot: SystemTime,
}

impl BootClock {
    pub fn now() -> Self {
        let since_boot = clock_gettime(ClockId::CLOCK_BOOTTIME)
            .map(Duration::from)
            .unwrap_or_default();
        Self {
            boot: SystemTime::now() - since_boot,
        }
    }

    pub fn wall_time(&self, boot_ns: u64) -> SystemTime {
        self.boot + Duration::from_nanos(boot_ns)
    }
}
