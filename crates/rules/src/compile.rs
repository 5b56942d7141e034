//! Compilation and evaluation. `Matcher::compile` checks every leaf against the field's type
//! (so a rule that cannot work is refused when it is saved) and turns values into the field's
//! representation ahead of time; `Matcher::matches` then walks a decoded record by field
//! position without allocating.

use std::cmp::Ordering;

use apache_avro::types::Value;
use apache_avro::Schema;
use serde_json::Value as Json;
use uuid::Uuid;

use crate::ast::{Expr, Leaf, Op};
use crate::schema::{resolve, CeAttribute, FieldInfo, FieldType, Location};
use crate::RuleError;

/// CloudEvents attributes of the record being evaluated.
#[derive(Debug, Clone, Copy, Default)]
pub struct CeAttributes<'a> {
    pub id: &'a str,
    pub event_type: &'a str,
    pub source: &'a str,
    pub time_millis: i64,
}

/// A decoded record plus its CloudEvents attributes.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    pub record: &'a Value,
    pub ce: CeAttributes<'a>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Num {
    I(i64),
    F(f64),
}

impl Num {
    fn cmp(self, other: Num) -> Option<Ordering> {
        match (self, other) {
            (Num::I(a), Num::I(b)) => Some(a.cmp(&b)),
            (a, b) => a.as_f64().partial_cmp(&b.as_f64()),
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            Num::I(i) => i as f64,
            Num::F(f) => f,
        }
    }
}

#[derive(Debug)]
pub(crate) enum Check {
    Exists,
    IsNull,
    EqStr(Box<str>),
    EqUuid(Uuid),
    EqNum(Num),
    EqBool(bool),
    InStr(Box<[Box<str>]>),
    InUuid(Box<[Uuid]>),
    InNum(Box<[Num]>),
    Cmp(Op, Num),
    /// Ordering on a float field against a float bound (the common case, kept branch-light).
    CmpF(Op, f64),
    /// Enum symbol by position (the schema's symbol index).
    EqEnum(u32),
    InEnum(Box<[u32]>),
    Between(Num, Num),
    Prefix(Box<str>),
    Suffix(Box<str>),
    Contains(Box<str>),
    ArrayHasStr(Box<str>),
    ArrayHasNum(Num),
}

#[derive(Debug)]
pub(crate) enum Access {
    Record(Path),
    /// A record path interned by a [`crate::RuleSet`], read once per event.
    Slot(u16),
    Ce(CeAttribute),
}

/// Field positions (and names, for debug checks) from the root record down.
pub(crate) type Path = Box<[(usize, Box<str>)]>;

#[derive(Debug)]
pub(crate) enum Node {
    All(Box<[Node]>),
    Any(Box<[Node]>),
    Not(Box<Node>),
    Test {
        access: Access,
        check: Check,
        negate: bool,
    },
}

/// A compiled condition, bound to the schema it was compiled against: evaluate it only on
/// records decoded with that (writer) schema, since fields are read by position. The
/// rule-evaluator keeps one matcher per rule and writer schema id.
#[derive(Debug)]
pub struct Matcher {
    root: Node,
}

impl Matcher {
    /// Validates `expr` against the record `schema` and compiles it.
    pub fn compile(expr: &Expr, schema: &Schema) -> Result<Self, RuleError> {
        Ok(Self {
            root: compile_node(expr, schema)?,
        })
    }

    /// True when the event satisfies the condition. Does not allocate.
    #[inline]
    pub fn matches(&self, event: &Event<'_>) -> bool {
        // A single test (the common rule shape) without the recursive walk.
        if let Node::Test {
            access: Access::Record(path),
            check,
            negate,
        } = &self.root
        {
            return test_value(lookup(event.record, path), check) != *negate;
        }
        eval(&self.root, event, &mut Slots::<0>::new(&[]))
    }
}

pub(crate) fn compile_node(expr: &Expr, schema: &Schema) -> Result<Node, RuleError> {
    Ok(match expr {
        Expr::All(items) => Node::All(
            items
                .iter()
                .map(|e| compile_node(e, schema))
                .collect::<Result<_, _>>()?,
        ),
        Expr::Any(items) => Node::Any(
            items
                .iter()
                .map(|e| compile_node(e, schema))
                .collect::<Result<_, _>>()?,
        ),
        Expr::Not(inner) => Node::Not(Box::new(compile_node(inner, schema)?)),
        Expr::Leaf(leaf) => compile_leaf(leaf, schema)?,
    })
}

fn compile_leaf(leaf: &Leaf, schema: &Schema) -> Result<Node, RuleError> {
    let info = resolve(schema, &leaf.field)?;
    let access = match &info.location {
        Location::Record(path) => {
            Access::Record(path.iter().map(|(i, n)| (*i, n.as_str().into())).collect())
        }
        Location::Ce(attr) => Access::Ce(*attr),
    };
    let field = leaf.field.as_str();
    let value = leaf.value.as_ref();
    let (check, negate) = match leaf.op {
        Op::Exists => (Check::Exists, false),
        Op::Eq | Op::Ne => (
            equality(field, &info, value.expect("parsed with a value"))?,
            leaf.op == Op::Ne,
        ),
        Op::In | Op::NotIn => (
            membership(field, &info, value.expect("parsed with a value"))?,
            leaf.op == Op::NotIn,
        ),
        Op::Gt | Op::Ge | Op::Lt | Op::Le => {
            let bound = ordered(field, &info, value.expect("parsed with a value"))?;
            let check = match info.ty {
                FieldType::Float => Check::CmpF(leaf.op, bound.as_f64()),
                _ => Check::Cmp(leaf.op, bound),
            };
            (check, false)
        }
        Op::Between => {
            let pair = value
                .and_then(Json::as_array)
                .filter(|a| a.len() == 2)
                .ok_or_else(|| RuleError::typed(field, "`between` takes [low, high]"))?;
            let (low, high) = (
                ordered(field, &info, &pair[0])?,
                ordered(field, &info, &pair[1])?,
            );
            if low.cmp(high) == Some(Ordering::Greater) {
                return Err(RuleError::typed(
                    field,
                    "`between`: low is greater than high",
                ));
            }
            (Check::Between(low, high), false)
        }
        Op::Prefix | Op::Suffix => {
            if !is_text(&info.ty) {
                return Err(mismatch(field, leaf.op, &info.ty, "text"));
            }
            let text = string_value(field, leaf.op, value)?;
            (
                if leaf.op == Op::Prefix {
                    Check::Prefix(text)
                } else {
                    Check::Suffix(text)
                },
                false,
            )
        }
        Op::Contains => match &info.ty {
            ty if is_text(ty) => (Check::Contains(string_value(field, leaf.op, value)?), false),
            FieldType::Array(inner) if is_text(inner) => (
                Check::ArrayHasStr(string_value(field, leaf.op, value)?),
                false,
            ),
            FieldType::Array(inner) if matches!(**inner, FieldType::Int | FieldType::Float) => {
                let n = value.and_then(number).ok_or_else(|| {
                    RuleError::typed(field, "`contains` on an array of numbers takes a number")
                })?;
                (Check::ArrayHasNum(n), false)
            }
            other => {
                return Err(mismatch(
                    field,
                    leaf.op,
                    other,
                    "text or an array of strings or numbers",
                ))
            }
        },
    };
    Ok(Node::Test {
        access,
        check,
        negate,
    })
}

fn is_text(ty: &FieldType) -> bool {
    matches!(ty, FieldType::String | FieldType::Uuid | FieldType::Enum(_))
}

fn mismatch(field: &str, op: Op, ty: &FieldType, wanted: &str) -> RuleError {
    RuleError::typed(
        field,
        format!(
            "`{}` needs {wanted}, but the field is {}",
            op.as_str(),
            ty.describe()
        ),
    )
}

fn string_value(field: &str, op: Op, value: Option<&Json>) -> Result<Box<str>, RuleError> {
    value
        .and_then(Json::as_str)
        .map(Into::into)
        .ok_or_else(|| RuleError::typed(field, format!("`{}` takes a string", op.as_str())))
}

fn number(value: &Json) -> Option<Num> {
    value
        .as_i64()
        .map(Num::I)
        .or_else(|| value.as_f64().map(Num::F))
}

/// A value for `==`/`!=`/`in` in the field's representation.
fn equality(field: &str, info: &FieldInfo, value: &Json) -> Result<Check, RuleError> {
    if value.is_null() {
        return if info.nullable {
            Ok(Check::IsNull)
        } else {
            Err(RuleError::typed(
                field,
                "is never null; compare with a value or use `exists`",
            ))
        };
    }
    let wrong = |expected: &str| {
        RuleError::typed(
            field,
            format!(
                "is {}, so it cannot be compared with {value} (expected {expected})",
                info.ty.describe()
            ),
        )
    };
    Ok(match &info.ty {
        FieldType::Int | FieldType::Float => {
            Check::EqNum(number(value).ok_or_else(|| wrong("a number"))?)
        }
        FieldType::Timestamp { .. } => Check::EqNum(ordered(field, info, value)?),
        FieldType::String => Check::EqStr(value.as_str().ok_or_else(|| wrong("a string"))?.into()),
        FieldType::Uuid => {
            let text = value.as_str().ok_or_else(|| wrong("a UUID string"))?;
            Check::EqUuid(Uuid::parse_str(text).map_err(|_| wrong("a UUID string"))?)
        }
        FieldType::Enum(symbols) => {
            let text = value.as_str().ok_or_else(|| wrong("a string"))?;
            let index = symbols.iter().position(|s| s == text).ok_or_else(|| {
                RuleError::typed(
                    field,
                    format!("`{text}` is not one of {}", symbols.join(", ")),
                )
            })?;
            Check::EqEnum(index as u32)
        }
        FieldType::Bool => Check::EqBool(value.as_bool().ok_or_else(|| wrong("true or false"))?),
        other => {
            return Err(RuleError::typed(
                field,
                format!("is {}; only `exists` applies", other.describe()),
            ))
        }
    })
}

fn membership(field: &str, info: &FieldInfo, value: &Json) -> Result<Check, RuleError> {
    let items = value
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| RuleError::typed(field, "`in` takes a non-empty list"))?;
    let checks = items
        .iter()
        .map(|v| equality(field, info, v))
        .collect::<Result<Vec<_>, _>>()?;
    let mut strings = Vec::new();
    let mut uuids = Vec::new();
    let mut numbers = Vec::new();
    let mut symbols = Vec::new();
    for check in checks {
        match check {
            Check::EqEnum(i) => symbols.push(i),
            Check::EqStr(s) => strings.push(s),
            Check::EqUuid(u) => uuids.push(u),
            Check::EqNum(n) => numbers.push(n),
            _ => {
                return Err(RuleError::typed(
                    field,
                    "`in` takes strings, UUIDs or numbers",
                ))
            }
        }
    }
    Ok(if !symbols.is_empty() {
        Check::InEnum(symbols.into())
    } else if !numbers.is_empty() {
        Check::InNum(numbers.into())
    } else if !uuids.is_empty() {
        Check::InUuid(uuids.into())
    } else {
        Check::InStr(strings.into())
    })
}

/// A bound for ordering operators: numbers, or RFC 3339 times for timestamps.
fn ordered(field: &str, info: &FieldInfo, value: &Json) -> Result<Num, RuleError> {
    match &info.ty {
        FieldType::Int | FieldType::Float => number(value).ok_or_else(|| {
            RuleError::typed(
                field,
                format!(
                    "is {}, so it cannot be compared with {value}",
                    info.ty.describe()
                ),
            )
        }),
        FieldType::Timestamp { micros } => {
            if let Some(n) = number(value) {
                return Ok(n);
            }
            let time = value
                .as_str()
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                .ok_or_else(|| {
                    RuleError::typed(
                        field,
                        "is a timestamp: compare with epoch milliseconds or an RFC 3339 time",
                    )
                })?;
            Ok(Num::I(if *micros {
                time.timestamp_micros()
            } else {
                time.timestamp_millis()
            }))
        }
        other => Err(RuleError::typed(
            field,
            format!(
                "is {}; ordering needs a number or a timestamp",
                other.describe()
            ),
        )),
    }
}

/// Values of interned paths, fetched on first use during one evaluation.
/// `N` values are cached (at most 64); further slots are looked up each time.
pub(crate) struct Slots<'a, 'p, const N: usize> {
    paths: &'p [Path],
    values: [Option<&'a Value>; N],
    fetched: u64,
}

impl<'a, 'p, const N: usize> Slots<'a, 'p, N> {
    pub(crate) fn new(paths: &'p [Path]) -> Self {
        Self {
            paths,
            values: [None; N],
            fetched: 0,
        }
    }

    /// Fetches every path up front when they all fit the cache (few distinct fields, as in
    /// most rule sets): evaluation then only indexes.
    #[inline]
    pub(crate) fn preload(&mut self, record: &'a Value) {
        if self.paths.len() <= N.min(64) {
            for (slot, path) in self.paths.iter().enumerate() {
                self.values[slot] = lookup(record, path);
            }
            self.fetched = u64::MAX;
        }
    }

    #[inline(always)]
    pub(crate) fn get(&mut self, slot: u16, record: &'a Value) -> Option<&'a Value> {
        let slot = usize::from(slot);
        if slot >= N.min(64) {
            return lookup(record, &self.paths[slot]);
        }
        let bit = 1u64 << slot;
        if self.fetched & bit == 0 {
            self.values[slot] = lookup(record, &self.paths[slot]);
            self.fetched |= bit;
        }
        self.values[slot]
    }
}

#[inline]
pub(crate) fn eval<'a, const N: usize>(
    node: &Node,
    event: &Event<'a>,
    slots: &mut Slots<'a, '_, N>,
) -> bool {
    match node {
        // Children that are tests (the usual shape) are evaluated here, without recursing.
        Node::All(items) => items.iter().all(|n| eval_child(n, event, slots)),
        Node::Any(items) => items.iter().any(|n| eval_child(n, event, slots)),
        Node::Not(inner) => !eval(inner, event, slots),
        Node::Test {
            access,
            check,
            negate,
        } => test(access, check, *negate, event, slots),
    }
}

#[inline(always)]
fn eval_child<'a, const N: usize>(
    node: &Node,
    event: &Event<'a>,
    slots: &mut Slots<'a, '_, N>,
) -> bool {
    match node {
        Node::Test {
            access,
            check,
            negate,
        } => test(access, check, *negate, event, slots),
        other => eval(other, event, slots),
    }
}

#[inline(always)]
fn test<'a, const N: usize>(
    access: &Access,
    check: &Check,
    negate: bool,
    event: &Event<'a>,
    slots: &mut Slots<'a, '_, N>,
) -> bool {
    let result = match access {
        Access::Record(path) => test_value(lookup(event.record, path), check),
        Access::Slot(slot) => test_value(slots.get(*slot, event.record), check),
        Access::Ce(attr) => test_ce(*attr, &event.ce, check),
    };
    result != negate
}

/// Replaces record paths by slots of `paths`, adding the ones not seen yet.
pub(crate) fn intern(node: &mut Node, paths: &mut Vec<Path>) {
    match node {
        Node::All(items) | Node::Any(items) => items.iter_mut().for_each(|n| intern(n, paths)),
        Node::Not(inner) => intern(inner, paths),
        Node::Test { access, .. } => {
            if let Access::Record(path) = access {
                let slot = match paths.iter().position(|p| p == path) {
                    Some(i) => i,
                    None => {
                        paths.push(path.clone());
                        paths.len() - 1
                    }
                };
                *access = Access::Slot(u16::try_from(slot).unwrap_or(u16::MAX));
            }
        }
    }
}

#[inline(always)]
fn unwrap_union(value: &Value) -> &Value {
    match value {
        Value::Union(_, inner) => inner,
        other => other,
    }
}

/// The value at `path`; `None` when a record along the way is missing or null. Positions are
/// those of the schema the matcher was compiled against (see [`Matcher`]).
#[inline(always)]
fn lookup<'a>(record: &'a Value, path: &[(usize, Box<str>)]) -> Option<&'a Value> {
    let mut current = record;
    for (index, _name) in path {
        let Value::Record(fields) = unwrap_union(current) else {
            return None;
        };
        let (_field, value) = fields.get(*index)?;
        debug_assert_eq!(
            _field.as_str(),
            &**_name,
            "record decoded with another schema"
        );
        current = value;
    }
    match unwrap_union(current) {
        Value::Null => None,
        other => Some(other),
    }
}

#[inline(always)]
fn num_of(value: &Value) -> Option<Num> {
    Some(match value {
        Value::Int(i) | Value::Date(i) | Value::TimeMillis(i) => Num::I(i64::from(*i)),
        Value::Long(i)
        | Value::TimestampMillis(i)
        | Value::TimestampMicros(i)
        | Value::LocalTimestampMillis(i)
        | Value::LocalTimestampMicros(i)
        | Value::TimeMicros(i) => Num::I(*i),
        Value::Float(f) => Num::F(f64::from(*f)),
        Value::Double(f) => Num::F(*f),
        _ => return None,
    })
}

/// Text of a string-like value; UUIDs are formatted into `buffer` (no allocation).
fn text_of<'a>(value: &'a Value, buffer: &'a mut [u8; 36]) -> Option<&'a str> {
    match value {
        Value::String(s) | Value::Enum(_, s) => Some(s),
        Value::Uuid(u) => Some(u.hyphenated().encode_lower(buffer)),
        _ => None,
    }
}

#[inline(always)]
fn test_value(value: Option<&Value>, check: &Check) -> bool {
    let Some(value) = value else {
        return matches!(check, Check::IsNull);
    };
    match check {
        Check::Exists => true,
        Check::IsNull => false,
        Check::EqStr(s) => {
            let mut buffer = [0u8; 36];
            text_of(value, &mut buffer) == Some(s)
        }
        Check::EqUuid(u) => {
            matches!(value, Value::Uuid(v) if v == u)
                || matches!(value, Value::String(s) if Uuid::parse_str(s).ok() == Some(*u))
        }
        Check::EqNum(n) => num_of(value).and_then(|v| v.cmp(*n)) == Some(Ordering::Equal),
        Check::EqBool(b) => matches!(value, Value::Boolean(v) if v == b),
        Check::EqEnum(i) => matches!(value, Value::Enum(v, _) if v == i),
        Check::InEnum(set) => matches!(value, Value::Enum(v, _) if set.contains(v)),
        Check::CmpF(op, bound) => {
            let v = match value {
                Value::Double(d) => *d,
                Value::Float(f) => f64::from(*f),
                _ => return false,
            };
            match op {
                Op::Gt => v > *bound,
                Op::Ge => v >= *bound,
                Op::Lt => v < *bound,
                Op::Le => v <= *bound,
                _ => false,
            }
        }
        Check::InStr(set) => {
            let mut buffer = [0u8; 36];
            text_of(value, &mut buffer).is_some_and(|t| set.iter().any(|s| &**s == t))
        }
        Check::InUuid(set) => matches!(value, Value::Uuid(v) if set.contains(v)),
        Check::InNum(set) => {
            num_of(value).is_some_and(|v| set.iter().any(|n| v.cmp(*n) == Some(Ordering::Equal)))
        }
        Check::Cmp(op, bound) => num_of(value)
            .and_then(|v| v.cmp(*bound))
            .is_some_and(|o| compare(*op, o)),
        Check::Between(low, high) => num_of(value).is_some_and(|v| {
            matches!(v.cmp(*low), Some(Ordering::Greater | Ordering::Equal))
                && matches!(v.cmp(*high), Some(Ordering::Less | Ordering::Equal))
        }),
        Check::Prefix(p) => {
            let mut buffer = [0u8; 36];
            text_of(value, &mut buffer).is_some_and(|t| t.starts_with(&**p))
        }
        Check::Suffix(p) => {
            let mut buffer = [0u8; 36];
            text_of(value, &mut buffer).is_some_and(|t| t.ends_with(&**p))
        }
        Check::Contains(p) => {
            let mut buffer = [0u8; 36];
            text_of(value, &mut buffer).is_some_and(|t| t.contains(&**p))
        }
        Check::ArrayHasStr(s) => matches!(value, Value::Array(items) if items.iter().any(|i| {
            let mut b = [0u8; 36];
            text_of(unwrap_union(i), &mut b) == Some(s)
        })),
        Check::ArrayHasNum(n) => matches!(value, Value::Array(items) if items.iter().any(|i| {
            num_of(unwrap_union(i)).and_then(|v| v.cmp(*n)) == Some(Ordering::Equal)
        })),
    }
}

fn compare(op: Op, ordering: Ordering) -> bool {
    match op {
        Op::Gt => ordering == Ordering::Greater,
        Op::Ge => ordering != Ordering::Less,
        Op::Lt => ordering == Ordering::Less,
        Op::Le => ordering != Ordering::Greater,
        _ => false,
    }
}

fn test_ce(attr: CeAttribute, ce: &CeAttributes<'_>, check: &Check) -> bool {
    let text = match attr {
        CeAttribute::Id => ce.id,
        CeAttribute::Type => ce.event_type,
        CeAttribute::Source => ce.source,
        CeAttribute::Time => {
            let value = Value::TimestampMillis(ce.time_millis);
            return test_value(Some(&value), check);
        }
    };
    let value = StrValue(text);
    value.test(check)
}

/// A borrowed string tested like a record string field, without building a `Value`.
struct StrValue<'a>(&'a str);

impl StrValue<'_> {
    fn test(&self, check: &Check) -> bool {
        let t = self.0;
        match check {
            Check::Exists => true,
            Check::IsNull => false,
            Check::EqStr(s) => t == &**s,
            Check::InStr(set) => set.iter().any(|s| &**s == t),
            Check::Prefix(p) => t.starts_with(&**p),
            Check::Suffix(p) => t.ends_with(&**p),
            Check::Contains(p) => t.contains(&**p),
            _ => false,
        }
    }
}
