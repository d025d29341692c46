//! The `redirect` datapath (issue 4) skips the bridge and the host's stack:
//! what proves it, beside the NAT suite that runs on it too (`nat.rs`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test fails by panicking, helpers included"
)]

use netlab::topology::Datapath;
use netlab_tests::{Sandbox, status_links};

const BLUE: &str = "192.168.15.2";
const OUTSIDE: &str = "198.18.0.2";

/// A test-owned nftables counter on the bridge family's forward hook: it
/// counts exactly the IPv4 frames the bridge forwards between its ports
/// (ARP and IPv6 neighbour discovery still use the bridge, by design). (A
/// veth's own counters cannot tell: its tx is its peer's rx, which a peer
/// redirect also counts.)
fn add_bridge_counter(sb: &Sandbox) {
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
    sb.ok(&[
        "nft",
        "add",
        "rule",
        "bridge",
        "test_bridge",
        "forwarded",
        "ether",
        "type",
        "ip",
        "counter",
    ])
    .unwrap();
}

fn bridge_forwarded(sb: &Sandbox) -> u64 {
    sb.nft_counted("bridge", "test_bridge", "forwarded")
        .unwrap()
}

/// A test-owned chain in FORWARD that only counts lab packets.
fn add_counting_rule(sb: &Sandbox) {
    sb.ok(&["iptables-nft", "-N", "TEST-COUNT"]).unwrap();
    sb.ok(&["iptables-nft", "-I", "FORWARD", "-j", "TEST-COUNT"])
        .unwrap();
    sb.ok(&["iptables-nft", "-A", "TEST-COUNT", "-s", "192.168.15.0/24"])
        .unwrap();
}

fn counted(sb: &Sandbox) -> u64 {
    let out = sb
        .ok(&["iptables-nft", "-L", "TEST-COUNT", "-v", "-x", "-n"])
        .unwrap();
    out.stdout
        .lines()
        .skip(2)
        .filter_map(|line| line.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Pings red → blue and red → outside; returns (bridge port frames, FORWARD
/// packets) they caused.
fn traffic(datapath: &str) -> (u64, u64) {
    let sb = Sandbox::new().unwrap();
    sb.netlab_ok(&["up", "--datapath", datapath]).unwrap();
    add_counting_rule(&sb);
    add_bridge_counter(&sb);
    // Warm up neighbour tables (ARP always crosses the bridge).
    sb.ping(Some("red"), BLUE, 1).unwrap();
    sb.ping(Some("red"), OUTSIDE, 1).unwrap();
    let (port_before, fwd_before) = (bridge_forwarded(&sb), counted(&sb));
    sb.ping(Some("red"), BLUE, 20).unwrap();
    sb.ping(Some("red"), OUTSIDE, 20).unwrap();
    let (port_after, fwd_after) = (bridge_forwarded(&sb), counted(&sb));
    sb.netlab_ok(&["down"]).unwrap();
    (port_after - port_before, fwd_after - fwd_before)
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn redirect_skips_the_bridge_and_netfilter() {
    // The same measurement in bridge mode proves the probes see traffic.
    let (bridged, forwarded) = traffic("bridge");
    assert!(bridged >= 40, "bridge mode: the bridge forwarded {bridged}");
    assert!(forwarded >= 20, "bridge mode: FORWARD counted {forwarded}");

    let (bridged, forwarded) = traffic("redirect");
    assert_eq!(bridged, 0, "redirect mode: the bridge forwarded lab frames");
    assert_eq!(forwarded, 0, "redirect mode: FORWARD saw lab packets");
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
