//! The cheapest TC programs there are, never deployed: benchmarks attach
//! them where ours would go. `pass` passes every packet: what invocation
//! alone costs (the floor of any per-packet figure). `pass_after_lookup`
//! first looks the packet's device up in a hash map, as ours look up the
//! pod: what one map lookup adds to the floor.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, TC_ACT_OK},
    macros::{classifier, map},
    maps::HashMap,
    programs::TcContext,
};

#[classifier]
pub fn pass(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

/// Devices by ifindex (the benchmark inserts the veths it attaches to).
#[map(name = "devices")]
static DEVICES: HashMap<u32, u32> = HashMap::with_max_entries(1024, BPF_F_NO_PREALLOC);

#[classifier]
pub fn pass_after_lookup(ctx: TcContext) -> i32 {
    // SAFETY: the context's own field; the value found is not read. A
    // helper call stays in the program whatever is done with its result.
    let _ = unsafe { DEVICES.get((*ctx.skb.skb).ifindex) };
    TC_ACT_OK
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
