//! Rule evaluation against one decoded purchase event: one condition, the seed's two-condition
//! rule, and rule sets of 1, 10 and 100 rules (each rule a different threshold and segment mix).
//! Run: `cargo bench -p substrate-rules`.

use apache_avro::Schema;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use serde_json::json;
use substrate_rules::{compile_condition, parse_condition, CeAttributes, Event, RuleSet};

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
}

criterion_group!(benches, bench);
criterion_main!(benches);
