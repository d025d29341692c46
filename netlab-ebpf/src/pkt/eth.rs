//! Ethernet: layout, and the one place MAC addresses are read and written.

use aya_ebpf::programs::TcContext;
use netlab_common::nat::Stat;

use super::ctx;

pub const ETH_HLEN: usize = 14;
pub const ETH_ALEN: usize = 6;
pub const ETH_P_IP: u16 = 0x0800;

/// Field offsets.
pub const ETH_DEST_OFF: usize = 0;
pub const ETH_PROTO_OFF: usize = 12;

/// Destination and source MAC, as they sit in the frame.
pub type MacPair = [u8; 2 * ETH_ALEN];

/// Whether a destination MAC is a group address (multicast or broadcast).
#[inline(always)]
pub fn is_group(mac: &[u8; ETH_ALEN]) -> bool {
    mac[0] & 1 != 0
}

/// The destination MAC of the frame.
#[inline(always)]
pub fn load_daddr(ctx: &TcContext) -> Option<[u8; ETH_ALEN]> {
    ctx::load::<[u8; ETH_ALEN]>(ctx, ETH_DEST_OFF)
}

/// Writes the destination MAC.
#[inline(always)]
pub fn store_daddr(ctx: &TcContext, mac: &[u8; ETH_ALEN]) -> Result<(), Stat> {
    ctx.store(ETH_DEST_OFF, mac, 0)
        .map_err(|_| Stat::WriteFailed)
}

/// Writes both MACs.
#[inline(always)]
pub fn store_addrs(
    ctx: &TcContext,
    daddr: &[u8; ETH_ALEN],
    saddr: &[u8; ETH_ALEN],
) -> Result<(), Stat> {
    let mut macs: MacPair = [0; 2 * ETH_ALEN];
    macs[..ETH_ALEN].copy_from_slice(daddr);
    macs[ETH_ALEN..].copy_from_slice(saddr);
    ctx.store(ETH_DEST_OFF, &macs, 0)
        .map_err(|_| Stat::WriteFailed)
}

/// Swaps the frame's MACs (a frame sent back where it came from).
#[inline(always)]
pub fn swap_addrs(ctx: &TcContext) -> Result<(), Stat> {
    let macs = ctx::load::<MacPair>(ctx, ETH_DEST_OFF).ok_or(Stat::WriteFailed)?;
    let swapped = [
        macs[6], macs[7], macs[8], macs[9], macs[10], macs[11], macs[0], macs[1], macs[2], macs[3],
        macs[4], macs[5],
    ];
    ctx.store(ETH_DEST_OFF, &swapped, 0)
        .map_err(|_| Stat::WriteFailed)
}
