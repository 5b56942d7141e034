//! The dispatcher's delivery logic: Standard Webhooks signatures, message templates filled from
//! event fields, and how a delivery outcome maps to success, retry (with which delay) or a
//! permanent failure. The consuming service is built on these (see docs/architecture.md,
//! roadmap step 2).

pub mod outcome;
pub mod signing;
pub mod template;
