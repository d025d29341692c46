//! What a feature decides about a packet, below every feature: `main.rs`
//! turns it into a TC action, the one place a drop's reason is counted.

use netlab_common::nat::{Addr, CtEntryOf, FlowKeyOf, Stat};

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

/// What to do with a packet once NAT has looked at it, for a packet of
/// either family ([`Verdict`], [`Verdict6`]).
///
/// A struct, not an enum with payloads: LLVM moves an enum whole, and on
/// paths where a variant's payload is undefined it copied whatever register
/// was at hand (one a call had clobbered), which the verifier refuses
/// (`!read_ok`). Here every field is defined on every path.
#[derive(Clone, Copy)]
pub struct VerdictOf<A> {
    pub action: Action,
    /// The redirect's ifindex.
    pub arg: u32,
    /// Why it is dropped (for `Drop`; a value LLVM cannot prove a valid
    /// index would need a bounds check the verifier sees).
    pub reason: Stat,
    /// The rewrite, for `Rewritten` and `Reflected`.
    pub rewrite: RewriteOf<A>,
}

/// An IPv4 packet's verdict.
pub type Verdict = VerdictOf<u32>;
/// An IPv6 packet's verdict.
pub type Verdict6 = VerdictOf<[u32; 4]>;

impl<A: Addr> VerdictOf<A> {
    pub const PASS: VerdictOf<A> = VerdictOf {
        action: Action::Pass,
        arg: 0,
        // Read only for `Drop`.
        reason: Stat::WriteFailed,
        rewrite: RewriteOf::ZERO,
    };

    #[inline(always)]
    pub fn drop(reason: Stat) -> VerdictOf<A> {
        VerdictOf {
            action: Action::Drop,
            reason,
            ..VerdictOf::PASS
        }
    }

    #[inline(always)]
    pub fn rewritten(rewrite: RewriteOf<A>) -> VerdictOf<A> {
        VerdictOf {
            action: Action::Rewritten,
            rewrite,
            ..VerdictOf::PASS
        }
    }

    #[inline(always)]
    pub fn reflected(rewrite: RewriteOf<A>) -> VerdictOf<A> {
        VerdictOf {
            action: Action::Reflected,
            rewrite,
            ..VerdictOf::PASS
        }
    }

    #[inline(always)]
    pub fn peer(ifindex: u32) -> VerdictOf<A> {
        VerdictOf {
            action: Action::RedirectPeer,
            arg: ifindex,
            ..VerdictOf::PASS
        }
    }

    #[inline(always)]
    pub fn neigh(ifindex: u32) -> VerdictOf<A> {
        VerdictOf {
            action: Action::RedirectNeigh,
            arg: ifindex,
            ..VerdictOf::PASS
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
    pub fn rewrite(&self) -> Option<RewriteOf<A>> {
        matches!(self.action, Action::Rewritten | Action::Reflected).then_some(self.rewrite)
    }
}

/// How packets of one direction of a flow leave: the tuple a conntrack
/// entry rewrites them to, and what kind of translation that is.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RewriteOf<A> {
    pub saddr: A,
    pub daddr: A,
    pub sport: u16,
    pub dport: u16,
    /// `NAT_*` bits.
    pub nat: u8,
    /// Nonzero when the packet being rewritten opened its flow (not kept
    /// in conntrack: a fact about this packet).
    pub opened: u8,
    pub _pad: u16,
}

/// An IPv4 flow's rewrite.
pub type Rewrite = RewriteOf<u32>;
/// An IPv6 flow's rewrite.
pub type Rewrite6 = RewriteOf<[u32; 4]>;

impl<A: Addr> RewriteOf<A> {
    pub const ZERO: RewriteOf<A> = RewriteOf {
        saddr: A::ZERO,
        daddr: A::ZERO,
        sport: 0,
        dport: 0,
        nat: 0,
        opened: 0,
        _pad: 0,
    };

    /// A packet of `key` left as it is.
    #[inline(always)]
    pub fn identity(key: &FlowKeyOf<A>) -> RewriteOf<A> {
        RewriteOf {
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
    pub fn of(entry: &CtEntryOf<A>) -> RewriteOf<A> {
        RewriteOf {
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
    pub fn reply_key(&self, proto: u8) -> FlowKeyOf<A> {
        FlowKeyOf::new(self.daddr, self.saddr, self.dport, self.sport, proto)
    }
}
