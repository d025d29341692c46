//! What a feature decides about a packet, below every feature: `main.rs`
//! turns it into a TC action, the one place a drop's reason is counted.

use netlab_common::nat::{CtEntry, FlowKey, Stat};

/// What to do with a packet ([`Verdict::action`]).
#[repr(u32)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Untouched: the next program or the stack decides.
    Pass,
    /// Rewritten as [`Verdict::rewrite`] says; then as `Pass`.
    Rewritten,
    /// Rewritten (a hairpin flow to oneself, `NAT_REFLECT`), then straight
    /// back out of the interface it came in on, its MACs swapped.
    Reflected,
    /// Dropped for [`Verdict::reason`].
    Drop,
    /// `redirect` datapath: into the namespace behind the host-side veth
    /// [`Verdict::arg`].
    RedirectPeer,
    /// `redirect` datapath: out of interface [`Verdict::arg`], next hop
    /// from the FIB.
    RedirectNeigh,
}

/// What to do with a packet once NAT has looked at it.
///
/// A struct, not an enum with payloads: LLVM moves an enum whole, and on
/// paths where a variant's payload is undefined it copied whatever register
/// was at hand (one a call had clobbered), which the verifier refuses
/// (`!read_ok`). Here every field is defined on every path.
#[derive(Clone, Copy)]
pub struct Verdict {
    pub action: Action,
    /// The redirect's ifindex.
    pub arg: u32,
    /// Why it is dropped (for `Drop`; a value LLVM cannot prove a valid
    /// index would need a bounds check the verifier sees).
    pub reason: Stat,
    /// The rewrite, for `Rewritten` and `Reflected`.
    pub rewrite: Rewrite,
}

impl Verdict {
    pub const PASS: Verdict = Verdict {
        action: Action::Pass,
        arg: 0,
        // Read only for `Drop`.
        reason: Stat::WriteFailed,
        rewrite: Rewrite::ZERO,
    };

    #[inline(always)]
    pub fn drop(reason: Stat) -> Verdict {
        Verdict {
            action: Action::Drop,
            reason,
            ..Verdict::PASS
        }
    }

    #[inline(always)]
    pub fn rewritten(rewrite: Rewrite) -> Verdict {
        Verdict {
            action: Action::Rewritten,
            rewrite,
            ..Verdict::PASS
        }
    }

    #[inline(always)]
    pub fn reflected(rewrite: Rewrite) -> Verdict {
        Verdict {
            action: Action::Reflected,
            rewrite,
            ..Verdict::PASS
        }
    }

    #[inline(always)]
    pub fn peer(ifindex: u32) -> Verdict {
        Verdict {
            action: Action::RedirectPeer,
            arg: ifindex,
            ..Verdict::PASS
        }
    }

    #[inline(always)]
    pub fn neigh(ifindex: u32) -> Verdict {
        Verdict {
            action: Action::RedirectNeigh,
            arg: ifindex,
            ..Verdict::PASS
        }
    }

    #[inline(always)]
    pub fn is_pass(&self) -> bool {
        self.action == Action::Pass
    }

    /// The reason, when the packet is to be dropped.
    #[inline(always)]
    pub fn dropped(&self) -> Option<Stat> {
        (self.action == Action::Drop).then_some(self.reason)
    }

    /// Whether the packet may leave with another tuple than it came with
    /// (a rewrite, or a redirect that may follow one).
    #[inline(always)]
    pub fn may_rewrite(&self) -> bool {
        !matches!(self.action, Action::Pass | Action::Drop)
    }

    /// How the packet was rewritten, if it was.
    #[inline(always)]
    pub fn rewrite(&self) -> Option<Rewrite> {
        matches!(self.action, Action::Rewritten | Action::Reflected).then_some(self.rewrite)
    }
}

/// How packets of one direction of a flow leave: the tuple a conntrack
/// entry rewrites them to, and what kind of translation that is.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Rewrite {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    /// `NAT_*` bits.
    pub nat: u8,
    /// Nonzero when the packet being rewritten opened its flow (not kept
    /// in conntrack: a fact about this packet).
    pub opened: u8,
    pub _pad: u16,
}

impl Rewrite {
    pub const ZERO: Rewrite = Rewrite {
        saddr: 0,
        daddr: 0,
        sport: 0,
        dport: 0,
        nat: 0,
        opened: 0,
        _pad: 0,
    };

    /// A packet of `key` left as it is.
    #[inline(always)]
    pub fn identity(key: &FlowKey) -> Rewrite {
        Rewrite {
            saddr: key.saddr,
            daddr: key.daddr,
            sport: key.sport,
            dport: key.dport,
            nat: 0,
            opened: 0,
            _pad: 0,
        }
    }

    #[inline(always)]
    pub fn of(entry: &CtEntry) -> Rewrite {
        Rewrite {
            saddr: entry.saddr,
            daddr: entry.daddr,
            sport: entry.sport,
            dport: entry.dport,
            nat: entry.nat,
            opened: 0,
            _pad: 0,
        }
    }

    /// The key replies to a flow leaving as this arrive with.
    #[inline(always)]
    pub fn reply_key(&self, proto: u8) -> FlowKey {
        FlowKey {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
            proto,
            _pad0: 0,
            _pad1: 0,
        }
    }
}
