//! NetworkPolicy enforcement on a pod's host-side veth.
//!
//! Each pod gets its own instance of this object: `handle_ingress` sits on the
//! veth's egress hook (traffic towards the pod), `handle_egress` on its ingress
//! hook (traffic from the pod). Both share the pod's maps.
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
