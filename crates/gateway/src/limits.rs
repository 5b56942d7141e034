//! Rate limits of a route (`rate_limit` in routes.yaml): events per principal (the user id of a
//! JWT, the API key, or the client address on anonymous routes) and events of the whole route.
//! GCRA buckets from `governor`, counted by this gateway instance: with N instances behind a
//! load balancer a client gets up to N times the configured rate.

use std::num::NonZeroU32;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::{StateInformationMiddleware, StateSnapshot};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{NotUntil, Quota, RateLimiter};
use serde::Deserialize;

use crate::error::ApiError;

/// `rate_limit:` of a route (or of `defaults:`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Each principal's events on this route.
    #[serde(default)]
    pub principal: Option<Rate>,
    /// All events on this route together.
    #[serde(default)]
    pub route: Option<Rate>,
}

/// `per_second` or `per_minute` events, with bursts up to `burst` (default: the rate's count).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    #[serde(default)]
    pub per_second: Option<u32>,
    #[serde(default)]
    pub per_minute: Option<u32>,
    #[serde(default)]
    pub burst: Option<u32>,
}

impl Rate {
    /// (count, window in seconds)
    fn window(&self) -> Result<(NonZeroU32, u64), String> {
        let (count, window) = match (self.per_second, self.per_minute) {
            (Some(n), None) => (n, 1),
            (None, Some(n)) => (n, 60),
            _ => return Err("set exactly one of per_second and per_minute".into()),
        };
        let count = NonZeroU32::new(count).ok_or("the rate must be above 0")?;
        Ok((count, window))
    }

    fn quota(&self) -> Result<Quota, String> {
        let (count, window) = self.window()?;
        let quota = if window == 1 {
            Quota::per_second(count)
        } else {
            Quota::per_minute(count)
        };
        match self.burst {
            None => Ok(quota),
            Some(burst) => {
                Ok(quota.allow_burst(NonZeroU32::new(burst).ok_or("burst must be above 0")?))
            }
        }
    }

    /// `RateLimit-Policy` of this rate: `<count>;w=<window>;burst=<burst>`.
    fn policy(&self) -> String {
        let (count, window) = self.window().expect("checked at load");
        let burst = self.burst.unwrap_or(count.get());
        format!("{count};w={window};burst={burst}")
    }
}

impl RateLimitSpec {
    pub fn check(&self) -> Result<(), String> {
        if self.principal.is_none() && self.route.is_none() {
            return Err("set principal and/or route".into());
        }
        for (name, rate) in [("principal", &self.principal), ("route", &self.route)] {
            if let Some(rate) = rate {
                rate.quota().map_err(|e| format!("{name}: {e}"))?;
            }
        }
        Ok(())
    }
}

type Keyed =
    RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;
type Direct = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// The buckets of one route.
pub struct RouteLimits {
    /// What they were built from (a reload with the same spec keeps them).
    pub spec: Option<RateLimitSpec>,
    principal: Option<(Rate, Keyed)>,
    route: Option<(Rate, Direct)>,
}

impl std::fmt::Debug for RouteLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteLimits")
            .field("spec", &self.spec)
            .finish()
    }
}

/// What a caller may still send (for the `RateLimit-*` headers of an accepted request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowance {
    pub limit: u32,
    pub remaining: u32,
    pub reset_secs: u64,
    pub policy: String,
}

impl Allowance {
    fn from_snapshot(rate: &Rate, snapshot: &StateSnapshot) -> Self {
        let quota = snapshot.quota();
        let limit = quota.burst_size().get();
        let remaining = snapshot.remaining_burst_capacity().min(limit);
        let reset = quota.replenish_interval() * (limit - remaining);
        Self {
            limit,
            remaining,
            reset_secs: ceil_secs(reset),
            policy: rate.policy(),
        }
    }

    /// Adds `RateLimit-Limit`, `-Remaining`, `-Reset` and `-Policy`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in self.headers() {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
    }

    fn headers(&self) -> [(&'static str, String); 4] {
        [
            ("ratelimit-limit", self.limit.to_string()),
            ("ratelimit-remaining", self.remaining.to_string()),
            ("ratelimit-reset", self.reset_secs.to_string()),
            ("ratelimit-policy", self.policy.clone()),
        ]
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl RouteLimits {
    pub fn new(spec: Option<RateLimitSpec>) -> Self {
        let principal = spec.as_ref().and_then(|s| s.principal.clone()).map(|rate| {
            let quota = rate.quota().expect("checked at load");
            (
                rate,
                RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>(),
            )
        });
        let route = spec.as_ref().and_then(|s| s.route.clone()).map(|rate| {
            let quota = rate.quota().expect("checked at load");
            (
                rate,
                RateLimiter::direct(quota).with_middleware::<StateInformationMiddleware>(),
            )
        });
        Self {
            spec,
            principal,
            route,
        }
    }

    /// Takes `events` from the principal's bucket, then from the route's. The allowance closest
    /// to its limit is returned for the response headers; a refusal is a 429 with
    /// `Retry-After`.
    pub fn take(&self, principal: &str, events: usize) -> Result<Option<Allowance>, ApiError> {
        let n = NonZeroU32::new(u32::try_from(events.max(1)).unwrap_or(u32::MAX))
            .expect("at least one");
        let mut tightest: Option<Allowance> = None;
        let mut keep = |allowance: Allowance| {
            if tightest
                .as_ref()
                .is_none_or(|t| allowance.remaining < t.remaining)
            {
                tightest = Some(allowance);
            }
        };
        if let Some((rate, limiter)) = &self.principal {
            let key = principal.to_string();
            let outcome = limiter
                .check_key_n(&key, n)
                .map_err(|_| too_big(rate, events, "per principal"))?;
            keep(judge(rate, limiter.clock(), outcome, "you")?);
        }
        if let Some((rate, limiter)) = &self.route {
            let outcome = limiter
                .check_n(n)
                .map_err(|_| too_big(rate, events, "of the route"))?;
            keep(judge(rate, limiter.clock(), outcome, "this route")?);
        }
        Ok(tightest)
    }

    /// Forgets principals whose buckets are full again (bounded memory).
    pub fn housekeep(&self) {
        if let Some((_, limiter)) = &self.principal {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Principals currently tracked.
    pub fn tracked(&self) -> usize {
        self.principal.as_ref().map_or(0, |(_, l)| l.len())
    }
}

fn judge(
    rate: &Rate,
    clock: &DefaultClock,
    outcome: Result<StateSnapshot, NotUntil<<DefaultClock as Clock>::Instant>>,
    whom: &str,
) -> Result<Allowance, ApiError> {
    match outcome {
        Ok(snapshot) => Ok(Allowance::from_snapshot(rate, &snapshot)),
        Err(not_until) => {
            let wait = not_until.wait_time_from(clock.now());
            let quota = not_until.quota();
            let limit = quota.burst_size().get();
            let allowance = Allowance {
                limit,
                remaining: 0,
                reset_secs: ceil_secs(quota.replenish_interval() * limit),
                policy: rate.policy(),
            };
            let mut error = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "rate limit exceeded for {whom} ({}); retry after {} ms",
                    allowance.policy,
                    wait.as_millis()
                ),
            )
            .retry_after(ceil_secs(wait).max(1));
            for (name, value) in allowance.headers() {
                error = error.header(name, value);
            }
            Err(error)
        }
    }
}

fn too_big(rate: &Rate, events: usize, which: &str) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!(
            "{events} events in one request exceed the burst {which} ({}); send smaller batches",
            rate.policy()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> RateLimitSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn specs_are_checked() {
        assert!(spec("principal: {per_second: 5}").check().is_ok());
        assert!(spec("route: {per_minute: 600, burst: 50}").check().is_ok());
        for bad in [
            "{}",
            "principal: {}",
            "principal: {per_second: 1, per_minute: 1}",
            "principal: {per_second: 0}",
            "route: {per_second: 1, burst: 0}",
        ] {
            assert!(spec(bad).check().is_err(), "{bad}");
        }
        assert!(serde_yaml::from_str::<RateLimitSpec>("principal: {per_hour: 1}").is_err());
    }

    #[test]
    fn each_principal_has_its_own_bucket_and_the_route_caps_them_all() {
        let limits = RouteLimits::new(Some(spec(
            "principal: {per_minute: 60, burst: 3}\nroute: {per_minute: 60, burst: 5}",
        )));
        for remaining in [2, 1, 0] {
            let allowance = limits.take("user:a", 1).unwrap().unwrap();
            assert_eq!(allowance.remaining, remaining);
            assert_eq!(allowance.limit, 3);
            assert_eq!(allowance.policy, "60;w=60;burst=3");
        }
        let refused = limits.take("user:a", 1).unwrap_err();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(refused.retry_after.is_some_and(|s| s >= 1));
        assert!(refused
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .any(|(n, v)| *n == "ratelimit-remaining" && v == "0"));
        // Another principal has a bucket of its own, but the route has 2 events left.
        let allowance = limits.take("user:b", 1).unwrap().unwrap();
        assert_eq!(
            allowance.remaining, 1,
            "the route's bucket is the tighter one"
        );
        limits.take("user:c", 1).unwrap();
        assert!(limits.take("user:d", 1).is_err(), "the route is spent");
        // A batch larger than any burst can never pass.
        assert!(limits.take("user:e", 10).unwrap_err().retry_after.is_none());
        assert!(limits.tracked() >= 4);
    }

    #[test]
    fn no_spec_means_no_limit() {
        let limits = RouteLimits::new(None);
        for _ in 0..1000 {
            assert_eq!(limits.take("x", 500).unwrap(), None);
        }
    }
}
