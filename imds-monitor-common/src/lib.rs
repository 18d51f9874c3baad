//! Shared between the imds-monitor kernel programs (`no_std`, BPF target) and
//! the daemon: the streaming request parser and the layouts of map keys,
//! map values and ring-buffer records.
#![cfg_attr(not(test), no_std)]

pub mod class;
pub mod config;
pub mod event;
pub mod flow;
pub mod http;
pub mod response;

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
