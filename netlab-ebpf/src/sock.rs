//! The host's own connections to published ports and Services, at the
//! socket level (as Cilium's socket load balancer): `connect()`/`sendmsg()`
//! to a published port on a lab host address or on 127.0.0.0/8, or to a
//! ClusterIP, are pointed at the backend before any packet exists, and
//! `recvmsg()`/`getpeername()` show the address the socket asked for
//! back. `AF_INET6` sockets are handled when they talk
//! to an IPv4-mapped address (`::ffff:198.18.0.1`). Only sockets of the
//! lab's host namespace are touched (the programs are attached to the
//! whole cgroup tree).
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
use netlab_common::nat::{Backend, FlowKey, IPPROTO_TCP, IPPROTO_UDP, SockKey, SockNat};

use crate::{
    lab::{self, Lab},
    lb,
    pkt::ctx::value,
};

#[map(name = "SOCK_NAT")]
static SOCK_NAT: LruHashMap<SockKey, SockNat> = LruHashMap::pinned(65536, 0);

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
