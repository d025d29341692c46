//! The `redirect` datapath (issue 4) skips the bridge and the host's stack:
//! what proves it, beside the NAT suite that runs on it too (`nat.rs`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test fails by panicking, helpers included"
)]

use std::collections::BTreeMap;

use netlab::topology::Datapath;
use netlab_tests::{Sandbox, status_links};

const BLUE: &str = "192.168.15.2";
const OUTSIDE: &str = "198.18.0.2";

/// What the probes count for one family: its pings, on the lab `up` makes.
struct Family {
    up: &'static [&'static str],
    blue: &'static str,
    outside: &'static str,
    /// The bridge family's match for this family's pings (ARP and IPv6
    /// neighbour discovery still use the bridge, by design).
    bridge_match: &'static [&'static str],
    iptables: &'static str,
    lab_subnet: &'static str,
}

const IPV4: Family = Family {
    up: &["up"],
    blue: BLUE,
    outside: OUTSIDE,
    bridge_match: &["ether", "type", "ip"],
    iptables: "iptables-nft",
    lab_subnet: "192.168.15.0/24",
};

const IPV6: Family = Family {
    up: &["up", "--dual-stack"],
    blue: "fd00:15::2",
    outside: "2001:2::2",
    bridge_match: &["icmpv6", "type", "{", "echo-request,", "echo-reply", "}"],
    iptables: "ip6tables-nft",
    lab_subnet: "fd00:15::/64",
};

/// A test-owned nftables counter on the bridge family's forward hook: it
/// counts exactly the frames of `family` the bridge forwards between its
/// ports. (A veth's own counters cannot tell: its tx is its peer's rx,
/// which a peer redirect also counts.)
fn add_bridge_counter(sb: &Sandbox, family: &Family) {
    sb.ok(&["nft", "add", "table", "bridge", "test_bridge"])
        .unwrap();
    sb.ok(&[
        "nft",
        "add",
        "chain",
        "bridge",
        "test_bridge",
        "forwarded",
        "{ type filter hook forward priority 0 ; }",
    ])
    .unwrap();
    let mut rule = vec!["nft", "add", "rule", "bridge", "test_bridge", "forwarded"];
    rule.extend(family.bridge_match);
    rule.push("counter");
    sb.ok(&rule).unwrap();
}

fn bridge_forwarded(sb: &Sandbox) -> u64 {
    sb.nft_counted("bridge", "test_bridge", "forwarded")
        .unwrap()
}

/// A test-owned chain in FORWARD that only counts lab packets.
fn add_counting_rule(sb: &Sandbox, family: &Family) {
    let iptables = family.iptables;
    sb.ok(&[iptables, "-N", "TEST-COUNT"]).unwrap();
    sb.ok(&[iptables, "-I", "FORWARD", "-j", "TEST-COUNT"])
        .unwrap();
    sb.ok(&[iptables, "-A", "TEST-COUNT", "-s", family.lab_subnet])
        .unwrap();
}

fn counted(sb: &Sandbox, family: &Family) -> u64 {
    let out = sb
        .ok(&[family.iptables, "-L", "TEST-COUNT", "-v", "-x", "-n"])
        .unwrap();
    out.stdout
        .lines()
        .skip(2)
        .filter_map(|line| line.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Pings red → blue and red → outside over `family`; returns (bridge port
/// frames, FORWARD packets) they caused, and red's redirect counters.
fn traffic(datapath: &str, family: &Family) -> (u64, u64, BTreeMap<String, u64>) {
    let sb = Sandbox::new().unwrap();
    let mut up = family.up.to_vec();
    up.extend(["--datapath", datapath]);
    sb.netlab_ok(&up).unwrap();
    add_counting_rule(&sb, family);
    add_bridge_counter(&sb, family);
    // Warm up neighbour tables (ARP and neighbour discovery always cross
    // the bridge).
    sb.ping(Some("red"), family.blue, 1).unwrap();
    sb.ping(Some("red"), family.outside, 1).unwrap();
    let (port_before, fwd_before) = (bridge_forwarded(&sb), counted(&sb, family));
    sb.ping(Some("red"), family.blue, 20).unwrap();
    sb.ping(Some("red"), family.outside, 20).unwrap();
    let (port_after, fwd_after) = (bridge_forwarded(&sb), counted(&sb, family));
    let status = sb.status().unwrap();
    let (_, red_br) = status_links(&status)
        .into_iter()
        .find(|(_, l)| l.name == "veth-red-br")
        .unwrap();
    let reasons = red_br.redirect.clone();
    sb.netlab_ok(&["down"]).unwrap();
    (port_after - port_before, fwd_after - fwd_before, reasons)
}

/// The probes see traffic in bridge mode; in redirect mode neither the
/// bridge nor FORWARD sees a lab packet, and red's veth counts its peer
/// and uplink redirects.
fn redirect_skips_the_bridge_and_netfilter(family: &Family) {
    let (bridged, forwarded, _) = traffic("bridge", family);
    assert!(bridged >= 40, "bridge mode: the bridge forwarded {bridged}");
    assert!(forwarded >= 20, "bridge mode: FORWARD counted {forwarded}");

    let (bridged, forwarded, reasons) = traffic("redirect", family);
    assert_eq!(bridged, 0, "redirect mode: the bridge forwarded lab frames");
    assert_eq!(forwarded, 0, "redirect mode: FORWARD saw lab packets");
    let reason = |name: &str| reasons.get(name).copied().unwrap_or(0);
    assert!(reason("redirect_peer") >= 21, "{reasons:#?}");
    assert!(reason("redirect_uplink") >= 21, "{reasons:#?}");
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn redirect_skips_the_bridge_and_netfilter_over_ipv4() {
    redirect_skips_the_bridge_and_netfilter(&IPV4);
}

/// IPv6's peer and uplink redirects (`redirect::forward6`).
#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn redirect_skips_the_bridge_and_netfilter_over_ipv6() {
    redirect_skips_the_bridge_and_netfilter(&IPV6);
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn redirect_counts_forwarding_and_fallbacks_per_interface() {
    let sb = Sandbox::new().unwrap();
    sb.netlab_ok(&["up", "--datapath", "redirect"]).unwrap();
    sb.ping(Some("red"), BLUE, 3).unwrap();
    sb.ping(Some("red"), OUTSIDE, 3).unwrap();
    // For the host itself: left to the stack.
    sb.ping(Some("red"), "192.168.15.5", 2).unwrap();
    let status = sb.status().unwrap();
    assert_eq!(status.datapath, Datapath::Redirect);
    let (_, red_br) = status_links(&status)
        .into_iter()
        .find(|(_, l)| l.name == "veth-red-br")
        .unwrap();
    let reason = |name: &str| red_br.redirect.get(name).copied();
    assert!(reason("redirect_peer") >= Some(3), "{red_br:#?}");
    assert!(reason("redirect_uplink") >= Some(3), "{red_br:#?}");
    assert!(reason("fallback_local") >= Some(2), "{red_br:#?}");
}

/// The iptables reference leaves netfilter exactly as it found it.
#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn iptables_mode_down_restores_netfilter() {
    let sb = Sandbox::new().unwrap();
    let save = |sb: &Sandbox| {
        let nat = sb.ok(&["iptables-nft-save", "-t", "nat"]).unwrap().stdout;
        let filter = sb
            .ok(&["iptables-nft-save", "-t", "filter"])
            .unwrap()
            .stdout;
        format!("{nat}{filter}")
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                // Counters differ between snapshots; rules must not.
                l.split(" [").next().unwrap_or(l).to_owned()
            })
            .collect::<Vec<_>>()
    };
    let before = save(&sb);
    sb.netlab_ok(&["up", "--datapath", "iptables"]).unwrap();
    let during = save(&sb);
    assert!(
        during.iter().any(|l| l.contains("NL-default-DNAT")),
        "{during:#?}"
    );
    sb.netlab_ok(&["down"]).unwrap();
    assert_eq!(save(&sb), before);
}
