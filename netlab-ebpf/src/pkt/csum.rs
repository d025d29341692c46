//! Field rewrites with their checksum fix-ups. Each returns the reason it
//! failed, so a drop names it (as Cilium's `l4_modify_port` returns
//! `DROP_CSUM_L4` or `DROP_WRITE_ERROR`).
//!
//! The kernel helpers keep the checksums right whether or not the L4
//! checksum is offloaded (CHECKSUM_PARTIAL) and leave a UDP checksum of zero
//! alone. Checksums inside an ICMP error's payload are plain data to the
//! skb, so they are folded here instead ([`replace_embedded16`]).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use netlab_common::nat::{
    FlowKey, FlowKey6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Stat,
};

use super::{
    ctx,
    ipv4::{IPV4_CSUM_OFF, IPV4_MIN_HLEN, IPV4_TTL_OFF, L3_OFF},
    ipv6::IPV6_SADDR_OFF,
    l4::{ICMP_CSUM_OFF, ICMP_ID_OFF, TCP_CSUM_OFF, UDP_CSUM_OFF},
};

/// The helpers' field-size flags.
const FIELD_2: u64 = 2;
const FIELD_4: u64 = 4;

pub type Rewrite = Result<(), Stat>;

/// A [`Rewrite`] as a global BPF function returns it: 0 when it was done,
/// else 1 + the index of the reason it failed (see [`decode`]).
#[inline(always)]
pub fn encode(result: Rewrite) -> u32 {
    match result {
        Ok(()) => 0,
        Err(reason) => reason as u32 + 1,
    }
}

/// The [`Rewrite`] a global BPF function returned with [`encode`].
///
/// The code passes through `black_box` first: LLVM sees the function's
/// body and would drop the bounds check on the reason's index (it knows
/// the codes it can return), but the verifier takes a global function's
/// result for any value, and refuses an unchecked index.
#[inline(always)]
pub fn decode(code: u32) -> Rewrite {
    match crate::global::returned(code).checked_sub(1) {
        None => Ok(()),
        Some(index) => Err(Stat::ALL
            .get(index as usize)
            .copied()
            .unwrap_or(Stat::WriteFailed)),
    }
}

/// Where an L4 checksum sits and how the helpers must treat it.
#[derive(Clone, Copy)]
pub struct L4Csum {
    pub offset: usize,
    /// `BPF_F_*` flags for an address change (pseudo-header); a port
    /// change keeps only the zero-UDP flag.
    flags: u64,
}

impl L4Csum {
    /// The checksum of the L4 header at `l4` for `proto`; ICMP's has no
    /// pseudo-header, so addresses do not enter it (ICMPv6's has one).
    #[inline(always)]
    pub fn of(proto: u8, l4: usize) -> L4Csum {
        match proto {
            IPPROTO_ICMPV6 => L4Csum {
                offset: l4 + ICMP_CSUM_OFF,
                flags: u64::from(BPF_F_PSEUDO_HDR),
            },
            IPPROTO_TCP => L4Csum {
                offset: l4 + TCP_CSUM_OFF,
                flags: u64::from(BPF_F_PSEUDO_HDR),
            },
            IPPROTO_UDP => L4Csum {
                offset: l4 + UDP_CSUM_OFF,
                flags: u64::from(BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0),
            },
            _ => L4Csum {
                offset: l4 + ICMP_CSUM_OFF,
                flags: 0,
            },
        }
    }

    /// The checksum of the ICMP or ICMPv6 message at `l4` for a change in
    /// its payload (a quoted header's bytes): data, no pseudo-header.
    #[inline(always)]
    pub fn of_payload(l4: usize) -> L4Csum {
        L4Csum {
            offset: l4 + ICMP_CSUM_OFF,
            flags: 0,
        }
    }

    #[inline(always)]
    fn covers_addresses(self) -> bool {
        self.flags & u64::from(BPF_F_PSEUDO_HDR) != 0
    }

    #[inline(always)]
    fn port_flags(self) -> u64 {
        self.flags & u64::from(BPF_F_MARK_MANGLED_0)
    }
}

/// Replaces the IPv4 address at `offset` of the header at `l3` (no-op when
/// unchanged), fixing that header's checksum and, when given, an L4
/// checksum that covers the address through its pseudo-header.
#[inline(always)]
pub fn set_addr(
    ctx: &TcContext,
    l3: usize,
    offset: usize,
    old: u32,
    new: u32,
    l4: Option<L4Csum>,
) -> Rewrite {
    if old == new {
        return Ok(());
    }
    if let Some(csum) = l4
        && csum.covers_addresses()
    {
        ctx.l4_csum_replace(
            csum.offset,
            u64::from(old),
            u64::from(new),
            csum.flags | FIELD_4,
        )
        .map_err(|_| Stat::CsumL4Failed)?;
    }
    ctx.l3_csum_replace(l3 + IPV4_CSUM_OFF, u64::from(old), u64::from(new), FIELD_4)
        .map_err(|_| Stat::CsumL3Failed)?;
    ctx.store(l3 + offset, &new, 0)
        .map_err(|_| Stat::WriteFailed)
}

/// Replaces a 16-bit port or ICMP identifier at `offset` (no-op when
/// unchanged), fixing the L4 checksum (ports are not in the pseudo-header).
#[inline(always)]
pub fn set_port(ctx: &TcContext, offset: usize, old: u16, new: u16, csum: L4Csum) -> Rewrite {
    if old == new {
        return Ok(());
    }
    ctx.l4_csum_replace(
        csum.offset,
        u64::from(old),
        u64::from(new),
        csum.port_flags() | FIELD_2,
    )
    .map_err(|_| Stat::CsumL4Failed)?;
    ctx.store(offset, &new, 0).map_err(|_| Stat::WriteFailed)
}

/// Decrements the TTL of a routed packet, fixing the IP checksum. `Ok(false)`
/// when it would expire (the stack then answers with ICMP time exceeded).
#[inline(always)]
pub fn decrement_ttl(ctx: &TcContext, ttl: u8, proto: u8) -> Result<bool, Stat> {
    if ttl <= 1 {
        return Ok(false);
    }
    // TTL and protocol share one 16-bit word of the checksum.
    let old = u16::from_be_bytes([ttl, proto]).to_be();
    let new = u16::from_be_bytes([ttl - 1, proto]).to_be();
    ctx.l3_csum_replace(
        L3_OFF + IPV4_CSUM_OFF,
        u64::from(old),
        u64::from(new),
        FIELD_2,
    )
    .map_err(|_| Stat::CsumL3Failed)?;
    ctx.store(L3_OFF + IPV4_TTL_OFF, &(ttl - 1), 0)
        .map_err(|_| Stat::WriteFailed)?;
    Ok(true)
}

/// One's-complement update of a checksum for one 16-bit word changing from
/// `old` to `new` (RFC 1624, eqn. 3). All values as they sit in the packet.
#[inline(always)]
pub fn fold16(csum: u16, old: u16, new: u16) -> u16 {
    let sum = u32::from(!csum) + u32::from(!old) + u32::from(new);
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// [`fold16`] for a 32-bit field (an address): its two halves.
#[inline(always)]
pub fn fold32(csum: u16, old: u32, new: u32) -> u16 {
    let csum = fold16(csum, old as u16, new as u16);
    fold16(csum, (old >> 16) as u16, (new >> 16) as u16)
}

/// Stores `new` as the checksum at `offset` inside an ICMP error's payload
/// (the embedded packet's own L4 checksum), and moves the outer ICMP
/// checksum at `icmp_l4` with it.
#[inline(always)]
pub fn replace_embedded16(
    ctx: &TcContext,
    offset: usize,
    old: u16,
    new: u16,
    icmp_l4: usize,
) -> Rewrite {
    if old == new {
        return Ok(());
    }
    ctx.l4_csum_replace(
        icmp_l4 + ICMP_CSUM_OFF,
        u64::from(old),
        u64::from(new),
        FIELD_2,
    )
    .map_err(|_| Stat::CsumL4Failed)?;
    ctx.store(offset, &new, 0).map_err(|_| Stat::WriteFailed)
}

/// Reads a 16-bit field as it sits in the packet.
#[inline(always)]
pub fn read16(ctx: &TcContext, offset: usize) -> Option<u16> {
    ctx::load::<u16>(ctx, offset)
}

/// One's complement addition of two 32-bit partial sums (end-around carry).
#[inline(always)]
fn csum_add(a: u32, b: u32) -> u32 {
    let (sum, carry) = a.overflowing_add(b);
    sum.wrapping_add(u32::from(carry))
}

/// The partial sum that turns a checksum over `old` into one over `new`
/// (both 32-bit words as they sit in the packet).
#[inline(always)]
pub fn diff32(acc: u32, old: u32, new: u32) -> u32 {
    csum_add(csum_add(acc, !old), new)
}

/// [`diff32`] for a 16-bit word.
#[inline(always)]
pub fn diff16(acc: u32, old: u16, new: u16) -> u32 {
    csum_add(csum_add(acc, u32::from(!old)), u32::from(new))
}

/// The checksum at `old` once the words a partial sum `diff` describes
/// have changed ([`diff32`], [`diff16`]): RFC 1624's eqn. 3 over them all.
#[inline(always)]
pub fn apply_diff(old: u16, diff: u32) -> u16 {
    let sum = csum_add(u32::from(!old), diff);
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Moves the L4 checksum `l4` by the partial sum `diff` of changed
/// addresses (`addresses`: they enter its pseudo-header, if it has one) or
/// ports, through the kernel, which knows whether it is offloaded.
#[inline(always)]
pub fn l4_by_diff(ctx: &TcContext, l4: L4Csum, diff: u32, addresses: bool) -> Rewrite {
    let flags = if addresses {
        if !l4.covers_addresses() {
            return Ok(());
        }
        l4.flags
    } else {
        l4.port_flags()
    };
    ctx.l4_csum_replace(l4.offset, 0, u64::from(diff), flags)
        .map_err(|_| Stat::CsumL4Failed)?;
    Ok(())
}

/// A 32-bit field as the two 16-bit words it occupies in the packet.
#[inline(always)]
fn words(field: u32) -> [u16; 2] {
    let b = field.to_ne_bytes();
    [
        u16::from_ne_bytes([b[0], b[1]]),
        u16::from_ne_bytes([b[2], b[3]]),
    ]
}

/// Rewrites a packet's addresses and ports from `key` to `new` with the
/// fewest helper calls. The IP checksum is always complete, so it is
/// computed here and stored with the addresses; the L4 checksum may be
/// offloaded (CHECKSUM_PARTIAL, which a program cannot see), so the kernel
/// updates it: once for the addresses (they enter its pseudo-header), once
/// for the ports (they do not, which matters when it is offloaded). With no
/// IP options, the IP checksum, both addresses and both ports are 14
/// contiguous bytes: one store. Measured against a call per field: a DNAT
/// or SNAT took five helper calls, now three (two when the port stays).
/// For ICMP the identifier is the request's `sport` and the reply's
/// `dport` (`icmp_request`), and sits in the ICMP header.
#[inline(always)]
pub fn rewrite_tuple(
    ctx: &TcContext,
    l4: usize,
    key: &FlowKey,
    new: &FlowKey,
    icmp_request: bool,
) -> Rewrite {
    let addrs_changed = key.saddr != new.saddr || key.daddr != new.daddr;
    let csum = L4Csum::of(key.proto, l4);
    let mut ip_csum = 0;
    if addrs_changed {
        let diff = diff32(diff32(0, key.saddr, new.saddr), key.daddr, new.daddr);
        if csum.covers_addresses() {
            ctx.l4_csum_replace(csum.offset, 0, u64::from(diff), csum.flags)
                .map_err(|_| Stat::CsumL4Failed)?;
        }
        let old = read16(ctx, L3_OFF + IPV4_CSUM_OFF).ok_or(Stat::CsumL3Failed)?;
        ip_csum = apply_diff(old, diff);
    }
    let [s0, s1] = words(new.saddr);
    let [d0, d1] = words(new.daddr);
    if key.proto != IPPROTO_TCP && key.proto != IPPROTO_UDP {
        let (old_id, new_id) = if icmp_request {
            (key.sport, new.sport)
        } else {
            (key.dport, new.dport)
        };
        if addrs_changed {
            ctx.store(L3_OFF + IPV4_CSUM_OFF, &[ip_csum, s0, s1, d0, d1], 0)
                .map_err(|_| Stat::WriteFailed)?;
        }
        return set_port(ctx, l4 + ICMP_ID_OFF, old_id, new_id, csum);
    }
    let ports_changed = key.sport != new.sport || key.dport != new.dport;
    if ports_changed {
        let diff = diff16(diff16(0, key.sport, new.sport), key.dport, new.dport);
        ctx.l4_csum_replace(csum.offset, 0, u64::from(diff), csum.port_flags())
            .map_err(|_| Stat::CsumL4Failed)?;
    }
    if addrs_changed && l4 == L3_OFF + IPV4_MIN_HLEN {
        // check, saddr, daddr, sport, dport: 14 contiguous bytes.
        let tuple: [u16; 7] = [ip_csum, s0, s1, d0, d1, new.sport, new.dport];
        return ctx
            .store(L3_OFF + IPV4_CSUM_OFF, &tuple, 0)
            .map_err(|_| Stat::WriteFailed);
    }
    if addrs_changed {
        ctx.store(L3_OFF + IPV4_CSUM_OFF, &[ip_csum, s0, s1, d0, d1], 0)
            .map_err(|_| Stat::WriteFailed)?;
    }
    if ports_changed {
        ctx.store(l4, &[new.sport, new.dport], 0)
            .map_err(|_| Stat::WriteFailed)?;
    }
    Ok(())
}

/// Restores the identifier of an embedded ICMP query, and the embedded
/// message's own checksum with it (always quoted: it is in the first 8
/// bytes). The two changes cancel in the outer ICMP checksum.
#[inline(always)]
pub fn restore_embedded_id(
    ctx: &TcContext,
    inner_l4: usize,
    old: u16,
    new: u16,
    outer_l4: usize,
) -> Rewrite {
    if old == new {
        return Ok(());
    }
    let icmp = L4Csum::of(IPPROTO_ICMP, outer_l4);
    set_port(ctx, inner_l4 + ICMP_ID_OFF, old, new, icmp)?;
    // Type and code, then the checksum: one 4-byte read from the header's
    // start, which the verifier can bound (a 2-byte read at +2 it could not).
    let Some([_, quoted]) = ctx::load::<[u16; 2]>(ctx, inner_l4) else {
        return Ok(());
    };
    let fixed = fold16(quoted, old, new);
    replace_embedded16(ctx, inner_l4 + ICMP_CSUM_OFF, quoted, fixed, outer_l4)
}

/// The partial sum that turns a checksum over the IPv6 address `old` into
/// one over `new` (as [`diff32`], word by word).
#[inline(always)]
pub fn diff128(acc: u32, old: &[u32; 4], new: &[u32; 4]) -> u32 {
    let mut acc = acc;
    let mut i = 0;
    while i < 4 {
        acc = diff32(acc, old[i], new[i]);
        i += 1;
    }
    acc
}

/// IPv6's [`rewrite_tuple`]: there is no header checksum, and every L4
/// checksum (ICMPv6's too) covers both addresses through its
/// pseudo-header, so the kernel moves it by their partial sum, then by
/// the ports' (or the echo identifier's); the addresses are 32 contiguous
/// bytes, one store.
#[inline(always)]
pub fn rewrite_tuple6(
    ctx: &TcContext,
    l4: usize,
    key: &FlowKey6,
    new: &FlowKey6,
    icmp_request: bool,
) -> Rewrite {
    let csum = L4Csum::of(key.proto, l4);
    if key.saddr != new.saddr || key.daddr != new.daddr {
        let diff = diff128(diff128(0, &key.saddr, &new.saddr), &key.daddr, &new.daddr);
        ctx.l4_csum_replace(csum.offset, 0, u64::from(diff), csum.flags)
            .map_err(|_| Stat::CsumL4Failed)?;
        let addrs: [[u32; 4]; 2] = [new.saddr, new.daddr];
        ctx.store(L3_OFF + IPV6_SADDR_OFF, &addrs, 0)
            .map_err(|_| Stat::WriteFailed)?;
    }
    if key.proto != IPPROTO_TCP && key.proto != IPPROTO_UDP {
        let (old_id, new_id) = if icmp_request {
            (key.sport, new.sport)
        } else {
            (key.dport, new.dport)
        };
        return set_port(ctx, l4 + ICMP_ID_OFF, old_id, new_id, csum);
    }
    if key.sport != new.sport || key.dport != new.dport {
        let diff = diff16(diff16(0, key.sport, new.sport), key.dport, new.dport);
        ctx.l4_csum_replace(csum.offset, 0, u64::from(diff), csum.port_flags())
            .map_err(|_| Stat::CsumL4Failed)?;
        ctx.store(l4, &[new.sport, new.dport], 0)
            .map_err(|_| Stat::WriteFailed)?;
    }
    Ok(())
}

/// Replaces the IPv6 address at `offset` (no-op when unchanged), moving
/// the checksum `csum` by it: through its pseudo-header for the outer
/// header's addresses (`L4Csum::of`), as data for a quoted header's
/// (`L4Csum::of_payload`). IPv6 has no header checksum of its own.
#[inline(always)]
pub fn set_addr6(
    ctx: &TcContext,
    offset: usize,
    old: &[u32; 4],
    new: &[u32; 4],
    csum: L4Csum,
) -> Rewrite {
    if old == new {
        return Ok(());
    }
    let diff = diff128(0, old, new);
    ctx.l4_csum_replace(csum.offset, 0, u64::from(diff), csum.flags)
        .map_err(|_| Stat::CsumL4Failed)?;
    ctx.store(offset, new, 0).map_err(|_| Stat::WriteFailed)
}
