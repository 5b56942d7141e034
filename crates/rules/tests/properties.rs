//! Property tests of the rule language: arbitrary text and JSON never panic the parsers or the
//! compiler, every refusal carries a message (syntax errors a column inside the text), and
//! well-formed text conditions read back identically through their JSON form.

use apache_avro::types::Value;
use apache_avro::Schema;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::Config as ProptestConfig;
use serde_json::{json, Value as Json};
use substrate_rules::{
    compile_condition, parse_actions, parse_condition, text, CeAttributes, Event, Expr, Matcher,
    RuleError,
};

/// Cases per property: enough to reach the odd corners, small enough for a 2-core machine.
/// Failures print the shrunk input; nothing is written next to the sources.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn schema() -> &'static Schema {
    static SCHEMA: std::sync::OnceLock<Schema> = std::sync::OnceLock::new();
    SCHEMA.get_or_init(|| {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../avro/public/commerce/purchase.events.avsc"
        ))
        .unwrap();
        Schema::parse_str(&text).unwrap()
    })
}

/// A purchase record for evaluating what compiled.
fn record() -> &'static Value {
    static RECORD: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    RECORD.get_or_init(|| {
        let event = json!({
            "event_id": "0b6b1d2e-8a39-4a4e-9e55-7d4b8f1b2c3d",
            "event_time": 1_764_064_800_000i64,
            "user": {"id": "6f0e4e5c-1d2b-4c3a-9f8e-7d6c5b4a3928", "email": "vip@example.com", "segment": "VIP", "country": null},
            "purchase": {"id": "ord-1042", "amount": 750.5, "currency": "EUR", "items": 3, "tags": ["gift"], "coupon": "XMAS25"}
        });
        substrate_avro::json_to_avro(schema(), &event).unwrap()
    })
}

/// Field paths of the purchase schema, CloudEvents attributes and a few that do not exist.
const FIELDS: &[&str] = &[
    "event_id",
    "event_time",
    "user",
    "user.id",
    "user.email",
    "user.segment",
    "user.country",
    "purchase",
    "purchase.id",
    "purchase.amount",
    "purchase.currency",
    "purchase.items",
    "purchase.tags",
    "purchase.coupon",
    "ce.id",
    "ce.type",
    "ce.source",
    "ce.time",
    "ce.flavour",
    "purchase.total",
    "purchase..amount",
    "user.segment.x",
];

/// Operators written with symbols, and every word the parsers know (with bad ones).
const SYMBOLS: &[&str] = &["==", "!=", ">", ">=", "<", "<=", "=", "<>", "!", ">>"];
const WORDS: &[&str] = &[
    "AND",
    "and",
    "Or",
    "OR",
    "NOT",
    "not",
    "in",
    "IN",
    "not_in",
    "nin",
    "prefix",
    "starts_with",
    "suffix",
    "ends_with",
    "contains",
    "exists",
    "between",
    "eq",
    "gte",
    "true",
    "FALSE",
    "null",
];

/// A number as a rule writer might type it, including malformed ones.
fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| format!("{n:e}")),
        select(vec![
            "0", "-0", "1e", "1e+", "1.2.3", "1__0", "1_000", "-1", "1e999", "-1e999"
        ])
        .prop_map(String::from),
        Just("9".repeat(400)),
        "[0-9_.eE-]{1,12}",
    ]
}

/// A quoted string, sometimes with escapes, sometimes unterminated.
fn quoted_text() -> impl Strategy<Value = String> {
    (
        any::<String>(),
        select(vec!['\'', '"']),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(s, quote, escape, terminate)| {
            let mut out = String::from(quote);
            for c in s.chars() {
                if escape && (c == quote || c == '\\') {
                    out.push('\\');
                }
                out.push(c);
            }
            if terminate {
                out.push(quote);
            }
            out
        })
}

/// One token of the text form, or a stray character.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(FIELDS).prop_map(String::from),
        3 => select(SYMBOLS).prop_map(String::from),
        3 => select(WORDS).prop_map(String::from),
        2 => select(vec!["(", ")", "[", "]", ","]).prop_map(String::from),
        2 => number_text(),
        2 => quoted_text(),
        1 => any::<char>().prop_map(String::from),
        1 => Just("\u{0}".to_string()),
        1 => "[a-zA-Z_$][a-zA-Z0-9_.$-]{0,8}",
    ]
}

/// Token soup: mostly what the language is made of, in any order.
fn token_text() -> impl Strategy<Value = String> {
    prop::collection::vec((token(), select(vec!["", " ", "  ", "\t", "\n"])), 0..24).prop_map(
        |parts| {
            parts
                .into_iter()
                .flat_map(|(t, sep)| [t, sep.to_string()])
                .collect()
        },
    )
}

/// Any text: arbitrary strings, printable ones, and token soup.
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "\\PC{0,64}",
        token_text(),
        token_text(),
        condition(),
        mutated_condition(),
        mutated_condition(),
    ]
}

/// A well-formed condition with one edit: cut short, a character dropped, or a token inserted.
fn mutated_condition() -> impl Strategy<Value = String> {
    (condition(), any::<prop::sample::Index>(), token(), 0..3u8).prop_map(
        |(text, at, token, edit)| {
            let chars: Vec<char> = text.chars().collect();
            let i = at.index(chars.len() + 1);
            let (head, tail) = chars.split_at(i);
            let head: String = head.iter().collect();
            match edit {
                0 => head,
                1 => format!("{head}{}", tail.iter().skip(1).collect::<String>()),
                _ => format!("{head} {token} {}", tail.iter().collect::<String>()),
            }
        },
    )
}

/// A scalar of the text form and the JSON value it stands for.
fn scalar() -> impl Strategy<Value = (String, Json)> {
    prop_oneof![
        any::<i64>().prop_map(|n| (n.to_string(), json!(n))),
        any::<f64>()
            .prop_filter("finite", |n| n.is_finite())
            .prop_map(|n| {
                let text = n.to_string();
                let value: Json = serde_json::from_str(&text).unwrap();
                (text, value)
            }),
        (any::<String>(), select(vec!['\'', '"'])).prop_map(|(s, quote)| {
            let mut text = String::from(quote);
            for c in s.chars() {
                if c == quote || c == '\\' {
                    text.push('\\');
                }
                text.push(c);
            }
            text.push(quote);
            (text, Json::String(s))
        }),
        select(vec!["true", "TRUE", "false", "False", "null", "NULL"]).prop_map(|w| {
            let value: Json = serde_json::from_str(&w.to_ascii_lowercase()).unwrap();
            (w.to_string(), value)
        }),
    ]
}

/// One comparison of the text form, always well formed.
fn comparison() -> impl Strategy<Value = String> {
    let field = select(FIELDS);
    prop_oneof![
        (
            field.clone(),
            select(vec![
                "==",
                "!=",
                ">",
                ">=",
                "<",
                "<=",
                "=",
                "<>",
                "prefix",
                "SUFFIX",
                "contains",
                "starts_with",
                "ends_with"
            ]),
            scalar()
        )
            .prop_map(|(f, op, (v, _))| format!("{f} {op} {v}")),
        (
            field.clone(),
            select(vec!["in", "NOT IN", "not_in", "nin"]),
            prop::collection::vec(scalar(), 1..4)
        )
            .prop_map(|(f, op, items)| {
                let items: Vec<String> = items.into_iter().map(|(t, _)| t).collect();
                format!("{f} {op} [{}]", items.join(", "))
            }),
        (field.clone(), scalar(), scalar())
            .prop_map(|(f, (low, _), (high, _))| format!("{f} between {low} and {high}")),
        field.prop_map(|f| format!("{f} exists")),
    ]
}

/// Well-formed conditions: comparisons under NOT, parentheses, AND and OR.
fn condition() -> impl Strategy<Value = String> {
    comparison().prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(|c| format!("({c})")),
            inner.clone().prop_map(|c| format!("NOT {c}")),
            (inner.clone(), select(vec!["AND", "and", "OR", "or"]), inner)
                .prop_map(|(a, op, b)| format!("{a} {op} {b}")),
        ]
    })
}

/// Arbitrary JSON, with numbers of every kind and strings of every sort.
fn json_value() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        any::<i64>().prop_map(Json::from),
        any::<u64>().prop_map(Json::from),
        any::<f64>().prop_map(Json::from),
        any::<String>().prop_map(Json::String),
        select(FIELDS).prop_map(Json::from),
        select(SYMBOLS).prop_map(Json::from),
        select(WORDS).prop_map(Json::from),
        Just(Json::from("\u{0}")),
        condition().prop_map(Json::String),
    ];
    let key = prop_oneof![
        any::<String>(),
        select(vec![
            "all", "any", "not", "field", "op", "operator", "value", "type", "url"
        ])
        .prop_map(String::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Json::Object(m.into_iter().collect())),
        ]
    })
}

/// Objects shaped like JSON conditions: the right keys with arbitrary or plausible values.
fn json_condition() -> impl Strategy<Value = Json> {
    let leaf = (
        prop::option::weighted(
            0.9,
            prop_oneof![
                4 => select(FIELDS).prop_map(Json::from),
                1 => json_value(),
            ],
        ),
        select(vec!["op", "operator"]),
        prop::option::weighted(
            0.9,
            prop_oneof![
                2 => select(SYMBOLS).prop_map(Json::from),
                2 => select(WORDS).prop_map(Json::from),
                1 => json_value(),
            ],
        ),
        prop::option::weighted(
            0.8,
            prop_oneof![
                3 => scalar().prop_map(|(_, v)| v),
                1 => prop::collection::vec(scalar().prop_map(|(_, v)| v), 0..3)
                    .prop_map(Json::Array),
                1 => json_value(),
            ],
        ),
    )
        .prop_map(|(field, op_key, op, value)| {
            let mut object = serde_json::Map::new();
            if let Some(field) = field {
                object.insert("field".into(), field);
            }
            if let Some(op) = op {
                object.insert(op_key.into(), op);
            }
            if let Some(value) = value {
                object.insert("value".into(), value);
            }
            Json::Object(object)
        });
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            4 => (
                select(vec!["all", "any"]),
                prop::collection::vec(inner.clone(), 0..4)
            )
                .prop_map(|(k, items)| json!({ k: items })),
            2 => inner.clone().prop_map(|c| json!({ "not": c })),
            1 => (inner, json_value()).prop_map(|(c, extra)| json!({ "not": c, "extra": extra })),
        ]
    })
}

/// Every error names something: its message (or the field) is not empty and it displays; a
/// syntax error's column lies within the text or just past its end.
fn assert_clear(err: &RuleError, input: &str) {
    let shown = err.to_string();
    assert!(!shown.is_empty(), "{input:?}: empty error");
    match err {
        RuleError::Syntax { column, message } => {
            assert!(!message.is_empty(), "{input:?}: empty syntax message");
            let end = input.chars().count() + 1;
            assert!(
                (1..=end).contains(column),
                "{input:?}: column {column} outside 1..={end} ({message})"
            );
        }
        RuleError::Malformed(message) => assert!(!message.is_empty(), "{input:?}: {shown}"),
        RuleError::UnknownField(field) => assert!(!field.is_empty(), "{input:?}: {shown}"),
        RuleError::Type { field, message } => {
            assert!(
                !field.is_empty() && !message.is_empty(),
                "{input:?}: {shown}"
            )
        }
    }
}

/// Compiles a parsed condition against the purchase schema and evaluates what compiles.
fn compile_and_evaluate(expr: &Expr, input: &str) {
    match Matcher::compile(expr, schema()) {
        Ok(matcher) => {
            let event = Event {
                record: record(),
                ce: CeAttributes {
                    id: "x",
                    event_type: "commerce.purchase",
                    source: "/gateway",
                    time_millis: 1_764_064_800_000,
                },
            };
            let _ = matcher.matches(&event);
        }
        Err(e) => assert_clear(&e, input),
    }
}

proptest! {
    #![proptest_config(config())]

    /// Arbitrary text never panics the parser; errors are clear and point inside the text.
    #[test]
    fn text_never_panics_and_errors_point_inside(input in any_text()) {
        match text::parse(&input) {
            Ok(expr) => compile_and_evaluate(&expr, &input),
            Err(e) => {
                prop_assert!(matches!(e, RuleError::Syntax { .. }), "{input:?}: {e}");
                assert_clear(&e, &input);
            }
        }
        // The entry point for both forms reads a JSON string as text, with the same answer.
        prop_assert_eq!(parse_condition(&Json::String(input.clone())), text::parse(&input));
    }

    /// Well-formed text parses, reads back identically from its JSON form, and compiles or is
    /// refused with a clear message.
    #[test]
    fn well_formed_text_parses_and_round_trips_through_json(input in condition()) {
        let expr = text::parse(&input).map_err(|e| TestCaseError::fail(format!("{input}: {e}")))?;
        let json = expr.to_json();
        prop_assert_eq!(Expr::from_json(&json), Ok(expr.clone()), "{} -> {}", input, json);
        prop_assert_eq!(parse_condition(&json), Ok(expr.clone()));
        compile_and_evaluate(&expr, &input);
        if let Err(e) = compile_condition(&Json::String(input.clone()), schema()) {
            assert_clear(&e, &input);
        }
    }

    /// Arbitrary JSON, and JSON shaped like conditions, never panics the JSON form; what parses
    /// survives compilation and evaluation, and its canonical form reads back the same.
    #[test]
    fn json_never_panics_and_errors_are_clear(
        value in prop_oneof![
            json_value(),
            json_condition(),
            json_condition(),
            condition().prop_map(|t| text::parse(&t).map(|e| e.to_json()).unwrap_or_default()),
        ],
    ) {
        let input = value.to_string();
        match parse_condition(&value) {
            Ok(expr) => {
                prop_assert_eq!(Expr::from_json(&expr.to_json()), Ok(expr.clone()));
                compile_and_evaluate(&expr, &input);
            }
            Err(e) => assert_clear(&e, &input),
        }
    }

    /// Deep nesting (parentheses or NOT) parses up to the limit and is refused past it with a
    /// clear error, never a stack overflow.
    #[test]
    fn deep_nesting_is_refused_not_a_crash(
        depth in prop_oneof![0..=text::MAX_DEPTH + 2, 0usize..20_000],
        not in any::<bool>(),
        close in any::<bool>(),
    ) {
        let input = if not {
            format!("{}a exists", "NOT ".repeat(depth))
        } else {
            format!(
                "{}a exists{}",
                "(".repeat(depth),
                if close { ")".repeat(depth) } else { String::new() }
            )
        };
        match text::parse(&input) {
            Ok(expr) => {
                prop_assert!(depth <= text::MAX_DEPTH, "{depth} levels parsed");
                compile_and_evaluate(&expr, &input);
                prop_assert_eq!(Expr::from_json(&expr.to_json()), Ok(expr));
            }
            Err(e) => {
                assert_clear(&e, &input);
                prop_assert!(depth > text::MAX_DEPTH || !(not || close || depth == 0), "{e}");
            }
        }
    }

    /// The actions of a rule: arbitrary JSON, and actions of every type with arbitrary settings,
    /// never panic and errors are clear.
    #[test]
    fn actions_never_panic(value in prop_oneof![
        json_value(),
        prop::collection::vec(json_value(), 1..4).prop_map(Json::Array),
        prop::collection::vec(action(), 1..3).prop_map(Json::Array),
    ]) {
        if let Err(e) = parse_actions(&value, schema()) {
            assert_clear(&e, &value.to_string());
        }
    }
}

/// An action object of a known (or unknown) type with arbitrary or plausible settings.
fn action() -> impl Strategy<Value = Json> {
    let text = prop_oneof![
        1 => any::<String>(),
        3 => select(vec![
            "",
            "https://example.com/hook",
            "http://x",
            "ftp://x",
            "whsec_abc",
            "commerce.vip_purchase",
            "public.commerce.purchase.events",
        ])
        .prop_map(String::from),
    ];
    let template = prop_oneof![
        any::<String>(),
        select(FIELDS).prop_map(|f| format!("total {{{{ {f} }}}}!")),
        select(vec![
            "{{",
            "{{}}",
            "}}{{",
            "{{purchase.amount}} {{",
            "{{ce.type}}"
        ])
        .prop_map(String::from),
    ];
    (
        select(vec![
            "webhook",
            "slack",
            "discord",
            "s3",
            "kafka",
            "notification",
            "email",
        ]),
        text.clone(),
        template,
        prop::collection::vec(text, 0..3),
        prop::option::of(select(FIELDS)),
        prop::option::weighted(0.15, json_value()),
    )
        .prop_map(|(kind, text, template, secrets, field, extra)| {
            let mut action = match kind {
                "webhook" => json!({"url": text, "secrets": secrets}),
                "slack" | "discord" => json!({"webhook_url": text, "template": template}),
                "s3" => json!({"bucket": text}),
                "kafka" => json!({"topic": text}),
                "notification" => json!({"event_type": text, "recipient_field": field}),
                _ => json!({}),
            };
            action["type"] = json!(kind);
            if let Some(extra) = extra {
                action["extra"] = extra;
            }
            action
        })
}
