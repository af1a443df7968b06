//! Conversions between generated bindings and host-owned types: the `Conv` trait and the
//! `records!` and `variants!` macros live in `simrelay_core::convert`, shared with the Spin
//! bridge, so each interface version here lists only its fields and variants.

pub(crate) use simrelay_core::convert::Conv;
pub(crate) use simrelay_core::{records, variants};
