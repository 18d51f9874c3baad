//! What the daemon does with each class of request, per mode.
//!
//! [`Mode`] is the monitor and alert modes' fixed answer. Enforce mode reads
//! a policy file instead: [`model`] is what a file says, [`parse`] reads and
//! validates one (docs/policy.md), [`decide`] applies it to a request, and
//! [`check`] is `imds-monitor policy check`.

pub mod check;
pub mod compile;
pub mod decide;
#[cfg(test)]
mod file_tests;
pub mod model;
pub mod parse;

pub use check::{PolicyArgs, main};

use imds_monitor_common::class::{InvalidReason, RequestClass, Verdict};
use model::{Action, Policy};

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

    /// What an event says about a request. `exception` is the policy
    /// exception the kernel found for its sender (index), `dropped` whether
    /// the kernel dropped it. Monitor mode judges nothing. An incomplete
    /// head its client abandoned (`reason`) reached IMDS as nothing whole:
    /// no rule applies to it.
    pub fn decide(
        self,
        policy: &Policy,
        class: RequestClass,
        reason: InvalidReason,
        exception: Option<usize>,
        dropped: bool,
    ) -> Decision {
        let abandoned = class == RequestClass::Incomplete && !reason.fails_closed();
        if self == Self::Monitor || abandoned {
            return Decision {
                verdict: if dropped {
                    Verdict::Dropped
                } else {
                    Verdict::Allowed
                },
                rule: None,
                would_drop: false,
            };
        }
        let (action, rule) = decide::decide_with_exception(policy, class, exception);
        let verdict = match action {
            _ if dropped => Verdict::Dropped,
            Action::Allow => Verdict::Allowed,
            // In enforce mode a request that should have been dropped but
            // was not (its connection predates the monitor) is an alert.
            Action::Alert | Action::Drop => Verdict::Alerted,
        };
        Decision {
            verdict,
            rule: Some(rule.to_string()),
            would_drop: self == Self::Alert && action == Action::Drop,
        }
    }
}

/// The judgement on one request, for its event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// `imds.policy.rule`: which rule decided (not in monitor mode).
    pub rule: Option<String>,
    /// Alert mode: enforce mode would have dropped it.
    pub would_drop: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXCEPTIONS: &str = r#"
[[exception]]
name = "legacy"
systemd_unit = "legacy.service"
"#;

    #[test]
    fn default_policy_judges_v1_and_unjudged_per_mode() {
        let policy = Policy::default();
        for class in RequestClass::ALL {
            // IMDSv1 reads and what the classifier could not judge (fail closed).
            let drops = matches!(class, RequestClass::V1Get | RequestClass::Incomplete);
            let reason = if class == RequestClass::Incomplete {
                InvalidReason::HeadTooLong
            } else {
                InvalidReason::None
            };
            let monitor = Mode::Monitor.decide(&policy, class, reason, None, false);
            assert_eq!(
                (monitor.verdict, monitor.rule, monitor.would_drop),
                (Verdict::Allowed, None, false)
            );
            let alert = Mode::Alert.decide(&policy, class, reason, None, false);
            let alerted = if drops {
                Verdict::Alerted
            } else {
                Verdict::Allowed
            };
            assert_eq!(alert.verdict, alerted, "{class:?}");
            assert_eq!(alert.would_drop, drops, "{class:?}");
            assert_eq!(alert.rule.as_deref(), Some("default"));
            let enforce = Mode::Enforce.decide(&policy, class, reason, None, drops);
            let dropped = if drops {
                Verdict::Dropped
            } else {
                Verdict::Allowed
            };
            assert_eq!(enforce.verdict, dropped, "{class:?}");
            assert!(!enforce.would_drop);
        }
    }

    #[test]
    fn an_abandoned_head_is_reported_not_judged() {
        let policy = Policy::default();
        let closed = InvalidReason::ConnectionClosed;
        for mode in [Mode::Alert, Mode::Enforce] {
            let d = mode.decide(&policy, RequestClass::Incomplete, closed, None, false);
            assert_eq!(
                (d.verdict, d.rule, d.would_drop),
                (Verdict::Allowed, None, false)
            );
        }
    }

    #[test]
    fn the_kernels_exception_names_the_rule() {
        let policy = parse::parse(EXCEPTIONS).unwrap();
        let d = Mode::Enforce.decide(
            &policy,
            RequestClass::V1Get,
            InvalidReason::None,
            Some(0),
            false,
        );
        assert_eq!(
            d.verdict,
            Verdict::Alerted,
            "the exception's default action is alert"
        );
        assert_eq!(d.rule.as_deref(), Some("exception:legacy"));
        let d = Mode::Alert.decide(
            &policy,
            RequestClass::V1Get,
            InvalidReason::None,
            Some(0),
            false,
        );
        assert!(!d.would_drop, "excepted: enforce would not drop it");
        let v2 = Mode::Enforce.decide(
            &policy,
            RequestClass::V2Get,
            InvalidReason::None,
            Some(0),
            false,
        );
        assert_eq!(
            (v2.verdict, v2.rule.as_deref()),
            (Verdict::Allowed, Some("default"))
        );
    }
}
