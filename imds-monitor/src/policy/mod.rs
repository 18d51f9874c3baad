//! What the daemon does with each class of request, per mode.
//!
//! [`Mode`] is the monitor and alert modes' fixed answer. Enforce mode reads
//! a policy file instead: [`model`] is what a file says, [`parse`] reads and
//! validates one (docs/policy.md), [`decide`] applies it to a request, and
//! [`check`] is `imds-monitor policy check`.

pub mod check;
// Enforce mode, built next, is decide()'s first caller outside the tests.
#[cfg_attr(not(test), expect(dead_code, reason = "enforce mode calls it"))]
pub mod decide;
#[cfg(test)]
mod file_tests;
pub mod model;
pub mod parse;

pub use check::{PolicyArgs, main};

use imds_monitor_common::{
    class::{RequestClass, Verdict},
    config::action,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Report every request as an event.
    Monitor,
    /// Report every request; IMDSv1 requests are alerts.
    Alert,
    /// Drop IMDSv1 requests in the kernel before they reach IMDS and reset
    /// the client's connection; report every request.
    Enforce,
}

impl Mode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Monitor => "monitor",
            Self::Alert => "alert",
            Self::Enforce => "enforce",
        }
    }

    /// The kernel's action per class (`config::action`, indexed by class).
    pub fn kernel_actions(self) -> [u8; 8] {
        let mut actions = [action::PASS; 8];
        if self == Self::Enforce {
            actions[RequestClass::V1Get as usize] = action::DROP;
        }
        actions
    }

    /// Alert mode marks what enforce mode would drop (a dry run).
    pub fn would_drop(self, class: RequestClass) -> bool {
        self == Self::Alert && Self::Enforce.kernel_actions()[class as usize] == action::DROP
    }

    /// The verdict for a request the kernel let through.
    pub const fn verdict(self, class: RequestClass) -> Verdict {
        match (self, class) {
            (Self::Alert | Self::Enforce, RequestClass::V1Get) => Verdict::Alerted,
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
            assert_eq!(Mode::Alert.would_drop(class), class == RequestClass::V1Get);
            assert!(!Mode::Monitor.would_drop(class));
        }
    }

    #[test]
    fn only_enforce_drops_and_only_v1() {
        for mode in [Mode::Monitor, Mode::Alert, Mode::Enforce] {
            let actions = mode.kernel_actions();
            for class in RequestClass::ALL {
                let drops = mode == Mode::Enforce && class == RequestClass::V1Get;
                assert_eq!(
                    actions[class as usize] == action::DROP,
                    drops,
                    "{mode:?} {class:?}"
                );
            }
        }
    }
}
