//! The host's own connections to published ports, at the socket level (as
//! Cilium's socket load balancer): `connect()`/`sendmsg()` to a published
//! port on a lab host address or on 127.0.0.0/8 are pointed at the backend
//! before any packet exists, and `recvmsg()`/`getpeername()` show the
//! published address back. Only sockets of the lab's host namespace are
//! touched (the programs are attached to the whole cgroup tree).

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::map,
    maps::LruHashMap,
    programs::SockAddrContext,
};
use netlab_common::nat::{IPPROTO_TCP, IPPROTO_UDP, PublishKey, SockNat};

use crate::{
    nat::{self, PUBLISHED},
    pkt::ctx::value,
};

#[map(name = "SOCK_NAT")]
static SOCK_NAT: LruHashMap<u64, SockNat> = LruHashMap::pinned(65536, 0);

#[inline(always)]
fn in_lab_host(ctx: &SockAddrContext) -> bool {
    let Some(cfg) = nat::config() else {
        return false;
    };
    // SAFETY: helper on the program's own context.
    cfg.host_netns_cookie != 0
        && unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } == cfg.host_netns_cookie
}

/// `connect4` / `sendmsg4`: point the socket at the backend of a published port.
#[inline(always)]
pub fn to_backend(ctx: &SockAddrContext) {
    if !in_lab_host(ctx) {
        return;
    }
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands sock_addr programs a valid context.
    let (addr, port, proto) =
        unsafe { ((*sa).user_ip4, (*sa).user_port as u16, (*sa).protocol as u8) };
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return;
    }
    // Network order: the first byte in memory is the low byte here.
    let loopback = addr & 0xff == 127;
    if !loopback && !nat::is_local(addr) {
        return;
    }
    let Some(&backend) = value(PUBLISHED.get_ptr(PublishKey {
        port,
        proto,
        _pad: 0,
    })) else {
        return;
    };
    // SAFETY: helper on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = SOCK_NAT.insert(
        cookie,
        SockNat {
            published_addr: addr,
            backend_addr: backend.addr,
            published_port: port,
            backend_port: backend.port,
        },
        0,
    );
    // SAFETY: writable fields of the sock_addr context.
    unsafe {
        (*sa).user_ip4 = backend.addr;
        (*sa).user_port = u32::from(backend.port);
    }
}

/// `recvmsg4` / `getpeername4`: show the published address, not the backend.
#[inline(always)]
pub fn from_backend(ctx: &SockAddrContext) {
    if !in_lab_host(ctx) {
        return;
    }
    // SAFETY: helper on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(&nat) = value(SOCK_NAT.get_ptr(cookie)) else {
        return;
    };
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands sock_addr programs a valid context.
    unsafe {
        if (*sa).user_ip4 == nat.backend_addr && (*sa).user_port as u16 == nat.backend_port {
            (*sa).user_ip4 = nat.published_addr;
            (*sa).user_port = u32::from(nat.published_port);
        }
    }
}
