//! Message templates for chat sinks: `{{purchase.amount}}` is replaced by that field of the
//! event (JSON), strings unquoted, missing fields empty. Field references are checked against
//! the schema when a rule is saved (substrate-rules).

use serde_json::Value;

/// Fills `template` from `event`.
pub fn render(template: &str, event: &Value) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let path = after[..end].trim();
        let mut current = Some(event);
        for key in path.split('.') {
            current = current.and_then(|v| v.get(key));
        }
        match current {
            Some(Value::String(s)) => out.push_str(s),
            Some(Value::Null) | None => {}
            Some(other) => out.push_str(&other.to_string()),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn fills_fields() {
        let event = json!({"user": {"email": "vip@example.com", "country": null}, "purchase": {"amount": 750.5, "items": 3}});
        assert_eq!(
            render("VIP {{user.email}} spent {{ purchase.amount }} on {{purchase.items}} items{{user.country}}", &event),
            "VIP vip@example.com spent 750.5 on 3 items"
        );
        assert_eq!(render("no fields", &event), "no fields");
        assert_eq!(render("broken {{user.email", &event), "broken {{user.email");
        assert_eq!(render("{{missing.field}}!", &event), "!");
    }
}

#[cfg(test)]
mod properties {
    //! Property tests of message templates: arbitrary templates over arbitrary JSON never
    //! panic, text without `{{` is left alone, and `{{field}}` references are replaced by the
    //! event's values (strings unquoted, missing fields empty).

    use proptest::prelude::*;
    use proptest::sample::select;
    use proptest::test_runner::Config as ProptestConfig;
    use serde_json::{json, Map};

    use super::*;

    /// Cases per property; failures print the shrunk input and write nothing beside the sources.
    fn config() -> ProptestConfig {
        ProptestConfig {
            cases: 256,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            any::<String>().prop_map(Value::String),
            "[{} .a-z]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            let key = prop_oneof![any::<String>(), "[a-c. {}]{0,3}"];
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(key, inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Templates of every sort: arbitrary text, brace soup around multi-byte characters.
    fn template() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[{} .a-cé😀]{0,40}",
            prop::collection::vec(
                select(vec![
                    "{{", "}}", "{", "}", " ", ".", "a", "b.c", "é", "😀", "\u{0}"
                ]),
                0..16,
            )
            .prop_map(|parts| parts.concat()),
        ]
    }

    /// A piece of a template: literal text (without braces) or a reference to a field.
    #[derive(Debug, Clone)]
    enum Piece {
        Text(String),
        Field {
            at: prop::sample::Index,
            padded: bool,
        },
        Missing(String),
    }

    proptest! {
        #![proptest_config(config())]

        /// Arbitrary templates over arbitrary JSON never panic, and text without `{{` (or with
        /// one never closed after it) comes back unchanged.
        #[test]
        fn render_never_panics(template in template(), event in json_value()) {
            let out = render(&template, &event);
            if !template.contains("{{") {
                prop_assert_eq!(&out, &template);
            }
            if let Some(start) = template.find("{{") {
                if !template[start + 2..].contains("}}") {
                    prop_assert_eq!(out, template);
                }
            }
        }

        /// References are replaced by the event's values: strings as they are, other values as
        /// JSON, missing fields by nothing.
        #[test]
        fn fields_are_filled(
            values in prop::collection::btree_map("[a-z_]{1,8}", json_value(), 1..6),
            pieces in prop::collection::vec(
                prop_oneof![
                    "[^{}]{0,12}".prop_map(Piece::Text),
                    (any::<prop::sample::Index>(), any::<bool>())
                        .prop_map(|(at, padded)| Piece::Field { at, padded }),
                    "[A-Z]{1,6}".prop_map(Piece::Missing),
                ],
                0..8,
            ),
        ) {
            let names: Vec<&String> = values.keys().collect();
            let fields: Map<String, Value> = values.clone().into_iter().collect();
            let event = json!({ "event": fields });
            let mut template = String::new();
            let mut expected = String::new();
            for piece in &pieces {
                match piece {
                    Piece::Text(text) => {
                        template.push_str(text);
                        expected.push_str(text);
                    }
                    Piece::Field { at, padded } => {
                        let key = names[at.index(names.len())];
                        let space = if *padded { " " } else { "" };
                        template.push_str(&format!("{{{{{space}event.{key}{space}}}}}"));
                        match &values[key] {
                            Value::String(s) => expected.push_str(s),
                            Value::Null => {}
                            other => expected.push_str(&other.to_string()),
                        }
                    }
                    Piece::Missing(name) => template.push_str(&format!("{{{{event.{name}}}}}")),
                }
            }
            prop_assert_eq!(render(&template, &event), expected, "{}", template);
        }
    }
}
