//! The condition tree and its JSON form. Leaves compare one field with a value; `all`, `any` and
//! `not` combine them. Zenith's single-condition form `{"field","operator","value"}` is read as
//! a leaf.

use serde_json::{json, Map, Value};

use crate::RuleError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    In,
    NotIn,
    Prefix,
    Suffix,
    Contains,
    Exists,
    /// Inclusive numeric range: value `[low, high]`.
    Between,
}

impl Op {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text.to_ascii_lowercase().as_str() {
            "==" | "=" | "eq" => Self::Eq,
            "!=" | "<>" | "ne" => Self::Ne,
            ">" | "gt" => Self::Gt,
            ">=" | "gte" | "ge" => Self::Ge,
            "<" | "lt" => Self::Lt,
            "<=" | "lte" | "le" => Self::Le,
            "in" => Self::In,
            "not_in" | "not in" | "nin" => Self::NotIn,
            "prefix" | "starts_with" => Self::Prefix,
            "suffix" | "ends_with" => Self::Suffix,
            "contains" => Self::Contains,
            "exists" => Self::Exists,
            "between" => Self::Between,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Eq => "==",
            Self::Ne => "!=",
            Self::Gt => ">",
            Self::Ge => ">=",
            Self::Lt => "<",
            Self::Le => "<=",
            Self::In => "in",
            Self::NotIn => "not_in",
            Self::Prefix => "prefix",
            Self::Suffix => "suffix",
            Self::Contains => "contains",
            Self::Exists => "exists",
            Self::Between => "between",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Leaf {
    /// Dotted path into the record (`purchase.amount`) or a CloudEvents attribute (`ce.type`).
    pub field: String,
    pub op: Op,
    /// Absent for `exists`.
    pub value: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    All(Vec<Expr>),
    Any(Vec<Expr>),
    Not(Box<Expr>),
    Leaf(Leaf),
}

impl Expr {
    pub fn leaf(field: &str, op: Op, value: Option<Value>) -> Self {
        Self::Leaf(Leaf {
            field: field.to_string(),
            op,
            value,
        })
    }

    /// Reads the JSON form.
    pub fn from_json(value: &Value) -> Result<Self, RuleError> {
        let object = value
            .as_object()
            .ok_or_else(|| RuleError::Malformed(format!("expected an object, got {value}")))?;
        for (key, make) in [
            ("all", Self::All as fn(Vec<Expr>) -> Expr),
            ("any", Self::Any),
        ] {
            if let Some(children) = object.get(key) {
                only_key(object, key)?;
                let list = children
                    .as_array()
                    .filter(|l| !l.is_empty())
                    .ok_or_else(|| {
                        RuleError::Malformed(format!("`{key}` takes a non-empty array"))
                    })?;
                return list
                    .iter()
                    .map(Self::from_json)
                    .collect::<Result<_, _>>()
                    .map(make);
            }
        }
        if let Some(inner) = object.get("not") {
            only_key(object, "not")?;
            return Ok(Self::Not(Box::new(Self::from_json(inner)?)));
        }
        let field = object
            .get("field")
            .and_then(Value::as_str)
            .filter(|f| !f.is_empty())
            .ok_or_else(|| {
                RuleError::Malformed("a condition needs `field` (or all/any/not)".into())
            })?;
        let op_text = object
            .get("op")
            .or_else(|| object.get("operator"))
            .and_then(Value::as_str)
            .ok_or_else(|| RuleError::Malformed(format!("condition on `{field}` needs `op`")))?;
        let op = Op::parse(op_text)
            .ok_or_else(|| RuleError::Malformed(format!("unknown operator `{op_text}`")))?;
        for key in object.keys() {
            if !matches!(key.as_str(), "field" | "op" | "operator" | "value") {
                return Err(RuleError::Malformed(format!(
                    "unknown key `{key}` in condition on `{field}`"
                )));
            }
        }
        let value = object.get("value").cloned();
        match (op, &value) {
            (Op::Exists, Some(v)) if !v.is_null() && *v != Value::Bool(true) => Err(
                RuleError::Malformed(format!("`exists` on `{field}` takes no value")),
            ),
            (Op::Exists, _) => Ok(Self::leaf(field, op, None)),
            (_, None) => Err(RuleError::Malformed(format!(
                "condition on `{field}` needs `value`"
            ))),
            _ => Ok(Self::leaf(field, op, value)),
        }
    }

    /// The canonical JSON form (`op` keys, nested composites).
    pub fn to_json(&self) -> Value {
        match self {
            Self::All(children) => {
                json!({"all": children.iter().map(Self::to_json).collect::<Vec<_>>()})
            }
            Self::Any(children) => {
                json!({"any": children.iter().map(Self::to_json).collect::<Vec<_>>()})
            }
            Self::Not(inner) => json!({"not": inner.to_json()}),
            Self::Leaf(leaf) => match &leaf.value {
                Some(value) => json!({"field": leaf.field, "op": leaf.op.as_str(), "value": value}),
                None => json!({"field": leaf.field, "op": leaf.op.as_str()}),
            },
        }
    }
}

fn only_key(object: &Map<String, Value>, key: &str) -> Result<(), RuleError> {
    if object.len() == 1 {
        Ok(())
    } else {
        Err(RuleError::Malformed(format!(
            "`{key}` must be the only key of its object"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_json_and_zenith_forms() {
        let zenith = json!({"field": "purchase.amount", "operator": ">", "value": 500});
        let ours = json!({"field": "purchase.amount", "op": "gt", "value": 500});
        assert_eq!(
            Expr::from_json(&zenith).unwrap(),
            Expr::from_json(&ours).unwrap()
        );
        let nested = json!({"all": [zenith, {"not": {"field": "user.segment", "op": "==", "value": "VIP"}}]});
        let expr = Expr::from_json(&nested).unwrap();
        assert_eq!(Expr::from_json(&expr.to_json()).unwrap(), expr);
        let exists = Expr::from_json(&json!({"field": "purchase.coupon", "op": "exists"})).unwrap();
        assert_eq!(exists, Expr::leaf("purchase.coupon", Op::Exists, None));
    }

    #[test]
    fn malformed_json_is_named() {
        for (value, fragment) in [
            (json!([1]), "expected an object"),
            (json!({"all": []}), "non-empty"),
            (
                json!({"field": "a", "op": "~", "value": 1}),
                "unknown operator `~`",
            ),
            (json!({"field": "a", "op": "=="}), "needs `value`"),
            (json!({"op": "==", "value": 1}), "needs `field`"),
            (
                json!({"all": [{"field": "a", "op": "exists"}], "x": 1}),
                "only key",
            ),
            (
                json!({"field": "a", "op": "==", "value": 1, "extra": 2}),
                "unknown key `extra`",
            ),
        ] {
            let err = Expr::from_json(&value).unwrap_err().to_string();
            assert!(err.contains(fragment), "{err} should contain {fragment}");
        }
    }
}
