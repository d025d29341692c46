//! The lab is closed: traffic from its namespaces to an address outside the
//! lab (neither a lab subnet nor the uplink's) is dropped before the host
//! could forward it out of one of its own interfaces, on every datapath.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test fails by panicking, helpers included"
)]

use netlab_tests::{Sandbox, nat_counter};

/// An address outside the lab (TEST-NET-2); nothing ever answers it.
const BEYOND: &str = "198.51.100.7";

/// IPv4 packets the sandbox host sent out of `dev` (an nftables counter on
/// the output path, so IPv6 link chatter does not count).
fn add_egress_counter(sb: &Sandbox, dev: &str) {
    sb.ok(&["nft", "add", "table", "inet", "test_closed"])
        .unwrap();
    sb.ok(&[
        "nft",
        "add",
        "chain",
        "inet",
        "test_closed",
        "post",
        "{ type filter hook postrouting priority 0 ; }",
    ])
    .unwrap();
    sb.ok(&[
        "nft",
        "add",
        "rule",
        "inet",
        "test_closed",
        "post",
        "oifname",
        dev,
        "meta",
        "nfproto",
        "ipv4",
        "counter",
    ])
    .unwrap();
}

fn egress_count(sb: &Sandbox) -> u64 {
    sb.nft_counted("inet", "test_closed", "post").unwrap()
}

fn lab_stays_closed(datapath: &str) {
    let sb = Sandbox::new().unwrap();
    sb.netlab_ok(&["up", "--datapath", datapath]).unwrap();
    // A stand-in for the host's real uplink, with the default route: what a
    // lab packet to the wider world would leave through.
    sb.ok(&[
        "ip", "link", "add", "hosteth", "type", "veth", "peer", "name", "hostpeer",
    ])
    .unwrap();
    sb.ok(&["ip", "addr", "add", "10.99.0.1/24", "dev", "hosteth"])
        .unwrap();
    sb.ok(&["ip", "link", "set", "hosteth", "up"]).unwrap();
    sb.ok(&["ip", "link", "set", "hostpeer", "up"]).unwrap();
    sb.ok(&[
        "ip",
        "route",
        "add",
        "default",
        "via",
        "10.99.0.2",
        "dev",
        "hosteth",
    ])
    .unwrap();
    add_egress_counter(&sb, "hosteth");

    let ping = sb
        .run(&[
            "ip", "netns", "exec", "red", "ping", "-c", "3", "-i", "0.2", "-W", "1", BEYOND,
        ])
        .unwrap();
    assert!(!ping.success(), "{ping}");
    assert_eq!(
        egress_count(&sb),
        0,
        "lab traffic left through the host's own interface"
    );
    if datapath != "iptables" {
        let status = sb.status().unwrap();
        let dropped = nat_counter(&status, "leave_lab").unwrap_or(0);
        assert!(dropped >= 3, "leave_lab = {dropped}: {:#?}", status.nat);
    }
    // The lab itself still works.
    sb.ping(Some("red"), "198.18.0.2", 1).unwrap();
    sb.ping(Some("red"), "192.168.15.2", 1).unwrap();
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn bridge_lab_is_closed() {
    lab_stays_closed("bridge");
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn redirect_lab_is_closed() {
    lab_stays_closed("redirect");
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn iptables_lab_is_closed() {
    lab_stays_closed("iptables");
}
