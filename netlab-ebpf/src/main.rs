//! netlab's kernel side: thin program entry points over datapath modules
//! split by concern (as Cilium's `bpf/lib`). Each entry point maps the
//! module's outcome to a TC verdict and nothing else.

#![no_std]
#![no_main]

mod counters;

use aya_ebpf::{bindings::TC_ACT_UNSPEC, macros::classifier, programs::TcContext};
use netlab_common::Direction;

/// TCX_NEXT: let the next program on the hook (or the stack) decide.
const TCX_NEXT: i32 = TC_ACT_UNSPEC;

#[classifier]
pub fn count_ingress(ctx: TcContext) -> i32 {
    counters::count(&ctx, Direction::Ingress);
    TCX_NEXT
}

#[classifier]
pub fn count_egress(ctx: TcContext) -> i32 {
    counters::count(&ctx, Direction::Egress);
    TCX_NEXT
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
