//! W3C trace context across process boundaries: the `traceparent` every record and outbound
//! request carries, and the bridge between it and the current OpenTelemetry span. When tracing is
//! off (no OTLP endpoint, see `telemetry`) no span has a context: callers then hand on a child of
//! the incoming `traceparent`, as before spans existed. Exporting spans is not this module's job.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C Trace Context header (HTTP) and record header (Kafka).
pub const TRACEPARENT: &str = "traceparent";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether this process records spans (set once by `telemetry::init`).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

pub(crate) fn set_enabled() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// W3C Trace Context `traceparent`: `00-<trace id>-<parent id>-<flags>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub parent_id: u64,
    pub sampled: bool,
}

impl TraceParent {
    /// A new root trace.
    pub fn new_root() -> Self {
        Self {
            trace_id: rand::random::<u128>().max(1),
            parent_id: rand::random::<u64>().max(1),
            sampled: true,
        }
    }

    /// A child span in the same trace (a new parent id).
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id,
            parent_id: rand::random::<u64>().max(1),
            sampled: self.sampled,
        }
    }

    /// Parses a header value; invalid values (wrong length, all-zero ids, version ff) are `None`.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let parent = parts.next()?;
        let flags = parts.next()?;
        if version.len() != 2 || version == "ff" || trace.len() != 32 || parent.len() != 16 {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let parent_id = u64::from_str_radix(parent, 16).ok()?;
        let flags = u8::from_str_radix(flags.get(..2)?, 16).ok()?;
        if trace_id == 0 || parent_id == 0 || trace.chars().any(|c| c.is_ascii_uppercase()) {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The current span's context, when this process records spans and the span has one.
    pub fn current() -> Option<Self> {
        if !enabled() {
            return None;
        }
        Self::of(&tracing::Span::current())
    }

    /// `span`'s context, when this process records spans and the span has one.
    pub fn of(span: &tracing::Span) -> Option<Self> {
        if !enabled() || span.is_disabled() {
            return None;
        }
        let context = span.context();
        let span = context.span();
        let span_context = span.span_context();
        span_context.is_valid().then(|| Self {
            trace_id: u128::from_be_bytes(span_context.trace_id().to_bytes()),
            parent_id: u64::from_be_bytes(span_context.span_id().to_bytes()),
            sampled: span_context.is_sampled(),
        })
    }

    /// What to hand on from here: the current span (so the next hop is its child) when spans
    /// are recorded, else a child of `incoming`, else a new root.
    pub fn outgoing(incoming: Option<Self>) -> Self {
        Self::current()
            .or_else(|| incoming.map(|t| t.child()))
            .unwrap_or_else(Self::new_root)
    }

    /// This context as a remote OpenTelemetry span context.
    pub fn span_context(&self) -> SpanContext {
        SpanContext::new(
            TraceId::from(self.trace_id),
            SpanId::from(self.parent_id),
            if self.sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            },
            true,
            TraceState::default(),
        )
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.parent_id,
            u8::from(self.sampled)
        )
    }
}

/// Makes `span` a child of the remote `parent` (the caller's or the record's context). Without
/// a parent the span starts a new trace; nothing happens when spans are not recorded.
pub fn set_parent(span: &tracing::Span, parent: Option<TraceParent>) {
    if !enabled() {
        return;
    }
    if let Some(parent) = parent {
        let context = opentelemetry::Context::new().with_remote_span_context(parent.span_context());
        // Fails only for a span that already started or is disabled: nothing to attach then.
        let _ = span.set_parent(context);
    }
}

/// A span continuing the remote `parent` (a caller's or a record's context), made by `make`:
/// disabled when spans are not recorded or `parent` was sampled out (the work below it then
/// creates no span either, and hands on a child of `parent`'s context); without a parent, a new
/// root that the sampler decides on. Every other span is exported only below a sampled span
/// (`telemetry`'s filter), so a trace sampled out costs at most one non-recording span, at its
/// root, and none at each hop below it.
pub fn continuing(
    parent: Option<TraceParent>,
    make: impl FnOnce() -> tracing::Span,
) -> tracing::Span {
    if !enabled() || parent.is_some_and(|p| !p.sampled) {
        return tracing::Span::none();
    }
    let outer = MAY_START.replace(true);
    let span = make();
    MAY_START.set(outer);
    set_parent(&span, parent);
    span
}

thread_local! {
    /// Set while [`continuing`] makes its span: the only spans that may start or continue a
    /// trace without a current (sampled) span above them.
    static MAY_START: Cell<bool> = const { Cell::new(false) };
}

/// Whether a span made now may be exported without a sampled span above it (see `telemetry`).
pub(crate) fn may_start() -> bool {
    MAY_START.get()
}

/// A span for work done once for a batch (one INSERT, one object written), made by `make`: a
/// child of the first sampled member's context, linked to the other sampled members' (at most
/// [`MAX_BATCH_LINKS`]), so each sampled member's trace either holds the batch's span or is
/// linked from it. Disabled when no member is sampled.
pub fn batch(members: &[TraceParent], make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    let mut sampled = members.iter().filter(|m| m.sampled);
    let Some(first) = sampled.next() else {
        return tracing::Span::none();
    };
    let span = continuing(Some(*first), make);
    for other in sampled.take(MAX_BATCH_LINKS) {
        add_link(&span, *other);
    }
    span
}

/// Links from a batch's span to its members' contexts, at most.
pub const MAX_BATCH_LINKS: usize = 128;

/// Links `span` to `other` — a retry to the attempt that scheduled it, a dead letter to the
/// attempt that gave up.
pub fn add_link(span: &tracing::Span, other: TraceParent) {
    if enabled() {
        span.add_link(other.span_context());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_invalid() {
        let tp = TraceParent::new_root();
        let text = tp.to_string();
        assert_eq!(text.len(), 55);
        assert_eq!(TraceParent::parse(&text), Some(tp));
        let known = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(known).unwrap();
        assert_eq!(parsed.to_string(), known);
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
        let child = parsed.child();
        assert_eq!(child.trace_id, parsed.trace_id);
        assert_ne!(child.parent_id, parsed.parent_id);
    }

    #[test]
    fn span_context_keeps_the_ids_and_the_sampled_flag() {
        let tp =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        let sc = tp.span_context();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(!sc.is_sampled());
        assert!(sc.is_remote());
    }

    #[test]
    fn without_tracing_outgoing_is_a_child_of_the_incoming_context() {
        let incoming = TraceParent::new_root();
        let out = TraceParent::outgoing(Some(incoming));
        assert_eq!(out.trace_id, incoming.trace_id);
        assert_ne!(out.parent_id, incoming.parent_id);
        assert_ne!(TraceParent::outgoing(None).trace_id, incoming.trace_id);
    }
}
