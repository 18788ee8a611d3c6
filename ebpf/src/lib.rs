// Empty library so the agent's build script can depend on this crate; the
// programs are the `na-ebpf` binary target built by aya-build.
#![no_std]
