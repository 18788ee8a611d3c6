//! NetworkPolicy enforcement on pods' host-side veths.
//!
//! A node loads this object once and attaches the same two programs to every
//! pod's veth: `handle_ingress` on the veth's egress hook (traffic towards the
//! pod), `handle_egress` on its ingress hook (traffic from the pod). Each
//! packet finds its pod's state by the veth's ifindex (see `maps`). A third
//! program, `judge_dnat`, sits at the node's PREROUTING netfilter hook and
//! judges pods' new flows to Service addresses after DNAT.
#![no_std]
#![no_main]

mod after_dnat;
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

/// A netfilter program (`BPF_PROG_TYPE_NETFILTER`): aya knows none, so it
/// sits in a classifier section and the agent loads it with its real type.
#[unsafe(no_mangle)]
#[unsafe(link_section = "classifier/netfilter")]
pub fn judge_dnat(ctx: *mut core::ffi::c_void) -> i32 {
    after_dnat::judge(ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
