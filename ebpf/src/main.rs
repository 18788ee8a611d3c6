//! NetworkPolicy enforcement on pods' host-side veths.
//!
//! A node loads this object once and attaches the same two programs to every
//! pod's veth: `handle_ingress` on the veth's egress hook (traffic towards the
//! pod), `handle_egress` on its ingress hook (traffic from the pod). Each
//! packet finds its pod's state by the veth's ifindex (see `maps`).
#![no_std]
#![no_main]

mod judge;
mod maps;
mod packet;

use aya_ebpf::{macros::classifier, programs::TcContext};
use na_common::direction;

#[classifier]
pub fn handle_ingress(ctx: TcContext) -> i32 {
    judge::judge(&ctx, direction::INGRESS)
}

#[classifier]
pub fn handle_egress(ctx: TcContext) -> i32 {
    judge::judge(&ctx, direction::EGRESS)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
