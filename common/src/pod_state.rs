//! `pod_state_map`: an array indexed by [`crate::direction`] saying how the pod
//! is isolated in that direction and which rule set is live.

/// The pod is isolated but its policies are not known yet (strict mode, or a
/// map that was never written): only the trie's host entries admit traffic.
/// Zero, so an unwritten entry fails closed.
pub const DEFAULT_DENY: u8 = 0;
/// No policy isolates the pod in this direction: everything passes.
pub const DEFAULT_ALLOW: u8 = 1;
/// Policies isolate the pod: the trie decides, a miss is denied.
pub const POLICIES_APPLIED: u8 = 2;

/// Bit of [`PodState::state`] holding the active rule set; the bits below it
/// hold the mode.
const SET_BIT: u8 = 0x10;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodState {
    /// Mode and active rule set in one byte: a map update may copy the value
    /// byte by byte, and a packet must never see the new mode with the old
    /// set or the reverse.
    pub state: u8,
    pub _pad: [u8; 3],
    /// Bumped by the agent on every write; conntrack entries admitted under an
    /// older generation are judged again.
    pub generation: u32,
}

impl PodState {
    pub const fn new(mode: u8, active_set: u8, generation: u32) -> Self {
        Self { state: mode | if active_set != 0 { SET_BIT } else { 0 }, _pad: [0; 3], generation }
    }

    /// One of [`DEFAULT_DENY`], [`DEFAULT_ALLOW`], [`POLICIES_APPLIED`].
    #[inline(always)]
    pub const fn mode(&self) -> u8 {
        self.state & (SET_BIT - 1)
    }

    /// Which rule set of the trie (0 or 1) the program looks up.
    #[inline(always)]
    pub const fn active_set(&self) -> u8 {
        (self.state & SET_BIT != 0) as u8
    }
}
