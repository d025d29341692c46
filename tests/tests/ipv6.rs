//! IPv6 beside IPv4: a dual-stack topology's IPv6 addresses and routes come
//! up with the lab on every datapath, namespaces reach each other over
//! IPv6, and the lab's IPv6 stays inside it (netlab bridges IPv6 and
//! neither routes nor translates it yet): even where the host routes IPv6,
//! the datapath keeps the lab closed, either way.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test fails by panicking, helpers included"
)]

use netlab_tests::{Sandbox, nat_counter};

/// The default lab with IPv6 beside IPv4: a unique local subnet on the
/// bridge, RFC 5180's benchmarking prefix for the world.
fn dual_stack() -> String {
    let lab = include_str!("../../netlab/src/topology/default.toml")
        .replace(
            r#""192.168.15.5/24""#,
            r#""192.168.15.5/24", "fd00:15::5/64""#,
        )
        .replace(
            r#""192.168.15.1/24""#,
            r#""192.168.15.1/24", "fd00:15::1/64""#,
        )
        .replace(
            r#""192.168.15.2/24""#,
            r#""192.168.15.2/24", "fd00:15::2/64""#,
        )
        .replace(r#""198.18.0.2/24""#, r#""198.18.0.2/24", "2001:2::2/64""#)
        .replace(r#""198.18.0.1/24""#, r#""198.18.0.1/24", "2001:2::1/64""#);
    lab + r#"
[[route]]
netns = "red"
to = "default"
via = "fd00:15::5"

# The world routes the lab's IPv6 subnet to the host, as a careless
# upstream would: the host still must not forward it.
[[route]]
netns = "outside"
to = "fd00:15::/64"
via = "2001:2::1"
"#
}

/// Whether `from` gets any answer from `to` (one ping, one second).
fn answers(sb: &Sandbox, from: &str, to: &str) -> bool {
    sb.run(&[
        "ip", "netns", "exec", from, "ping", "-n", "-q", "-c", "1", "-W", "1", to,
    ])
    .unwrap()
    .success()
}

fn dual_stack_lab(datapath: &str) {
    let sb = Sandbox::new().unwrap();
    // The host routes IPv6, as a Docker host with IPv6 does: only the
    // datapath stands between the lab and the world.
    sb.ok(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])
        .unwrap();
    sb.write_file("/run/dual.toml", &dual_stack()).unwrap();
    sb.netlab_ok(&["up", "-f", "/run/dual.toml", "--datapath", datapath])
        .unwrap();

    // The addresses and the route are in place.
    let addrs = sb
        .ok(&["ip", "-n", "red", "-6", "addr", "show", "dev", "veth-red"])
        .unwrap();
    assert!(addrs.stdout.contains("fd00:15::1/64"), "{addrs}");
    let routes = sb.ok(&["ip", "-n", "red", "-6", "route"]).unwrap();
    assert!(routes.stdout.contains("default via fd00:15::5"), "{routes}");
    let bridge = sb
        .ok(&["ip", "-6", "addr", "show", "dev", "v-net-0"])
        .unwrap();
    assert!(bridge.stdout.contains("fd00:15::5/64"), "{bridge}");

    // One segment, both families, both ways; and the host's bridge address.
    sb.ping(Some("red"), "fd00:15::2", 3).unwrap();
    sb.ping(Some("blue"), "fd00:15::1", 3).unwrap();
    sb.ping(Some("red"), "fd00:15::5", 2).unwrap();
    sb.ping(Some("red"), "192.168.15.2", 2).unwrap();
    // The world reaches the uplink's own address...
    sb.ping(Some("outside"), "2001:2::1", 2).unwrap();
    // ...but not the lab, and the lab not the world: the host would
    // route both, the datapath drops them (nothing translates IPv6 yet).
    assert!(!answers(&sb, "outside", "fd00:15::1"));
    assert!(!answers(&sb, "red", "2001:2::2"));
    // A world host that sends from a lab address (spoofed) still does not
    // get in: red never sees it.
    sb.ok(&[
        "ip",
        "-n",
        "outside",
        "addr",
        "add",
        "fd00:15::77/128",
        "dev",
        "veth-outside",
        "nodad",
    ])
    .unwrap();
    let nft = |rule: &str| {
        sb.ok(&[
            "ip",
            "netns",
            "exec",
            "red",
            "sh",
            "-c",
            &format!("nft {rule}"),
        ])
        .unwrap()
    };
    nft("add table inet spoof");
    nft("'add chain inet spoof in { type filter hook input priority 0 ; }'");
    nft("add rule inet spoof in ip6 saddr fd00:15::77 counter");
    let spoofed = sb
        .run(&[
            "ip",
            "netns",
            "exec",
            "outside",
            "ping",
            "-n",
            "-q",
            "-c",
            "2",
            "-W",
            "1",
            "-I",
            "fd00:15::77",
            "fd00:15::1",
        ])
        .unwrap();
    assert!(!spoofed.success(), "{spoofed}");
    let counted = nft("list chain inet spoof in");
    assert!(counted.stdout.contains("packets 0 "), "{counted}");
    if datapath != "iptables" {
        let status = sb.status().unwrap();
        assert!(
            nat_counter(&status, "ipv6_closed").is_some_and(|n| n >= 2),
            "{status:?}"
        );
    }
    // IPv4 still goes out, masqueraded.
    sb.ping(Some("red"), "198.18.0.2", 2).unwrap();

    sb.netlab_ok(&["down"]).unwrap();
    sb.assert_no_lab_traces("default").unwrap();
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn dual_stack_lab_on_bridge() {
    dual_stack_lab("bridge");
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn dual_stack_lab_on_redirect() {
    dual_stack_lab("redirect");
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn dual_stack_lab_on_iptables() {
    dual_stack_lab("iptables");
}
