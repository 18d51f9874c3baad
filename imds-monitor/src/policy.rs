//! What the daemon does with each class of request, per mode.

use imds_monitor_common::class::{RequestClass, Verdict};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Report every request as an event.
    Monitor,
    /// Report every request; IMDSv1 requests are alerts.
    Alert,
}

impl Mode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Monitor => "monitor",
            Self::Alert => "alert",
        }
    }

    /// The verdict for a request the kernel let through.
    pub const fn verdict(self, class: RequestClass) -> Verdict {
        match (self, class) {
            (Self::Alert, RequestClass::V1Get) => Verdict::Alerted,
            _ => Verdict::Allowed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_v1_alerts_and_only_in_alert_mode() {
        for class in RequestClass::ALL {
            assert_eq!(Mode::Monitor.verdict(class), Verdict::Allowed, "{class:?}");
            let expected = if class == RequestClass::V1Get {
                Verdict::Alerted
            } else {
                Verdict::Allowed
            };
            assert_eq!(Mode::Alert.verdict(class), expected, "{class:?}");
        }
    }
}
