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

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodState {
    /// One of [`DEFAULT_DENY`], [`DEFAULT_ALLOW`], [`POLICIES_APPLIED`].
    pub mode: u8,
    /// Which rule set of the trie (0 or 1) the program looks up.
    pub active_set: u8,
    pub _pad: [u8; 2],
    /// Bumped by the agent on every write; conntrack entries admitted under an
    /// older generation are judged again.
    pub generation: u32,
}
