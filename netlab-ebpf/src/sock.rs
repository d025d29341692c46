//! The host's own connections to published ports and Services, at the
//! socket level (as Cilium's socket load balancer): `connect()`/`sendmsg()`
//! to a published port on a lab host address or on 127.0.0.0/8, or to a
//! ClusterIP, are pointed at the backend before any packet exists, and
//! `recvmsg()`/`getpeername()` show the address the socket asked for
//! back. `AF_INET6` sockets are handled as IPv4 when they talk to an
//! IPv4-mapped address (`::ffff:198.18.0.1`), and as IPv6 when they talk to
//! an IPv6 published port on a lab host IPv6 address or `::1` (its IPv6
//! backend, as ip6tables' DNAT in OUTPUT; IPv6 has no ClusterIPs). Only
//! sockets of the lab's host namespace are touched (the programs are
//! attached to the whole cgroup tree).
//!
//! What a socket was pointed at is kept per (socket, backend), so an
//! unconnected UDP socket that talks to two published ports sees each
//! reply come from the port it sent to.

use aya_ebpf::{
    EbpfContext,
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::map,
    maps::LruHashMap,
    programs::SockAddrContext,
};
use netlab_common::nat::{
    Backend, FlowKey, IPPROTO_TCP, IPPROTO_UDP, SockKey, SockKey6, SockNat, SockNat6,
};

use crate::{
    lab::{self, Lab},
    lb,
    pkt::ctx::value,
};

#[map(name = "SOCK_NAT")]
static SOCK_NAT: LruHashMap<SockKey, SockNat> = LruHashMap::pinned(65536, 0);

/// IPv6's: fewer entries, as IPv6's conntrack, for a key twice as large.
#[map(name = "SOCK_NAT6")]
static SOCK_NAT6: LruHashMap<SockKey6, SockNat6> = LruHashMap::pinned(16384, 0);

/// An IPv4 address as a socket address carries it.
#[derive(Clone, Copy)]
pub enum Family {
    V4,
    /// IPv4-mapped in an `AF_INET6` address (`::ffff:a.b.c.d`); any other
    /// IPv6 address is left alone.
    V6Mapped,
}

/// `::ffff:0:0/96` as its three leading words, network order.
const V4_MAPPED_PREFIX: [u32; 3] = [0, 0, 0xffff_u32.to_be()];

/// `::1`, network order.
const LOOPBACK6: [u32; 4] = [0, 0, 0, 1_u32.to_be()];

/// The IPv4 address of the call (`None` for IPv6 that is not IPv4-mapped).
#[inline(always)]
fn addr_of(sa: *mut bpf_sock_addr, family: Family) -> Option<u32> {
    // SAFETY: the kernel hands sock_addr programs a valid context.
    unsafe {
        match family {
            Family::V4 => Some((*sa).user_ip4),
            Family::V6Mapped => {
                let ip6 = (*sa).user_ip6;
                (ip6[0] == V4_MAPPED_PREFIX[0]
                    && ip6[1] == V4_MAPPED_PREFIX[1]
                    && ip6[2] == V4_MAPPED_PREFIX[2])
                    .then_some(ip6[3])
            }
        }
    }
}

#[inline(always)]
fn set_addr(sa: *mut bpf_sock_addr, family: Family, addr: u32, port: u16) {
    // SAFETY: writable fields of the sock_addr context.
    unsafe {
        match family {
            Family::V4 => (*sa).user_ip4 = addr,
            Family::V6Mapped => (*sa).user_ip6[3] = addr,
        }
        (*sa).user_port = u32::from(port);
    }
}

/// The lab, when the call comes from a socket of the lab's host namespace.
#[inline(always)]
fn lab_of(ctx: &SockAddrContext) -> Option<Lab> {
    let lab = Lab::get()?;
    // SAFETY: helper on the program's own context.
    let here = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    (lab.cfg.host_netns_cookie != 0 && here == lab.cfg.host_netns_cookie).then_some(lab)
}

/// `connect` / `sendmsg`: point the socket at the backend of a published port.
#[inline(always)]
pub fn to_backend(ctx: &SockAddrContext, family: Family) {
    let Some(lab) = lab_of(ctx) else {
        return;
    };
    let sa = ctx.sock_addr;
    let Some(addr) = addr_of(sa, family) else {
        return;
    };
    // SAFETY: the kernel hands sock_addr programs a valid context.
    let (port, proto) = unsafe { ((*sa).user_port as u16, (*sa).protocol as u8) };
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return;
    }
    // SAFETY: helper on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // Network order: the first byte in memory is the low byte here.
    let loopback = addr & 0xff == 127;
    let backend = if lab.is_service(addr) {
        // A ClusterIP.
        let Some(service) = lab::service(addr, port, proto) else {
            return;
        };
        service_backend(service.id, cookie, addr, port, proto)
    } else if loopback || lab.is_local(addr) {
        // A published port, or a NodePort.
        match lab::published(port, proto) {
            Some(p) if p.service != 0 => service_backend(p.service, cookie, addr, port, proto),
            found => found,
        }
    } else {
        None
    };
    let Some(backend) = backend else {
        return;
    };
    let key = SockKey {
        cookie,
        backend_addr: backend.addr,
        backend_port: backend.port,
        _pad: 0,
    };
    let published = SockNat {
        published_addr: addr,
        published_port: port,
        _pad: 0,
    };
    let _ = SOCK_NAT.insert(key, published, 0);
    set_addr(sa, family, backend.addr, backend.port);
}

/// The backend Service `id` gives a socket connecting to `addr`:`port`.
/// No packet exists yet: the host is the client (source 0), and the
/// socket's cookie stands for its source port, so sockets spread over the
/// backends, and with session affinity (a hash of the source alone) all go
/// to one.
#[inline(always)]
fn service_backend(id: u16, cookie: u64, addr: u32, port: u16, proto: u8) -> Option<Backend> {
    let key = FlowKey::new(0, addr, cookie as u16, port, proto);
    lb::choose(id, &key).map(|(_, backend)| backend)
}

/// `recvmsg` / `getpeername`: show the published address, not the backend.
#[inline(always)]
pub fn from_backend(ctx: &SockAddrContext, family: Family) {
    if lab_of(ctx).is_none() {
        return;
    }
    let sa = ctx.sock_addr;
    let Some(addr) = addr_of(sa, family) else {
        return;
    };
    let key = SockKey {
        // SAFETY: helper on the program's own context.
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        backend_addr: addr,
        // SAFETY: the kernel hands sock_addr programs a valid context.
        backend_port: unsafe { (*sa).user_port as u16 },
        _pad: 0,
    };
    // SAFETY: copied at once; an eviction at worst shows the backend.
    let Some(published) = (unsafe { value(SOCK_NAT.get_ptr(key)) }).copied() else {
        return;
    };
    set_addr(
        sa,
        family,
        published.published_addr,
        published.published_port,
    );
}

/// The IPv6 address of an `AF_INET6` call (every word read, as the
/// context allows), and whether it is IPv4-mapped.
#[inline(always)]
fn addr6_of(sa: *mut bpf_sock_addr) -> ([u32; 4], bool) {
    // SAFETY: the kernel hands sock_addr programs a valid context.
    let ip6 = unsafe { (*sa).user_ip6 };
    let mapped = ip6[0] == V4_MAPPED_PREFIX[0]
        && ip6[1] == V4_MAPPED_PREFIX[1]
        && ip6[2] == V4_MAPPED_PREFIX[2];
    (ip6, mapped)
}

#[inline(always)]
fn set_addr6(sa: *mut bpf_sock_addr, addr: &[u32; 4], port: u16) {
    // SAFETY: writable fields of the sock_addr context, one 4-byte word at
    // a time, as the kernel accepts them.
    unsafe {
        (*sa).user_ip6[0] = addr[0];
        (*sa).user_ip6[1] = addr[1];
        (*sa).user_ip6[2] = addr[2];
        (*sa).user_ip6[3] = addr[3];
        (*sa).user_port = u32::from(port);
    }
}

/// `connect` / `sendmsg` of an `AF_INET6` socket: an IPv4-mapped address
/// as IPv4 ([`to_backend`]); an IPv6 published port on a host IPv6
/// address of the lab or `::1` to its IPv6 backend.
#[inline(always)]
pub fn to_backend6(ctx: &SockAddrContext) {
    let sa = ctx.sock_addr;
    let (addr, mapped) = addr6_of(sa);
    if mapped {
        return to_backend(ctx, Family::V6Mapped);
    }
    let Some(lab) = lab_of(ctx) else {
        return;
    };
    // SAFETY: the kernel hands sock_addr programs a valid context.
    let (port, proto) = unsafe { ((*sa).user_port as u16, (*sa).protocol as u8) };
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return;
    }
    if addr != LOOPBACK6 && !lab.is_local6(&addr) {
        return;
    }
    let Some(backend) = lab::published6(port, proto) else {
        return;
    };
    let key = SockKey6 {
        // SAFETY: helper on the program's own context.
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        backend_addr: backend.addr,
        backend_port: backend.port,
        _pad: [0; 3],
    };
    let published = SockNat6 {
        published_addr: addr,
        published_port: port,
        _pad: 0,
    };
    let _ = SOCK_NAT6.insert(key, published, 0);
    set_addr6(sa, &backend.addr, backend.port);
}

/// `recvmsg` / `getpeername` of an `AF_INET6` socket: the published
/// address, not the backend, IPv4-mapped or IPv6.
#[inline(always)]
pub fn from_backend6(ctx: &SockAddrContext) {
    let sa = ctx.sock_addr;
    let (addr, mapped) = addr6_of(sa);
    if mapped {
        return from_backend(ctx, Family::V6Mapped);
    }
    if lab_of(ctx).is_none() {
        return;
    }
    let key = SockKey6 {
        // SAFETY: helper on the program's own context.
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        backend_addr: addr,
        // SAFETY: the kernel hands sock_addr programs a valid context.
        backend_port: unsafe { (*sa).user_port as u16 },
        _pad: [0; 3],
    };
    // SAFETY: copied at once; an eviction at worst shows the backend.
    let Some(published) = (unsafe { value(SOCK_NAT6.get_ptr(key)) }).copied() else {
        return;
    };
    set_addr6(sa, &published.published_addr, published.published_port);
}
