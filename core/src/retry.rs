//! What becomes of a delivery after each attempt: the plugin's verdict under the instance's
//! retry policy.
//!
//! Pure: the time and the random draw for jitter are inputs, so the schedule is tested
//! without clocks and the same code runs in the host and in the Spin bridge.

use serde::{Deserialize, Serialize};

use crate::model::Verdict;

/// Where a delivery stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting for its next attempt.
    Pending {
        next_attempt_ms: u64,
    },
    Delivered {
        at_ms: u64,
    },
    /// No more attempts: the plugin gave up, or the policy ran out. Operators may retry it.
    #[serde(alias = "gave_up")]
    Dead {
        at_ms: u64,
        reason: String,
    },
}

impl DeliveryState {
    /// The name operators filter by.
    pub fn name(&self) -> &'static str {
        match self {
            DeliveryState::Pending { .. } => "pending",
            DeliveryState::Delivered { .. } => "delivered",
            DeliveryState::Dead { .. } => "dead",
        }
    }

    /// When the delivery finished, delivered or dead.
    pub fn finished_at(&self) -> Option<u64> {
        match self {
            DeliveryState::Pending { .. } => None,
            DeliveryState::Delivered { at_ms } | DeliveryState::Dead { at_ms, .. } => Some(*at_ms),
        }
    }
}

/// How the waits between attempts grow when the plugin leaves the timing to the host.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// The same wait every time.
    Fixed,
    /// The wait doubles after every attempt, up to `max_interval_secs`.
    Exponential,
}

/// An instance's retry policy (`[instances.NAME.retry]` in the configuration).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    pub schedule: Schedule,
    /// The first wait, and every wait of a fixed schedule.
    pub interval_secs: f64,
    /// The longest wait an exponential schedule grows to.
    pub max_interval_secs: f64,
    /// Each wait is stretched by a random share up to this (0.2: up to 20 % longer), so
    /// deliveries that failed together do not all come back together.
    pub jitter: f64,
    /// A delivery still failing this long after it was asked for is dead. 0: never.
    pub max_age_secs: u64,
    /// A delivery that failed this many attempts is dead. 0: no limit.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            schedule: Schedule::Exponential,
            interval_secs: 10.0,
            max_interval_secs: 600.0,
            jitter: 0.2,
            max_age_secs: 24 * 3600,
            max_attempts: 0,
        }
    }
}

impl RetryPolicy {
    /// Why the policy makes no sense, if it does not.
    pub fn problem(&self) -> Option<String> {
        let finite = |value: f64| value.is_finite() && value >= 0.0;
        if !finite(self.interval_secs) || self.interval_secs < 0.001 {
            return Some("interval_secs must be a positive number".into());
        }
        if !finite(self.max_interval_secs) || self.max_interval_secs < self.interval_secs {
            return Some("max_interval_secs must be at least interval_secs".into());
        }
        if !finite(self.jitter) || self.jitter > 1.0 {
            return Some("jitter must be between 0 and 1".into());
        }
        None
    }

    /// The host's own wait before attempt `attempts + 1`, before jitter.
    fn wait_ms(&self, attempts: u32) -> f64 {
        let first = self.interval_secs * 1000.0;
        match self.schedule {
            Schedule::Fixed => first,
            Schedule::Exponential => {
                let doublings = attempts.saturating_sub(1).min(62);
                (first * 2f64.powi(doublings as i32)).min(self.max_interval_secs * 1000.0)
            }
        }
    }
}

/// What one attempt left behind, for [`next_state`].
pub struct Attempt<'a> {
    pub verdict: &'a Verdict,
    /// Attempts made so far, this one included.
    pub attempts: u32,
    /// When the delivery was asked for.
    pub created_ms: u64,
    pub now_ms: u64,
    /// A uniform draw from [0, 1) for jitter.
    pub random: f64,
    /// The attempt's result, for the reason of a delivery that dies.
    pub summary: &'a str,
}

/// The delivery's state after an attempt the plugin judged.
///
/// `retry-after-ms` is the plugin's minimum (a provider's `Retry-After`, a protocol's
/// interval): it is honoured and only stretched by jitter. `retry` leaves the wait to the
/// policy. Either way the policy's age and attempt limits end retries.
pub fn next_state(policy: &RetryPolicy, attempt: Attempt<'_>) -> DeliveryState {
    let now = attempt.now_ms;
    let wait_ms = match attempt.verdict {
        Verdict::Delivered => return DeliveryState::Delivered { at_ms: now },
        Verdict::GiveUp(reason) => {
            return DeliveryState::Dead {
                at_ms: now,
                reason: format!("the plugin gave up: {reason}"),
            };
        }
        Verdict::Retry => policy.wait_ms(attempt.attempts),
        Verdict::RetryAfterMs(ms) => *ms as f64,
    };
    if policy.max_attempts > 0 && attempt.attempts >= policy.max_attempts {
        return DeliveryState::Dead {
            at_ms: now,
            reason: format!(
                "no success in {} attempts; last: {}",
                attempt.attempts, attempt.summary
            ),
        };
    }
    let stretched = wait_ms * (1.0 + policy.jitter * attempt.random.clamp(0.0, 1.0));
    let next_attempt_ms = now.saturating_add(stretched as u64);
    let age_limit = policy.max_age_secs.saturating_mul(1000);
    if age_limit > 0 && next_attempt_ms.saturating_sub(attempt.created_ms) > age_limit {
        return DeliveryState::Dead {
            at_ms: now,
            reason: format!(
                "no success within {}; last: {}",
                describe_secs(policy.max_age_secs),
                attempt.summary
            ),
        };
    }
    DeliveryState::Pending { next_attempt_ms }
}

/// Delay before retrying an input whose plugin call failed (a trap, a plugin error): 5 s
/// doubling to 10 min, so a broken plugin is not hammered.
pub fn failure_backoff_ms(attempts: u32) -> u64 {
    5_000u64
        .saturating_mul(1 << attempts.clamp(1, 8).saturating_sub(1))
        .min(600_000)
}

fn describe_secs(secs: u64) -> String {
    match secs {
        s if s % 86_400 == 0 => format!("{} d", s / 86_400),
        s if s % 3_600 == 0 => format!("{} h", s / 3_600),
        s if s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after(policy: &RetryPolicy, verdict: Verdict, attempts: u32, random: f64) -> DeliveryState {
        next_state(
            policy,
            Attempt {
                verdict: &verdict,
                attempts,
                created_ms: 1_000_000,
                now_ms: 1_000_000 + 1_000,
                random,
                summary: "HTTP 500: down",
            },
        )
    }

    fn wait(state: DeliveryState) -> u64 {
        match state {
            DeliveryState::Pending { next_attempt_ms } => next_attempt_ms - 1_001_000,
            other => panic!("pending expected, got {other:?}"),
        }
    }

    #[test]
    fn exponential_doubles_to_the_cap() {
        let policy = RetryPolicy {
            jitter: 0.0,
            ..Default::default()
        };
        let waits: Vec<u64> = (1..=9)
            .map(|attempts| wait(after(&policy, Verdict::Retry, attempts, 0.5)))
            .collect();
        assert_eq!(
            waits,
            [
                10_000, 20_000, 40_000, 80_000, 160_000, 320_000, 600_000, 600_000, 600_000
            ]
        );
    }

    #[test]
    fn fixed_schedule_and_jitter_stretch_only_upwards() {
        let policy = RetryPolicy {
            schedule: Schedule::Fixed,
            interval_secs: 2.0,
            jitter: 0.5,
            ..Default::default()
        };
        assert_eq!(wait(after(&policy, Verdict::Retry, 5, 0.0)), 2_000);
        assert_eq!(wait(after(&policy, Verdict::Retry, 5, 0.999_999)), 2_999);
    }

    #[test]
    fn the_plugins_minimum_is_honoured() {
        let policy = RetryPolicy {
            jitter: 0.0,
            ..Default::default()
        };
        assert_eq!(
            wait(after(&policy, Verdict::RetryAfterMs(10_000), 7, 0.3)),
            10_000
        );
        // A provider's Retry-After beyond the policy's cap still wins.
        assert_eq!(
            wait(after(&policy, Verdict::RetryAfterMs(3_600_000), 1, 0.3)),
            3_600_000
        );
    }

    #[test]
    fn delivered_and_given_up_end_at_once() {
        let policy = RetryPolicy::default();
        assert_eq!(
            after(&policy, Verdict::Delivered, 3, 0.0),
            DeliveryState::Delivered { at_ms: 1_001_000 }
        );
        let DeliveryState::Dead { reason, .. } =
            after(&policy, Verdict::GiveUp("BAD_SERVICE".into()), 1, 0.0)
        else {
            panic!("dead expected");
        };
        assert_eq!(reason, "the plugin gave up: BAD_SERVICE");
    }

    #[test]
    fn age_and_attempt_limits_make_a_delivery_dead_with_its_last_error() {
        let old = RetryPolicy {
            max_age_secs: 5,
            ..Default::default()
        };
        let DeliveryState::Dead { reason, .. } = after(&old, Verdict::Retry, 1, 0.0) else {
            panic!("dead expected");
        };
        assert_eq!(reason, "no success within 5 s; last: HTTP 500: down");
        let counted = RetryPolicy {
            max_attempts: 3,
            ..Default::default()
        };
        assert!(matches!(
            after(&counted, Verdict::Retry, 2, 0.0),
            DeliveryState::Pending { .. }
        ));
        let DeliveryState::Dead { reason, .. } = after(&counted, Verdict::RetryAfterMs(1), 3, 0.0)
        else {
            panic!("dead expected");
        };
        assert_eq!(reason, "no success in 3 attempts; last: HTTP 500: down");
    }

    #[test]
    fn nonsense_policies_are_named() {
        let bad = |policy: RetryPolicy| policy.problem().unwrap();
        assert!(
            bad(RetryPolicy {
                interval_secs: 0.0,
                ..Default::default()
            })
            .contains("interval_secs")
        );
        assert!(
            bad(RetryPolicy {
                max_interval_secs: 1.0,
                ..Default::default()
            })
            .contains("max_interval_secs")
        );
        assert!(
            bad(RetryPolicy {
                jitter: 2.0,
                ..Default::default()
            })
            .contains("jitter")
        );
        assert_eq!(RetryPolicy::default().problem(), None);
    }

    #[test]
    fn stored_states_of_older_hosts_still_read() {
        let old = r#"{"state":"gave_up","at_ms":5,"reason":"r"}"#;
        assert_eq!(
            serde_json::from_str::<DeliveryState>(old).unwrap(),
            DeliveryState::Dead {
                at_ms: 5,
                reason: "r".into()
            }
        );
    }

    #[test]
    fn failure_backoff_grows_to_ten_minutes() {
        assert_eq!(failure_backoff_ms(0), 5_000);
        assert_eq!(failure_backoff_ms(1), 5_000);
        assert_eq!(failure_backoff_ms(2), 10_000);
        assert_eq!(failure_backoff_ms(30), 600_000);
    }
}
