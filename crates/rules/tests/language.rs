//! The rule language against the repository's purchase schema: every operator and composite,
//! text and JSON forms agreeing, and save-time validation errors.

use apache_avro::types::Value;
use apache_avro::Schema;
use serde_json::json;
use substrate_rules::{compile_condition, text, CeAttributes, Event, Expr, RuleError};

fn schema() -> Schema {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../avro/public/commerce/purchase.events.avsc"
    ))
    .unwrap();
    Schema::parse_str(&text).unwrap()
}

fn purchase(amount: f64, segment: &str, coupon: Option<&str>) -> Value {
    let event = json!({
        "event_id": "0b6b1d2e-8a39-4a4e-9e55-7d4b8f1b2c3d",
        "event_time": 1_764_064_800_000i64,
        "user": {"id": "6f0e4e5c-1d2b-4c3a-9f8e-7d6c5b4a3928", "email": "vip@example.com", "segment": segment, "country": null},
        "purchase": {"id": "ord-1042", "amount": amount, "currency": "EUR", "items": 3, "tags": ["gift", "express"], "coupon": coupon}
    });
    substrate_avro::json_to_avro(&schema(), &event).unwrap()
}

fn check(condition: serde_json::Value, record: &Value) -> bool {
    let matcher =
        compile_condition(&condition, &schema()).unwrap_or_else(|e| panic!("{condition}: {e}"));
    let event = Event {
        record,
        ce: CeAttributes {
            id: "x",
            event_type: "commerce.purchase",
            source: "/gateway",
            time_millis: 1_764_064_800_000,
        },
    };
    matcher.matches(&event)
}

#[test]
fn the_seed_example() {
    let rule = json!("purchase.amount > 500 AND user.segment == 'VIP'");
    assert!(check(rule.clone(), &purchase(750.0, "VIP", None)));
    assert!(!check(rule.clone(), &purchase(750.0, "REGULAR", None)));
    assert!(!check(rule, &purchase(500.0, "VIP", None)));
}

#[test]
fn every_operator_in_both_forms() {
    let record = purchase(750.5, "VIP", Some("XMAS25"));
    let cases: Vec<(&str, bool)> = vec![
        ("purchase.amount == 750.5", true),
        ("purchase.amount != 750.5", false),
        ("purchase.items == 3", true),
        ("purchase.items > 2", true),
        ("purchase.items >= 4", false),
        ("purchase.amount < 750.5", false),
        ("purchase.amount <= 750.5", true),
        ("purchase.amount between 700 and 800", true),
        ("purchase.items between 4 and 10", false),
        ("user.segment in ['VIP', 'STAFF']", true),
        ("user.segment not in ['VIP', 'STAFF']", false),
        ("purchase.items in [1, 3]", true),
        ("purchase.currency prefix 'EU'", true),
        ("purchase.id suffix '1042'", true),
        ("user.email contains '@example'", true),
        ("purchase.tags contains 'gift'", true),
        ("purchase.tags contains 'slow'", false),
        ("purchase.coupon exists", true),
        ("user.country exists", false),
        ("user.country == null", true),
        ("purchase.coupon != null", true),
        ("user.id == '6f0e4e5c-1d2b-4c3a-9f8e-7d6c5b4a3928'", true),
        ("user.id prefix '6f0e'", true),
        ("event_time >= '2025-11-25T10:00:00Z'", true),
        ("event_time < 1764064800000", false),
        ("ce.type == 'commerce.purchase'", true),
        ("ce.source prefix '/gate'", true),
        ("not (user.segment == 'VIP')", false),
        ("user.segment == 'REGULAR' or purchase.amount > 700", true),
        (
            "(user.segment == 'REGULAR' or purchase.amount > 700) and not purchase.coupon exists",
            false,
        ),
    ];
    for (text_form, expected) in cases {
        let from_text = text::parse(text_form).unwrap();
        // The same condition through its JSON form gives the same tree and the same answer.
        let from_json = Expr::from_json(&from_text.to_json()).unwrap();
        assert_eq!(from_text, from_json, "{text_form}");
        assert_eq!(
            check(json!(text_form), &record),
            expected,
            "text: {text_form}"
        );
        assert_eq!(
            check(from_text.to_json(), &record),
            expected,
            "json: {text_form}"
        );
    }
    // Zenith's single-condition form.
    assert!(check(
        json!({"field": "purchase.amount", "operator": ">", "value": 500}),
        &record
    ));
    assert!(check(
        json!({"any": [{"field": "user.segment", "op": "==", "value": "STAFF"}, {"all": [{"field": "purchase.items", "op": ">=", "value": 3}]}]}),
        &record
    ));
}

#[test]
fn validation_at_save_names_the_problem() {
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (
            json!("purchase.total > 5"),
            "unknown field `purchase.total`",
        ),
        (json!("purchase.amount.cents > 5"), "unknown field"),
        (json!("ce.flavour == 'x'"), "unknown field `ce.flavour`"),
        (json!("purchase.amount > '500'"), "cannot be compared"),
        (json!("purchase.amount == 'big'"), "expected a number"),
        (
            json!("user.segment == 'GOLD'"),
            "`GOLD` is not one of REGULAR, VIP, STAFF",
        ),
        (json!("user.segment == 1"), "expected a string"),
        (json!("purchase.currency > 'A'"), "ordering needs a number"),
        (json!("purchase.amount prefix '5'"), "`prefix` needs text"),
        (json!("purchase.amount == null"), "is never null"),
        (json!("user.id == 'not-a-uuid'"), "UUID"),
        (json!("purchase.amount between 9 and 1"), "low is greater"),
        (json!("user contains 'x'"), "`contains` needs"),
        (json!("user == 'x'"), "only `exists` applies"),
        (
            json!({"field": "purchase.items", "op": "in", "value": []}),
            "non-empty list",
        ),
        (json!("purchase.amount >"), "syntax error at column 18"),
    ];
    for (condition, fragment) in cases {
        let err: RuleError = compile_condition(&condition, &schema()).unwrap_err();
        assert!(
            err.to_string().contains(fragment),
            "{condition}: `{err}` should contain `{fragment}`"
        );
    }
}

#[test]
fn numbers_and_strings_never_compare_across_types() {
    // A string field never equals a number-looking rule value and vice versa: both are refused.
    assert!(compile_condition(&json!("purchase.currency == 5"), &schema()).is_err());
    assert!(compile_condition(&json!("purchase.items == '3'"), &schema()).is_err());
    assert!(compile_condition(
        &json!({"field": "purchase.items", "op": "in", "value": [1, "3"]}),
        &schema()
    )
    .is_err());
}

#[test]
fn a_rule_set_reports_the_same_matches_as_single_matchers() {
    use substrate_rules::{parse_condition, RuleSet};
    let conditions = [
        json!("purchase.amount > 500 AND user.segment == 'VIP'"),
        json!("purchase.amount > 500 AND user.segment == 'REGULAR'"),
        json!("not purchase.coupon exists or purchase.amount < 10"),
        json!("user.segment in ['VIP', 'STAFF'] and ce.type == 'commerce.purchase'"),
        json!({"any": [{"field": "purchase.items", "op": ">=", "value": 10}, {"field": "purchase.tags", "op": "contains", "value": "gift"}]}),
    ];
    let mut set = RuleSet::new();
    for (i, c) in conditions.iter().enumerate() {
        set.add(i, &parse_condition(c).unwrap(), &schema()).unwrap();
    }
    for record in [
        purchase(750.0, "VIP", None),
        purchase(20.0, "REGULAR", Some("X")),
        purchase(900.0, "STAFF", None),
    ] {
        let event = Event {
            record: &record,
            ce: CeAttributes {
                id: "x",
                event_type: "commerce.purchase",
                source: "/gateway",
                time_millis: 0,
            },
        };
        let mut from_set = Vec::new();
        set.for_each_match(&event, |i| from_set.push(*i));
        let single: Vec<usize> = conditions
            .iter()
            .enumerate()
            .filter(|(_, c)| compile_condition(c, &schema()).unwrap().matches(&event))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(from_set, single);
        assert_eq!(set.count_matches(&event), single.len());
    }
}
