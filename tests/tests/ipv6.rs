//! IPv6 beside IPv4: a dual-stack topology's IPv6 addresses and routes come
//! up with the lab on every datapath, namespaces reach each other over
//! IPv6, and a lab IPv6 subnet that is not masqueraded stays inside it:
//! even where the host routes IPv6, the datapath keeps the lab closed,
//! either way. Where `[nat] masquerade` lists an IPv6 subnet, every
//! datapath translates it as Docker's ip6tables rules do (published ports,
//! the hairpin and masquerade): NAT66 in eBPF, or ip6tables.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test fails by panicking, helpers included"
)]

use std::time::Duration;

use netlab_tests::{Sandbox, default_lab::dual_stack_bridged, nat_counter};

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
    sb.write_file("/run/dual.toml", &dual_stack_bridged())
        .unwrap();
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
    // The world reaches the uplink's own address, and so does the lab
    // (the host's address, as ip6tables leaves the host's INPUT alone)...
    sb.ping(Some("outside"), "2001:2::1", 2).unwrap();
    sb.ping(Some("red"), "2001:2::1", 2).unwrap();
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
            nat_counter(&status, "spoofed_source").is_some_and(|n| n >= 2),
            "{status:?}"
        );
        assert!(
            nat_counter(&status, "ipv6_closed").is_some_and(|n| n >= 1),
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

/// `PORT`: a TCP server on every IPv6 address of its namespace that
/// answers each connection with the address it came from.
const PEER6_SERVER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", int(sys.argv[1])))
s.listen(16)
print("ready", flush=True)
while True:
    c, a = s.accept()
    c.sendall((a[0] + "\n").encode())
    c.close()
"#;

/// `HOST PORT`: one UDP datagram to a port nobody listens on; prints
/// `refused` when the port unreachable came back (as ECONNREFUSED).
const UDP_REFUSED: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.settimeout(3)
s.connect((sys.argv[1], int(sys.argv[2])))
s.send(b"anyone?")
try:
    s.recv(100)
    print("answered")
except ConnectionRefusedError:
    print("refused")
"#;

/// `HOST PORT`: what the server there says the connection came from.
const ASK6: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
print(s.makefile().readline().strip())
"#;

/// Whom `netns` is seen as by the server at `[host]:port`.
fn seen_as(sb: &Sandbox, netns: &str, host: &str, port: &str) -> String {
    let out = sb
        .ok(&[
            "ip", "netns", "exec", netns, "python3", "-c", ASK6, host, port,
        ])
        .unwrap();
    out.stdout.trim().to_owned()
}

/// Whether `netns` can connect to `[host]:port` at all.
fn connects(sb: &Sandbox, netns: &str, host: &str, port: &str) -> bool {
    sb.run(&[
        "ip", "netns", "exec", netns, "python3", "-c", ASK6, host, port,
    ])
    .unwrap()
    .success()
}

fn translates_ipv6_as_docker_does(datapath: &str) {
    let sb = Sandbox::new().unwrap();
    sb.netlab_ok(&["up", "--dual-stack", "--datapath", datapath])
        .unwrap();
    let status = sb.status().unwrap();
    assert_eq!(
        status.nat.as_ref().and_then(|n| n.uplink.as_deref()),
        Some("nl-uplink (198.18.0.1, 2001:2::1)"),
        "{status:?}"
    );
    if datapath == "iptables" {
        // Its ip6tables chains are listed after its iptables ones.
        let rules = &status.nat.as_ref().unwrap().iptables_rules;
        let v6 = rules
            .iter()
            .position(|l| l == "ip6tables:")
            .unwrap_or_else(|| panic!("{rules:#?}"));
        assert!(
            rules[v6..]
                .iter()
                .any(|l| l.contains("MASQUERADE") && l.contains("fd00:15::/64")),
            "{rules:#?}"
        );
    }
    // The world routes the lab's IPv6 subnet to the host (a careless
    // upstream): routed access must stay closed all the same.
    sb.ok(&[
        "ip",
        "-n",
        "outside",
        "-6",
        "route",
        "add",
        "fd00:15::/64",
        "via",
        "2001:2::1",
    ])
    .unwrap();
    let forwarding = |value: &str| {
        let out = sb
            .ok(&["sysctl", "-n", "net.ipv6.conf.all.forwarding"])
            .unwrap();
        assert_eq!(out.stdout.trim(), value, "{out}");
    };
    // `up` routes IPv6 for the lab, as Docker with ip6tables does.
    forwarding("1");
    let life = Duration::from_secs(60);
    let mut blue = sb
        .spawn(
            &[
                "ip",
                "netns",
                "exec",
                "blue",
                "python3",
                "-u",
                "-c",
                PEER6_SERVER,
                "80",
            ],
            life,
        )
        .unwrap();
    blue.wait_for("ready", Duration::from_secs(10)).unwrap();
    let mut world = sb
        .spawn(
            &[
                "ip",
                "netns",
                "exec",
                "outside",
                "python3",
                "-u",
                "-c",
                PEER6_SERVER,
                "9000",
            ],
            life,
        )
        .unwrap();
    world.wait_for("ready", Duration::from_secs(10)).unwrap();

    // `docker run -p 8080:80` over IPv6: the world reaches blue through
    // the uplink's IPv6 address, and blue sees the world's own address.
    assert_eq!(seen_as(&sb, "outside", "2001:2::1", "8080"), "2001:2::2");
    // Nothing that reaches the world carries a lab IPv6 address: counted
    // at outside's first hook while red talks to it over TCP, ICMPv6 echo
    // and UDP to a closed port (whose port unreachable comes back to red).
    let nft = |args: &str| {
        sb.ok(&[
            "ip",
            "netns",
            "exec",
            "outside",
            "sh",
            "-c",
            &format!("nft {args}"),
        ])
        .unwrap()
    };
    nft("add table inet watch");
    for (chain, priority, source) in [("leak", -300, "fd00:15::/64"), ("nat", -299, "2001:2::1")] {
        nft(&format!(
            "'add chain inet watch {chain} {{ type filter hook prerouting priority {priority} ; }}'"
        ));
        nft(&format!(
            "add rule inet watch {chain} ip6 saddr {source} counter"
        ));
    }
    let counted = |chain: &str| -> u64 {
        let listing = nft(&format!("list chain inet watch {chain}")).stdout;
        let words: Vec<&str> = listing.split_whitespace().collect();
        let at = words.iter().position(|w| *w == "packets").unwrap();
        words[at + 1].parse().unwrap()
    };
    // red reaches the world masqueraded to the uplink's IPv6 address.
    assert_eq!(seen_as(&sb, "red", "2001:2::2", "9000"), "2001:2::1");
    sb.ping(Some("red"), "2001:2::2", 2).unwrap();
    let refused = sb
        .ok(&[
            "ip",
            "netns",
            "exec",
            "red",
            "python3",
            "-c",
            UDP_REFUSED,
            "2001:2::2",
            "9",
        ])
        .unwrap();
    assert_eq!(refused.stdout.trim(), "refused", "{refused}");
    assert_eq!(counted("leak"), 0);
    assert!(counted("nat") >= 6, "{}", nft("list table inet watch"));
    // Nor does a header an ICMPv6 error quotes: blue's port unreachable
    // about a datagram to a published UDP port comes back to outside
    // (which sees its send refused) quoting the published address, never
    // blue's. The quoted destination is 72 bytes into the packet: 40 of
    // IPv6, 8 of ICMPv6, 24 into the quoted IPv6 header.
    sb.netlab_ok(&["publish", "add", "blue", "5353:53/udp"])
        .unwrap();
    for (chain, priority, quoted) in [
        ("quoted_lab", -298, "@nh,576,64 0xfd00001500000000"),
        ("quoted_any", -297, ""),
    ] {
        nft(&format!(
            "'add chain inet watch {chain} {{ type filter hook prerouting priority {priority} ; }}'"
        ));
        nft(&format!(
            "add rule inet watch {chain} icmpv6 type destination-unreachable {quoted} counter"
        ));
    }
    let refused = sb
        .ok(&[
            "ip",
            "netns",
            "exec",
            "outside",
            "python3",
            "-c",
            UDP_REFUSED,
            "2001:2::1",
            "5353",
        ])
        .unwrap();
    assert_eq!(refused.stdout.trim(), "refused", "{refused}");
    assert!(
        counted("quoted_any") >= 1,
        "{}",
        nft("list table inet watch")
    );
    assert_eq!(counted("quoted_lab"), 0, "{}", nft("list table inet watch"));
    // A namespace reaches its own published port (hairpin, seen as the
    // bridge's address), and a neighbour's directly.
    assert_eq!(seen_as(&sb, "blue", "fd00:15::5", "8080"), "fd00:15::5");
    assert_eq!(seen_as(&sb, "red", "fd00:15::2", "80"), "fd00:15::1");
    // Routed access to the masqueraded subnet stays closed (the world
    // routes it via the uplink), and so does an unpublished port.
    assert!(!connects(&sb, "outside", "fd00:15::2", "80"));
    assert!(!answers(&sb, "outside", "fd00:15::1"));
    assert!(!connects(&sb, "outside", "2001:2::1", "8081"));

    // Published ports change at run time, for both families.
    sb.netlab_ok(&["publish", "add", "blue", "8081:80/tcp"])
        .unwrap();
    assert_eq!(seen_as(&sb, "outside", "2001:2::1", "8081"), "2001:2::2");
    sb.netlab_ok(&["publish", "rm", "8080/tcp"]).unwrap();
    assert!(!connects(&sb, "outside", "2001:2::1", "8080"));
    if datapath != "iptables" {
        // netlab's own conntrack holds the IPv6 flows, and says what they
        // were translated by.
        let flows = sb.netlab_ok(&["conntrack"]).unwrap();
        assert!(
            flows.stdout.contains("src=2001:2::2 dst=2001:2::1 sport=")
                && flows.stdout.contains("dnat"),
            "{flows}"
        );
        assert!(
            flows.stdout.contains("src=fd00:15::1 dst=2001:2::2") && flows.stdout.contains("snat"),
            "{flows}"
        );
        let status = sb.status().unwrap();
        for counter in [
            "snat_new",
            "dnat_new",
            "hairpin_new",
            "icmp_error_translated",
        ] {
            assert!(
                nat_counter(&status, counter).is_some_and(|n| n >= 1),
                "{counter}: {status:?}"
            );
        }
    }

    drop(blue.stop());
    drop(world.stop());
    sb.netlab_ok(&["down"]).unwrap();
    forwarding("0");
    sb.assert_no_lab_traces("default").unwrap();
    let rules = sb.ok(&["ip6tables-save"]).unwrap();
    assert!(!rules.stdout.contains("NL-default"), "{rules}");
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn translates_ipv6_as_docker_does_on_bridge() {
    translates_ipv6_as_docker_does("bridge");
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn translates_ipv6_as_docker_does_on_redirect() {
    translates_ipv6_as_docker_does("redirect");
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn translates_ipv6_as_docker_does_on_iptables() {
    translates_ipv6_as_docker_does("iptables");
}

/// `HOST PORT`: what the server there says the connection came from, then
/// whom the socket says it is connected to (`getpeername`).
const ASK6_PEER: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
seen = s.makefile().readline().strip()
print(seen, "[%s]:%d" % s.getpeername()[:2])
"#;

/// `PORT`: a UDP echo server on every IPv6 address.
const UDP6_ECHO: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("::", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(65535)
    s.sendto(data, peer)
"#;

/// `HOST PORT MODE [BIND_PORT]`: one datagram, sent with `sendto` on an
/// unconnected socket or after `connect`; prints where the echo came from.
const UDP6_FROM: &str = r#"
import socket, sys
host, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.settimeout(3)
if len(sys.argv) > 4:
    s.bind(("::", int(sys.argv[4])))
if mode == "connect":
    s.connect((host, port))
    s.send(b"ping")
    data = s.recv(2048)
    peer = s.getpeername()
else:
    s.sendto(b"ping", (host, port))
    data, peer = s.recvfrom(2048)
print(data.decode(), "from [%s]:%d" % peer[:2])
"#;

/// The host's own IPv6 connections to a published port, as Docker's
/// ip6tables DNAT in OUTPUT has them: on the uplink's IPv6 address they
/// reach blue, and the socket sees the address it asked for (the eBPF
/// datapaths translate at the socket, `connect6`/`sendmsg6`, and show it
/// back with `getpeername6`/`recvmsg6`); on the eBPF datapaths `[::1]`
/// too, which ip6tables cannot (IPv6 has no `route_localnet`). And the
/// host's own flows are tracked: a reply to a host socket whose port is a
/// published port's number is that socket's, not a new connection to the
/// published port.
fn host_reaches_ipv6_published_port(datapath: &str) {
    let sb = Sandbox::new().unwrap();
    sb.netlab_ok(&["up", "--dual-stack", "--datapath", datapath])
        .unwrap();
    sb.netlab_ok(&["publish", "add", "blue", "5353:53/udp"])
        .unwrap();
    let life = Duration::from_secs(60);
    let mut blue = sb
        .spawn(
            &[
                "ip",
                "netns",
                "exec",
                "blue",
                "python3",
                "-u",
                "-c",
                PEER6_SERVER,
                "80",
            ],
            life,
        )
        .unwrap();
    blue.wait_for("ready", Duration::from_secs(10)).unwrap();
    let mut echo = sb
        .spawn(
            &[
                "ip", "netns", "exec", "blue", "python3", "-u", "-c", UDP6_ECHO, "53",
            ],
            life,
        )
        .unwrap();
    echo.wait_for("ready", Duration::from_secs(10)).unwrap();

    let mut hosts = vec!["2001:2::1"];
    if datapath != "iptables" {
        hosts.push("::1");
    }
    for host in hosts {
        let out = sb.ok(&["python3", "-c", ASK6_PEER, host, "8080"]).unwrap();
        let (seen, peer) = out.stdout.trim().split_once(' ').unwrap();
        // Blue sees one of the host's own addresses.
        assert!(
            ["2001:2::1", "fd00:15::5", "::1"].contains(&seen),
            "{host}: {out}"
        );
        assert_eq!(peer, format!("[{host}]:8080"), "{host}: {out}");
        for mode in ["sendto", "connect"] {
            let out = sb
                .ok(&["python3", "-c", UDP6_FROM, host, "5353", mode])
                .unwrap();
            assert_eq!(
                out.stdout.trim(),
                format!("ping from [{host}]:5353"),
                "{host} {mode}: {out}"
            );
        }
    }
    let out = sb
        .ok(&[
            "python3",
            "-c",
            UDP6_FROM,
            "fd00:15::2",
            "53",
            "sendto",
            "5353",
        ])
        .unwrap();
    assert_eq!(out.stdout.trim(), "ping from [fd00:15::2]:53", "{out}");
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn host_reaches_ipv6_published_port_on_bridge() {
    host_reaches_ipv6_published_port("bridge");
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn host_reaches_ipv6_published_port_on_redirect() {
    host_reaches_ipv6_published_port("redirect");
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn host_reaches_ipv6_published_port_on_iptables() {
    host_reaches_ipv6_published_port("iptables");
}

/// `HOST PORT SIZE`: one UDP datagram of SIZE bytes (the sender's kernel
/// fragments what the link's MTU does not hold); prints `reply N` with the
/// echo's size, or `timeout`.
const UDP6_BIG: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.settimeout(3)
s.connect((sys.argv[1], int(sys.argv[2])))
s.send(bytes(i % 251 for i in range(int(sys.argv[3]))))
try:
    print("reply", len(s.recv(65535)))
except socket.timeout:
    print("timeout")
"#;

/// IPv6 fragments through NAT66, both ways, as ip6tables (which
/// reassembles them first) carries them: a 3,000-byte datagram, cut in
/// three by its sender, masqueraded from red to the world and back,
/// DNATed from the world to a published port and back, and from red to
/// the same port on its own segment (bridged on). The eBPF
/// datapaths translate the first fragment and remember its ports for the
/// later ones (`FRAGMENTS6`), as for IPv4.
fn ipv6_fragments_cross_nat66(datapath: &str) {
    let sb = Sandbox::new().unwrap();
    sb.netlab_ok(&["up", "--dual-stack", "--datapath", datapath])
        .unwrap();
    sb.netlab_ok(&["publish", "add", "blue", "5353:53/udp"])
        .unwrap();
    let life = Duration::from_secs(60);
    let mut servers = Vec::new();
    for (netns, port) in [("blue", "53"), ("outside", "9000")] {
        let mut server = sb
            .spawn(
                &[
                    "ip", "netns", "exec", netns, "python3", "-u", "-c", UDP6_ECHO, port,
                ],
                life,
            )
            .unwrap();
        server.wait_for("ready", Duration::from_secs(10)).unwrap();
        servers.push(server);
    }
    // The third: red to the published port on the bridge's address, whose
    // backend shares red's segment: DNATed and bridged on, later
    // fragments included.
    for (netns, host, port) in [
        ("red", "2001:2::2", "9000"),
        ("outside", "2001:2::1", "5353"),
        ("red", "fd00:15::5", "5353"),
    ] {
        let out = sb
            .ok(&[
                "ip", "netns", "exec", netns, "python3", "-c", UDP6_BIG, host, port, "3000",
            ])
            .unwrap();
        assert_eq!(
            out.stdout.trim(),
            "reply 3000",
            "{netns} to [{host}]:{port}: {out}"
        );
    }
    if datapath != "iptables" {
        let status = sb.status().unwrap();
        let fragments = status
            .nat
            .as_ref()
            .and_then(|nat| nat.counters.get("fragment").copied())
            .unwrap_or(0);
        // Two later fragments per datagram, six datagrams, each
        // translated once.
        assert!(
            fragments >= 12,
            "{fragments} fragments translated: {status:?}"
        );
    }
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn ipv6_fragments_cross_nat66_on_bridge() {
    ipv6_fragments_cross_nat66("bridge");
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn ipv6_fragments_cross_nat66_on_redirect() {
    ipv6_fragments_cross_nat66("redirect");
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn ipv6_fragments_cross_nat66_on_iptables() {
    ipv6_fragments_cross_nat66("iptables");
}
