//! Shared between the imds-monitor kernel programs (`no_std`, BPF target) and
//! the daemon: the streaming request parser and the layouts of map keys,
//! map values and ring-buffer records.
#![cfg_attr(not(test), no_std)]

/// Assigns fields with stores LLVM may not merge. It turns runs of small
/// stores into a `memset` call, and on eBPF that call is a loop writing one
/// byte per iteration, several times slower than the stores themselves.
macro_rules! set_fields {
    ($target:expr, { $($field:ident: $value:expr),* $(,)? }) => {
        $(
            // SAFETY: a place expression of the matching type, written in place.
            unsafe { core::ptr::write_volatile(&raw mut $target.$field, $value) };
        )*
    };
}

pub mod class;
pub mod config;
pub mod event;
pub mod flow;
pub mod http;
pub mod response;

/// The request parser as it was before `feed_run` and the name trie: one
/// byte at a time. The parser's own tests compare it with [`http`]; the
/// differential test of the kernel classifier (imds-sandbox) uses it as a
/// second opinion. Test-only: behind the `reference` feature (and left out
/// of the crate's own test build, whose parser tests hold their own copy).
#[cfg(all(feature = "reference", not(test)))]
#[allow(clippy::new_without_default)]
#[path = "http/tests/reference.rs"]
pub mod reference;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are `repr(C)`, `Copy`, made only of integers and byte
    // arrays with explicit padding fields, so every bit pattern is valid.
    unsafe impl aya::Pod for crate::config::Endpoints {}
    unsafe impl aya::Pod for crate::config::ExemptBits {}
    unsafe impl aya::Pod for crate::event::RequestEvent {}
    unsafe impl aya::Pod for crate::event::Owner {}
    unsafe impl aya::Pod for crate::flow::SeqKey {}
    unsafe impl aya::Pod for crate::flow::FlowKey {}
    unsafe impl aya::Pod for crate::flow::FlowState {}
}
