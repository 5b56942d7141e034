//! Metric names of the rule-evaluator.

/// Counter: events evaluated, by source `topic`.
pub const EVENTS: &str = "rule_evaluator_events_total";
/// Counter: rule matches, by `rule`.
pub const MATCHES: &str = "rule_evaluator_matches_total";
/// Counter: dispatch requests produced.
pub const REQUESTS: &str = "rule_evaluator_dispatch_requests_total";
/// Gauge: enabled rules loaded.
pub const RULES_LOADED: &str = "rule_evaluator_rules_loaded";
/// Gauge: version of each loaded rule, by `rule` (name); 0 once a rule loaded before is no
/// longer loaded (disabled, deleted, renamed, or its condition no longer parses).
pub const RULE_VERSION: &str = "rule_evaluator_rule_version";
/// Counter: rule table reloads.
pub const RULE_RELOADS: &str = "rule_evaluator_rule_reloads_total";

pub fn describe() {
    metrics::describe_counter!(EVENTS, "Events evaluated by source topic");
    metrics::describe_counter!(MATCHES, "Rule matches by rule");
    metrics::describe_counter!(REQUESTS, "Dispatch requests produced");
    metrics::describe_gauge!(RULES_LOADED, "Enabled rules loaded");
    metrics::describe_gauge!(
        RULE_VERSION,
        "Version of each loaded rule by rule name; 0 after the rule is no longer loaded"
    );
    metrics::describe_counter!(RULE_RELOADS, "Rule table reloads");
}
