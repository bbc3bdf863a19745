//! Health checks, as docker runs them: the [`Policy`] a task's container follows (its
//! service's `healthcheck`, laid over its image's `HEALTHCHECK`), and the [`Tracker`] that
//! turns check results into a verdict. Both are pure; the task worker in `session` runs the
//! checks through the executor (an exec in the container) and acts on the verdicts: a task
//! counts as running only once healthy, and an unhealthy one is stopped and fails, so its
//! restart policy replaces it, as in Swarm.
//!
//! Docker's rules: the first check runs one interval after the start (`start_interval`, 5 s by
//! default, while within `start_period`); a check passes when its command exits 0 within
//! `timeout`; failures during the start period do not count until a check has passed;
//! `retries` failures in a row make the container unhealthy. Defaults: interval 30 s, timeout
//! 30 s, retries 3, no start period.

use shoal_api::service::HealthCheck;
use shoal_api::task::Health;
use shoal_runtime::image::ImageHealthcheck;
use std::time::Duration;

const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_START_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_RETRIES: u32 = 3;

/// How a container's health is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The command run in the container (`CMD-SHELL x` is `/bin/sh -c x`).
    pub cmd: Vec<String>,
    /// Between checks.
    pub interval: Duration,
    /// A check's limit.
    pub timeout: Duration,
    /// Failures in a row before unhealthy.
    pub retries: u32,
    /// Grace after start.
    pub start_period: Duration,
    /// Between checks during the start period.
    pub start_interval: Duration,
}

fn nanos(n: u64) -> Option<Duration> {
    (n > 0).then(|| Duration::from_nanos(n))
}

/// The policy of a container: the service's check laid over the image's (a service check
/// without a test keeps the image's test and changes its timings; `NONE` or `disable`
/// turns checking off). `None`: nothing to check.
pub fn policy(spec: Option<&HealthCheck>, image: Option<&ImageHealthcheck>) -> Option<Policy> {
    let test = match spec.map(|s| &s.test).filter(|t| !t.is_empty()) {
        Some(t) => t.clone(),
        None => image.map(|i| i.test.clone()).unwrap_or_default(),
    };
    let cmd = match test.split_first() {
        Some((kind, rest)) if kind == "CMD" && !rest.is_empty() => rest.to_vec(),
        Some((kind, rest)) if kind == "CMD-SHELL" && !rest.is_empty() => {
            vec!["/bin/sh".into(), "-c".into(), rest.join(" ")]
        }
        _ => return None,
    };
    let pick = |from_spec: Option<Duration>, from_image: Option<Duration>, default| {
        from_spec
            .filter(|d| !d.is_zero())
            .or(from_image)
            .unwrap_or(default)
    };
    let image = image.cloned().unwrap_or_default();
    Some(Policy {
        cmd,
        interval: pick(
            spec.and_then(|s| s.interval).map(|d| d.0),
            nanos(image.interval),
            DEFAULT_INTERVAL,
        ),
        timeout: pick(
            spec.and_then(|s| s.timeout).map(|d| d.0),
            nanos(image.timeout),
            DEFAULT_TIMEOUT,
        ),
        retries: spec
            .and_then(|s| s.retries)
            .filter(|r| *r > 0)
            .or((image.retries > 0).then_some(image.retries))
            .map_or(DEFAULT_RETRIES, |r| r.min(u32::MAX as u64) as u32),
        start_period: pick(
            spec.and_then(|s| s.start_period).map(|d| d.0),
            nanos(image.start_period),
            Duration::ZERO,
        ),
        start_interval: pick(
            spec.and_then(|s| s.start_interval).map(|d| d.0),
            nanos(image.start_interval),
            DEFAULT_START_INTERVAL,
        ),
    })
}

/// A container's health over time; `at` arguments are times since the container started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracker {
    policy: Policy,
    state: Health,
    /// Failed checks in a row that count.
    pub failing_streak: u32,
    /// When the next check is due.
    pub next_at: Duration,
}

impl Tracker {
    /// A container that has just started.
    pub fn new(policy: Policy) -> Tracker {
        let first = if policy.start_period.is_zero() {
            policy.interval
        } else {
            policy.start_interval.min(policy.interval)
        };
        Tracker {
            policy,
            state: Health::Starting,
            failing_streak: 0,
            next_at: first,
        }
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The verdict so far.
    pub fn state(&self) -> Health {
        self.state
    }

    /// Records a check that ended at `at`; returns the new verdict when it changed.
    pub fn record(&mut self, passed: bool, at: Duration) -> Option<Health> {
        let before = self.state;
        let in_start_period = at < self.policy.start_period;
        if passed {
            self.failing_streak = 0;
            self.state = Health::Healthy;
        } else if !(in_start_period && self.state == Health::Starting) {
            self.failing_streak += 1;
            if self.failing_streak >= self.policy.retries {
                self.state = Health::Unhealthy;
            }
        }
        let step = if in_start_period && self.state == Health::Starting {
            self.policy.start_interval
        } else {
            self.policy.interval
        };
        self.next_at = at + step;
        (self.state != before).then_some(self.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::units::Duration as ApiDuration;

    fn check(test: &[&str]) -> HealthCheck {
        HealthCheck {
            test: test.iter().map(|s| s.to_string()).collect(),
            interval: Some(ApiDuration::from_secs(2)),
            timeout: None,
            retries: Some(2),
            start_period: None,
            start_interval: None,
        }
    }

    #[test]
    fn the_service_check_lies_over_the_images() {
        let image = ImageHealthcheck {
            test: vec!["CMD-SHELL".into(), "wget -q localhost".into()],
            interval: 10_000_000_000,
            timeout: 3_000_000_000,
            retries: 5,
            ..Default::default()
        };
        let p = policy(None, Some(&image)).unwrap();
        assert_eq!(p.cmd, ["/bin/sh", "-c", "wget -q localhost"]);
        assert_eq!(
            (p.interval, p.timeout, p.retries),
            (Duration::from_secs(10), Duration::from_secs(3), 5)
        );
        // Timings only: the image's test stays.
        let p = policy(Some(&check(&[])), Some(&image)).unwrap();
        assert_eq!(p.cmd, ["/bin/sh", "-c", "wget -q localhost"]);
        assert_eq!(
            (p.interval, p.timeout, p.retries),
            (Duration::from_secs(2), Duration::from_secs(3), 2)
        );
        let p = policy(Some(&check(&["CMD", "test", "-f", "/ok"])), Some(&image)).unwrap();
        assert_eq!(p.cmd, ["test", "-f", "/ok"]);
        assert_eq!(policy(Some(&check(&["NONE"])), Some(&image)), None);
        assert_eq!(policy(None, None), None);
        let p = policy(Some(&check(&["CMD", "true"])), None).unwrap();
        assert_eq!(
            (p.timeout, p.start_period, p.start_interval),
            (DEFAULT_TIMEOUT, Duration::ZERO, DEFAULT_START_INTERVAL)
        );
    }

    fn policy_of(retries: u32, start_period: u64) -> Policy {
        Policy {
            cmd: vec!["true".into()],
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            retries,
            start_period: Duration::from_secs(start_period),
            start_interval: Duration::from_secs(1),
        }
    }

    #[test]
    fn retries_failures_in_a_row_make_it_unhealthy_and_a_pass_heals() {
        let mut t = Tracker::new(policy_of(3, 0));
        assert_eq!(t.next_at, Duration::from_secs(10));
        let s = Duration::from_secs;
        assert_eq!(t.record(false, s(10)), None);
        assert_eq!(t.record(false, s(20)), None);
        assert_eq!(t.record(true, s(30)), Some(Health::Healthy));
        assert_eq!(t.record(false, s(40)), None);
        assert_eq!(t.record(false, s(50)), None);
        assert_eq!(t.record(false, s(60)), Some(Health::Unhealthy));
        assert_eq!(t.next_at, s(70));
        assert_eq!(t.record(true, s(70)), Some(Health::Healthy));
        assert_eq!(t.failing_streak, 0);
    }

    #[test]
    fn failures_in_the_start_period_do_not_count_until_a_check_passed() {
        let s = Duration::from_secs;
        let mut t = Tracker::new(policy_of(1, 30));
        assert_eq!(t.next_at, s(1));
        for at in 1..5 {
            assert_eq!(t.record(false, s(at)), None);
            assert_eq!(t.next_at, s(at + 1), "start_interval while starting");
        }
        assert_eq!(t.state(), Health::Starting);
        assert_eq!(t.record(true, s(5)), Some(Health::Healthy));
        assert_eq!(t.next_at, s(15), "interval once healthy");
        // Passed once: failures count, even within the start period.
        assert_eq!(t.record(false, s(15)), Some(Health::Unhealthy));
        // A start period that ends without a pass: failures count from then on.
        let mut t = Tracker::new(policy_of(1, 3));
        assert_eq!(t.record(false, s(1)), None);
        assert_eq!(t.record(false, s(3)), Some(Health::Unhealthy));
    }
}
