//! The rule language, pure and without I/O: conditions in a JSON form (also Zenith's
//! `{"field","operator","value"}`) and a text form (`purchase.amount > 500 AND user.segment ==
//! 'VIP'`), validated against a topic's Avro schema when a rule is saved, and compiled to a
//! matcher that evaluates a decoded record without allocating; and the split of actions into
//! what may be stored and sent, and the secrets that are sealed.

pub mod actions;
pub mod ast;
pub mod compile;
pub mod names;
pub mod ruleset;
pub mod schema;
pub mod split;
pub mod text;

pub use actions::{parse_actions, Action};
pub use ast::{Expr, Leaf, Op};
pub use compile::{CeAttributes, Event, Matcher};
pub use ruleset::RuleSet;
pub use schema::FieldType;
pub use split::{split_actions, ActionSecret, JoinError, PublicAction};

/// Why a rule cannot be saved. Messages name the field, operator or column at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("syntax error at column {column}: {message}")]
    Syntax { column: usize, message: String },
    #[error("malformed condition: {0}")]
    Malformed(String),
    #[error("unknown field `{0}`")]
    UnknownField(String),
    #[error("field `{field}`: {message}")]
    Type { field: String, message: String },
}

impl RuleError {
    pub(crate) fn typed(field: &str, message: impl Into<String>) -> Self {
        Self::Type {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// Parses a condition in either form: JSON (object) or text (string).
pub fn parse_condition(value: &serde_json::Value) -> Result<Expr, RuleError> {
    match value {
        serde_json::Value::String(text) => text::parse(text),
        other => Expr::from_json(other),
    }
}

/// Parses, validates against `schema` and compiles in one step (what saving a rule does).
pub fn compile_condition(
    value: &serde_json::Value,
    schema: &apache_avro::Schema,
) -> Result<Matcher, RuleError> {
    let expr = parse_condition(value)?;
    Matcher::compile(&expr, schema)
}
