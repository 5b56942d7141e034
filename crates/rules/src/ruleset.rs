//! Many rules over one event stream, compiled together: each field path that several rules read
//! is fetched once per event, and evaluation hands back every matching rule without allocating.

use apache_avro::Schema;

use crate::ast::Expr;
use crate::compile::{compile_node, eval, intern, Event, Node, Path, Slots};
use crate::RuleError;

/// Rules bound to one (writer) schema, like [`crate::Matcher`].
pub struct RuleSet<T> {
    rules: Vec<(T, Node)>,
    paths: Vec<Path>,
}

impl<T> Default for RuleSet<T> {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            paths: Vec::new(),
        }
    }
}

impl<T> RuleSet<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Validates and adds a rule; `item` is what evaluation reports (a rule id, a rule…).
    pub fn add(&mut self, item: T, condition: &Expr, schema: &Schema) -> Result<(), RuleError> {
        let mut node = compile_node(condition, schema)?;
        intern(&mut node, &mut self.paths);
        self.rules.push((item, node));
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Calls `on_match` for every rule the event satisfies, in the order they were added.
    pub fn for_each_match(&self, event: &Event<'_>, mut on_match: impl FnMut(&T)) {
        let mut slots = Slots::<64>::new(&self.paths);
        if self.paths.len() <= 16 {
            slots.preload(event.record);
        }
        for (item, node) in &self.rules {
            if eval(node, event, &mut slots) {
                on_match(item);
            }
        }
    }

    /// Number of rules the event satisfies.
    pub fn count_matches(&self, event: &Event<'_>) -> usize {
        let mut n = 0;
        self.for_each_match(event, |_| n += 1);
        n
    }
}
