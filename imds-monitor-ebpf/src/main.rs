//! imds-monitor kernel programs.
//!
//! `imds_classify` is a TC classifier on the host's interfaces toward IMDS. It
//! keeps per-connection state for TCP flows to the configured endpoints, feeds
//! their payload through the shared streaming parser and emits one
//! `RequestEvent` per request head into a ring buffer, naming the process that
//! opened the connection (`attribution`). `process` reports exec, fork and
//! exit for the daemon's process cache.
#![no_std]
#![no_main]

mod attribution;
mod copy;
mod debug;
mod enforce;
mod exempt;
mod flow;
mod maps;
mod packet;
mod process;
mod responses;
mod scan;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::classifier,
    programs::TcContext,
};

/// Watched endpoints, written by the loader before the program is loaded.
#[unsafe(no_mangle)]
static ENDPOINTS: imds_monitor_common::config::Endpoints =
    imds_monitor_common::config::Endpoints::empty();

/// Sees every packet leaving the interface; acts only on TCP to IMDS endpoints.
#[classifier]
pub fn imds_classify(ctx: TcContext) -> i32 {
    match packet::imds_packet(&ctx) {
        // UNSPEC lets the next program (TCX) or the default action (clsact) decide.
        packet::Packet::Other => TC_ACT_UNSPEC,
        packet::Packet::Unreadable(key) => match flow::on_unreadable(&ctx, &key) {
            flow::Fate::Pass => TC_ACT_UNSPEC,
            _ => TC_ACT_SHOT as i32,
        },
        packet::Packet::Segment(segment) => match flow::on_segment(&ctx, &segment) {
            flow::Fate::Pass => TC_ACT_UNSPEC,
            flow::Fate::Drop => TC_ACT_SHOT as i32,
            flow::Fate::Reset => enforce::reset_client(&ctx, &segment),
        },
    }
}

/// Sees every packet arriving on the interface; reads the status line of
/// responses from IMDS endpoints to connections the classifier follows.
#[classifier]
pub fn imds_responses(ctx: TcContext) -> i32 {
    if let Some(segment) = packet::imds_response_segment(&ctx) {
        responses::on_segment(&ctx, &segment);
    }
    TC_ACT_UNSPEC
}

/// Does nothing: the benchmark attaches it beside `imds_classify` to measure
/// what the classifier costs over an empty program.
#[classifier]
pub fn imds_passthrough(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
