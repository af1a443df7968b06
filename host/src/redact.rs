//! Keeps secrets out of logs and error messages: the rules live in `simrelay_core::redact`,
//! shared with the Spin bridge.

pub use simrelay_core::redact::{Redactor, looks_secret};
