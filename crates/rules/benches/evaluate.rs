//! Rule evaluation against one decoded purchase event: one condition, the seed's two-condition
//! rule, and rule sets of 1, 10 and 100 rules (each rule a different threshold and segment mix).
//! Then a wider set: 100 rules that together read 20 distinct fields of one `order` record
//! (schema defined here: nested and optional records, optional fields, enums, mixed types),
//! more than the 16 a rule set preloads, evaluated both by counting and by reporting each match.
//! Run: `cargo bench -p substrate-rules`.

use std::collections::BTreeSet;

use apache_avro::Schema;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use serde_json::json;
use substrate_rules::{
    compile_condition, parse_condition, CeAttributes, Event, Expr, Matcher, RuleSet,
};

fn setup() -> (Schema, apache_avro::types::Value) {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../avro/public/commerce/purchase.events.avsc"
    ))
    .unwrap();
    let schema = Schema::parse_str(&text).unwrap();
    let event = json!({
        "event_id": "0b6b1d2e-8a39-4a4e-9e55-7d4b8f1b2c3d",
        "event_time": 1_764_064_800_000i64,
        "user": {"id": "6f0e4e5c-1d2b-4c3a-9f8e-7d6c5b4a3928", "email": "vip@example.com", "segment": "VIP", "country": "NL"},
        "purchase": {"id": "ord-1042", "amount": 750.0, "currency": "EUR", "items": 3, "tags": ["gift"], "coupon": null}
    });
    let record = substrate_avro::json_to_avro(&schema, &event).unwrap();
    (schema, record)
}

fn rules(schema: &Schema, n: usize) -> RuleSet<usize> {
    let segments = ["VIP", "REGULAR", "STAFF"];
    let mut set = RuleSet::new();
    for i in 0..n {
        let text = format!(
            "purchase.amount > {} AND user.segment == '{}'",
            100 + (i * 37) % 900,
            segments[i % 3]
        );
        set.add(i, &parse_condition(&json!(text)).unwrap(), schema)
            .unwrap();
    }
    set
}

/// An order with 23 leaf fields over three nested records (`shipping` optional as a whole).
const ORDER_SCHEMA: &str = r#"{
  "type": "record", "name": "Order", "namespace": "substrate.bench",
  "fields": [
    {"name": "order_id", "type": "string"},
    {"name": "placed_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "total", "type": "double"},
    {"name": "items", "type": "int"},
    {"name": "priority", "type": "boolean"},
    {"name": "channel", "type": {"type": "enum", "name": "Channel", "symbols": ["WEB", "APP", "STORE", "PHONE"]}},
    {"name": "coupon", "type": ["null", "string"], "default": null},
    {"name": "discount", "type": ["null", "double"], "default": null},
    {"name": "tags", "type": {"type": "array", "items": "string"}, "default": []},
    {"name": "customer", "type": {
      "type": "record", "name": "Customer", "fields": [
        {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "segment", "type": {"type": "enum", "name": "Segment", "symbols": ["REGULAR", "VIP", "STAFF"]}},
        {"name": "country", "type": "string"},
        {"name": "age", "type": "int"},
        {"name": "lifetime_value", "type": "double"},
        {"name": "verified", "type": "boolean"},
        {"name": "email", "type": ["null", "string"], "default": null}
      ]}},
    {"name": "shipping", "type": ["null", {
      "type": "record", "name": "Shipping", "fields": [
        {"name": "method", "type": "string"},
        {"name": "cost", "type": "double"},
        {"name": "express", "type": "boolean"},
        {"name": "weight_grams", "type": "long"}
      ]}], "default": null},
    {"name": "payment", "type": {
      "type": "record", "name": "Payment", "fields": [
        {"name": "method", "type": {"type": "enum", "name": "PaymentMethod", "symbols": ["CARD", "PAYPAL", "INVOICE", "CRYPTO"]}},
        {"name": "risk_score", "type": "double"},
        {"name": "installments", "type": ["null", "int"], "default": null}
      ]}}
  ]
}"#;

fn order_setup() -> (Schema, apache_avro::types::Value) {
    let schema = Schema::parse_str(ORDER_SCHEMA).unwrap();
    let order = json!({
        "order_id": "ord-20417",
        "placed_at": 1_764_064_800_000i64,
        "total": 249.9,
        "items": 3,
        "priority": true,
        "channel": "APP",
        "coupon": "SPRING25",
        "discount": 12.5,
        "tags": ["gift", "first-order"],
        "customer": {
            "id": "6f0e4e5c-1d2b-4c3a-9f8e-7d6c5b4a3928",
            "segment": "VIP",
            "country": "NL",
            "age": 41,
            "lifetime_value": 3200.0,
            "verified": true,
            "email": "vip@example.com"
        },
        "shipping": {"method": "express", "cost": 7.95, "express": true, "weight_grams": 1800},
        "payment": {"method": "CARD", "risk_score": 0.27, "installments": 3}
    });
    let record = substrate_avro::json_to_avro(&schema, &order).unwrap();
    (schema, record)
}

/// One comparison on field `field` (0..20) of the order, its value varied by `v`. The 20
/// fields read are every leaf field but `order_id`, `tags` and `customer.id`.
fn order_leaf(field: usize, v: usize) -> String {
    match field {
        0 => format!("total > {}", 50 + (v * 37) % 400),
        1 => format!("items >= {}", 1 + v % 6),
        2 => format!("priority == {}", v.is_multiple_of(2)),
        3 => format!(
            "channel in [{}]",
            ["'WEB', 'APP'", "'STORE'", "'APP', 'PHONE'", "'WEB'"][v % 4]
        ),
        4 => ["coupon exists", "coupon prefix 'SPRING'", "coupon == null"][v % 3].to_string(),
        5 => format!("discount between 0 and {}", 5 + v % 20),
        6 => format!("placed_at >= '2025-{:02}-01T00:00:00Z'", 1 + v % 12),
        7 => format!(
            "customer.segment == '{}'",
            ["VIP", "REGULAR", "STAFF"][v % 3]
        ),
        8 => format!(
            "customer.country {} ['NL', 'DE', 'BE']",
            if v.is_multiple_of(2) { "in" } else { "not in" }
        ),
        9 => format!("customer.age between 18 and {}", 25 + v % 40),
        10 => format!("customer.lifetime_value > {}", 500 + (v * 131) % 5000),
        11 => format!("customer.verified == {}", !v.is_multiple_of(3)),
        12 => [
            "customer.email suffix '@example.com'",
            "customer.email contains 'vip'",
            "customer.email exists",
        ][v % 3]
            .to_string(),
        13 => [
            "shipping.method in ['express', 'standard']",
            "shipping.method == 'pickup'",
        ][v % 2]
            .to_string(),
        14 => format!("shipping.cost < {}.5", v % 15),
        15 => format!("shipping.express == {}", v % 2 == 1),
        16 => format!("shipping.weight_grams <= {}", 500 + (v * 211) % 4000),
        17 => [
            "payment.method != 'CRYPTO'",
            "payment.method in ['CARD', 'PAYPAL']",
            "payment.method == 'INVOICE'",
        ][v % 3]
            .to_string(),
        18 => format!("payment.risk_score < 0.{}", 1 + v % 9),
        19 if v.is_multiple_of(4) => "payment.installments == null".to_string(),
        19 => format!("payment.installments > {}", v % 4),
        _ => unreachable!("20 fields"),
    }
}

/// Rule `i` reads 2, 3 or 4 fields, `(i + 7j) % 20` for `j` in `0..k` (distinct within a rule;
/// `j = 0` alone walks all 20 over the first 20 rules), joined by a mix of AND, OR and NOT.
fn order_condition(i: usize) -> String {
    let k = 2 + i % 3;
    let leaves: Vec<String> = (0..k).map(|j| order_leaf((i + 7 * j) % 20, i)).collect();
    match leaves.as_slice() {
        [a, b] if i.is_multiple_of(2) => format!("{a} AND {b}"),
        [a, b] => format!("{a} OR {b}"),
        [a, b, c] => format!("{a} AND ({b} OR {c})"),
        [a, b, c, d] => format!("({a} OR {b}) AND ({c} OR NOT ({d}))"),
        _ => unreachable!("2 to 4 leaves"),
    }
}

fn fields_read(expr: &Expr, into: &mut BTreeSet<String>) {
    match expr {
        Expr::All(items) | Expr::Any(items) => items.iter().for_each(|e| fields_read(e, into)),
        Expr::Not(inner) => fields_read(inner, into),
        Expr::Leaf(leaf) => {
            into.insert(leaf.field.clone());
        }
    }
}

/// The 100 order rules, checked to read 20 distinct record fields between them and to report
/// the same matches as the rules compiled one by one.
///
/// 20 fields take the set's slow path: `RuleSet::for_each_match` (crates/rules/src/ruleset.rs)
/// calls `Slots::preload` only when `self.paths.len() <= 16`. `paths` holds one entry per
/// distinct record path (`intern` in crates/rules/src/compile.rs; `ce.*` attributes are not
/// interned, which is why all 20 fields here are record fields), so with 20 paths nothing is
/// fetched up front and each field is looked up on its first use in an evaluation through
/// `Slots::get`, then cached for the rules after it (`Slots<64>`, a `fetched` bitmask).
fn order_rules(schema: &Schema, event: &Event<'_>) -> RuleSet<usize> {
    let mut set = RuleSet::new();
    let mut fields = BTreeSet::new();
    let mut expected = Vec::new();
    for i in 0..100 {
        let expr = parse_condition(&json!(order_condition(i))).unwrap();
        fields_read(&expr, &mut fields);
        if Matcher::compile(&expr, schema).unwrap().matches(event) {
            expected.push(i);
        }
        set.add(i, &expr, schema).unwrap();
    }
    assert_eq!(fields.len(), 20, "distinct fields read: {fields:?}");
    assert!(fields.len() > 16, "must be past the preload limit of 16");
    let mut matched = Vec::new();
    set.for_each_match(event, |i| matched.push(*i));
    assert_eq!(matched, expected);
    assert!(
        !matched.is_empty() && matched.len() < set.len(),
        "{} of {} rules match: pick values so that some do and some do not",
        matched.len(),
        set.len()
    );
    set
}

fn bench(c: &mut Criterion) {
    let (schema, record) = setup();
    let event = Event {
        record: &record,
        ce: CeAttributes {
            id: "x",
            event_type: "commerce.purchase",
            source: "/gateway",
            time_millis: 0,
        },
    };
    let one = compile_condition(&json!("purchase.amount > 500"), &schema).unwrap();
    c.bench_function("one condition (purchase.amount > 500)", |b| {
        b.iter(|| std::hint::black_box(&one).matches(std::hint::black_box(&event)))
    });
    let seed = compile_condition(
        &json!("purchase.amount > 500 AND user.segment == 'VIP'"),
        &schema,
    )
    .unwrap();
    c.bench_function("seed rule (2 conditions)", |b| {
        b.iter(|| std::hint::black_box(&seed).matches(std::hint::black_box(&event)))
    });
    let mut group = c.benchmark_group("rule set");
    for n in [1usize, 10, 100] {
        let set = rules(&schema, n);
        group.bench_with_input(BenchmarkId::from_parameter(n), &set, |b, set| {
            b.iter(|| set.count_matches(std::hint::black_box(&event)))
        });
    }
    group.finish();

    let (order_schema, order_record) = order_setup();
    let order_event = Event {
        record: &order_record,
        ce: CeAttributes {
            id: "x",
            event_type: "commerce.order",
            source: "/gateway",
            time_millis: 0,
        },
    };
    let set = order_rules(&order_schema, &order_event);
    let mut group = c.benchmark_group("rule set 20 fields");
    group.bench_with_input(BenchmarkId::new("count_matches", 100), &set, |b, set| {
        b.iter(|| set.count_matches(std::hint::black_box(&order_event)))
    });
    let mut matched = Vec::with_capacity(set.len());
    group.bench_with_input(BenchmarkId::new("for_each_match", 100), &set, |b, set| {
        b.iter(|| {
            matched.clear();
            set.for_each_match(std::hint::black_box(&order_event), |i| matched.push(*i));
            std::hint::black_box(matched.len())
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
