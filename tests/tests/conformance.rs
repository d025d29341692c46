//! The differential conformance suite (issue 9): every case runs on every
//! datapath (`iptables`, `bridge`, `redirect`), each in its own sandbox,
//! and what `red`, `blue` and `outside` received is compared with netlab's
//! `iptables` datapath, the netfilter reference (see
//! `netlab_tests::conformance` for what is compared and what is
//! normalised). In every case, on every datapath, `outside` must never see
//! a lab address (192.168.15.0/24, and the dual-stack lab's fd00:15::/64),
//! in any IP header or quoted header. IPv6 cases run on the dual-stack
//! lab, with its IPv6 subnet masqueraded (NAT66) or bridged, against
//! ip6tables.
//!
//! Where netfilter as netlab configures it is wrong too (malformed L4
//! leaking untranslated), the case states the netfilter-correct outcome as
//! an absolute requirement instead of comparing.
//!
//! The seeded fuzzer's CI run is `fuzz_ci` at the end; the long run is
//! `cargo xtask fuzz`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test fails by panicking, helpers included"
)]

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, Result};
use netlab_tests::conformance::{
    Case, Intended, Record, Reference, fuzz,
    lab::{
        BLUE, BLUE6, ConfLab, DEFAULT_TOPOLOGY, GATEWAY6, OUTSIDE, OUTSIDE6, RED, RED6, UPLINK,
        UPLINK6,
    },
    packet::{
        self, ICMP_DEST_UNREACH, ICMP_ECHO_REQUEST, ICMPV6_ECHO_REQUEST, Ip, Ip6, PROTO_ICMP,
        PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_SYN, Tcp,
    },
    run_case, scripts,
};

/// Differences kept on purpose, with the reason; every other difference
/// the suite finds is a bug to fix.
const INTENDED: &[Intended] = &[
    Intended {
        case: "fragments_to_published_udp",
        datapath: "bridge",
        place: "step `crafted fragments in reverse order`",
        only_field: None,
        reason: "netfilter reassembles a datagram before NAT (nf_defrag_ipv4); a TC program \
                 cannot hold a fragment until its first arrives, so later fragments that come \
                 first are dropped and counted (frag_unknown), as Cilium drops them \
                 (DROP_FRAG_NOT_FOUND), and the rest of the datagram is lost",
    },
    Intended {
        case: "fragments_to_published_udp",
        datapath: "redirect",
        place: "step `crafted fragments in reverse order`",
        only_field: None,
        reason: "as for `bridge`: fragments ahead of their first cannot be translated",
    },
    Intended {
        case: "dual_stack_sockets_on_the_host",
        datapath: "bridge",
        place: "step `dual-stack and unconnected sockets`",
        only_field: None,
        reason: "the host's own connections to a published port are translated at the socket \
                 (cgroup connect/sendmsg hooks, as Cilium's socket LB): the kernel then picks \
                 the source for the backend's address, the host's address on the lab's segment \
                 (192.168.15.5), where netfilter's OUTPUT DNAT keeps the one picked for the \
                 published address (198.18.0.1); Docker's userland proxy shows the backend the \
                 bridge's address too",
    },
    Intended {
        case: "dual_stack_sockets_on_the_host",
        datapath: "redirect",
        place: "step `dual-stack and unconnected sockets`",
        only_field: None,
        reason: "as for `bridge`: socket-level translation picks the source on the lab's segment",
    },
    Intended {
        case: "one_client_port_to_two_published_ports",
        datapath: "bridge",
        place: "step `from 21030 to 8081` @ blue",
        only_field: Some("198.18.0.2:"),
        reason: "the second flow's new source port: netfilter's implicit source NAT picks it \
                 by a keyed hash from 1024-65535, netlab searches its masquerade range \
                 (32768-60999), as for every port it allocates",
    },
    Intended {
        case: "one_client_port_to_two_published_ports",
        datapath: "redirect",
        place: "step `from 21030 to 8081` @ blue",
        only_field: Some("198.18.0.2:"),
        reason: "as for `bridge`: the remapped port comes from another range",
    },
    Intended {
        case: "broadcast_and_multicast",
        datapath: "iptables",
        place: "@ red",
        only_field: None,
        reason: "the iptables datapath turns hairpin mode on on the bridge ports (for hairpin \
                 NAT through br_netfilter, as Docker without its userland proxy), so the \
                 bridge floods red's broadcasts and multicasts back to red too",
    },
];

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn ip6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn check(case: &Case) {
    let outcome = run_case(case, INTENDED);
    eprintln!("{}", outcome.report);
    assert!(!outcome.failed, "{}", outcome.report);
}

/// The `from HOST:PORT ...` lines a server printed, with the port dropped
/// (it is the client's or masquerade's choice).
fn clients(server: &netlab_tests::Background) -> Vec<String> {
    ConfLab::lines_of(server, "from ")
        .iter()
        .map(|line| {
            let mut words = line.split_whitespace();
            let _ = words.next();
            let host = words
                .next()
                .and_then(|h| h.rsplit_once(':'))
                .map_or("?", |(h, _)| h);
            let rest: Vec<&str> = words.collect();
            format!("from {host} {}", rest.join(" "))
                .trim_end()
                .to_owned()
        })
        .collect()
}

/// The port of the first `from HOST:PORT` line a server printed.
fn first_client_port(server: &netlab_tests::Background) -> Result<u16> {
    ConfLab::lines_of(server, "from ")
        .first()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|hp| hp.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .with_context(|| format!("no client in the server's log: {}", server.stdout()))
}

fn stdout(out: &netlab_tests::Output) -> String {
    out.stdout.trim().to_owned()
}

// ---------------------------------------------------------------------------
// The cases
// ---------------------------------------------------------------------------

/// Real clients through every kind of NAT: masquerade (TCP, UDP, ping),
/// a published port from outside, hairpin from red. The baseline every
/// other case builds on.
fn real_clients(datapath: &str) -> Result<Record> {
    let mut lab = ConfLab::up(datapath)?;
    let _tcp_out = lab.server("outside", scripts::TCP_SERVER, &["9100"])?;
    let _udp_out = lab.server("outside", scripts::UDP_SERVER, &["9000"])?;
    let blue = lab.server("blue", scripts::TCP_SERVER, &["80"])?;
    lab.observe("servers up")?;

    let out = lab.py(
        Some("red"),
        scripts::TCP_ONCE,
        &[OUTSIDE, "9100", "red-tcp"],
    )?;
    lab.note(
        "red tcp to outside",
        out.stdout.split(" from").next().unwrap_or("").trim(),
    );
    lab.observe("red tcp to outside")?;

    let out = lab.py(Some("red"), scripts::UDP_CLIENT, &[OUTSIDE, "9000", "100"])?;
    lab.note("red udp to outside", stdout(&out));
    lab.observe("red udp to outside")?;

    let out = lab.sb.run(&[
        "ip", "netns", "exec", "red", "ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "1",
        OUTSIDE,
    ])?;
    lab.note("red ping outside", format!("success={}", out.success()));
    lab.observe("red ping outside")?;

    let out = lab.py(
        Some("outside"),
        scripts::TCP_ONCE,
        &[UPLINK, "8080", "published"],
    )?;
    lab.note(
        "outside to published 8080",
        out.stdout.split(" from").next().unwrap_or("").trim(),
    );
    lab.observe("outside to published 8080")?;

    let out = lab.py(Some("red"), scripts::TCP_ONCE, &[UPLINK, "8080", "hairpin"])?;
    lab.note(
        "red hairpin to 8080",
        out.stdout.split(" from").next().unwrap_or("").trim(),
    );
    lab.observe("red hairpin to 8080")?;
    lab.note("blue's clients", clients(&blue).join(", "));
    Ok(lab.record)
}

/// Difference 1: malformed L4 from red to outside. The kernel forwards
/// without validating L4, and conntrack marks these INVALID, which
/// MASQUERADE skips: nothing with a lab source may reach outside (the
/// iptables datapath needs its `--ctstate INVALID -j DROP` for this).
fn malformed_l4_from_red(datapath: &str) -> Result<Record> {
    let mut lab = ConfLab::up(datapath)?;
    let gw = lab.mac(None, "v-net-0")?;
    let (red, out) = (ip(RED), ip(OUTSIDE));
    // Warm up ARP both ways so that nothing is lost to resolution.
    let warm = lab.sb.run(&[
        "ip", "netns", "exec", "red", "ping", "-c", "1", "-W", "1", OUTSIDE,
    ])?;
    lab.note("warm-up ping", format!("success={}", warm.success()));
    lab.observe("warm-up")?;

    let mut bad_offset = Tcp::new(21001, 9100, TCP_SYN);
    bad_offset.data_offset = Some(4);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "tcp data offset 4",
            Ip::new(red, out, PROTO_TCP, 0x0101).packet(&bad_offset.segment(red, out, b"doff4")),
        ),
        (
            "6-byte tcp header",
            Ip::new(red, out, PROTO_TCP, 0x0102)
                .packet(&Tcp::new(21002, 9100, TCP_SYN).segment(red, out, b"")[..6]),
        ),
        (
            "4-byte icmp header",
            Ip::new(red, out, PROTO_ICMP, 0x0103)
                .packet(&packet::icmp_echo(ICMP_ECHO_REQUEST, 7, 1, b"")[..4]),
        ),
        ("4-byte udp header", {
            let d = packet::udp(red, out, 21004, 9000, b"");
            Ip::new(red, out, PROTO_UDP, 0x0104).packet(&d[..4])
        }),
        ("icmp error quoting a broken header", {
            // The quoted "IP header" claims 60 bytes of header but has 20.
            let mut inner = Ip::new(out, red, PROTO_UDP, 0x0bad)
                .packet(&packet::udp(out, red, 9000, 21005, b""));
            inner[0] = 0x4f;
            Ip::new(red, out, PROTO_ICMP, 0x0105).packet(&packet::icmp(
                ICMP_DEST_UNREACH,
                3,
                [0; 4],
                &inner[..20],
            ))
        }),
        ("icmp error quoting a truncated udp header", {
            let inner = Ip::new(out, red, PROTO_UDP, 0x0bae)
                .packet(&packet::udp(out, red, 9000, 21006, b""));
            Ip::new(red, out, PROTO_ICMP, 0x0106).packet(&packet::icmp(
                ICMP_DEST_UNREACH,
                3,
                [0; 4],
                &inner[..22],
            ))
        }),
    ];
    for (step, pkt) in cases {
        lab.send("red", &gw, &[pkt])?;
        lab.observe(step)?;
    }
    Ok(lab.record)
}

/// Difference 2a: a 3000-byte UDP reply (fragmented by outside) to a
/// masqueraded flow reaches red.
fn fragmented_reply_to_masquerade(datapath: &str) -> Result<Record> {
    let mut lab = ConfLab::up(datapath)?;
    let server = lab.server("outside", scripts::UDP_SERVER, &["9000", "3000"])?;
    let out = lab.py(Some("red"), scripts::UDP_CLIENT, &[OUTSIDE, "9000", "100"])?;
    lab.note("red's client", stdout(&out));
    lab.require(
        stdout(&out) == "reply 3000",
        format!("red did not get its 3000-byte reply: {}", stdout(&out)),
    );
    lab.note("outside's server", clients(&server).join(", "));
    lab.observe("3000-byte reply")?;
    Ok(lab.record)
}

/// Difference 2b: fragmented datagrams to a published UDP port reach
/// blue: from a real socket, and crafted fragments sent in reverse order.
fn fragments_to_published_udp(datapath: &str) -> Result<Record> {
    let mut lab = ConfLab::up(datapath)?;
    lab.sb
        .netlab_ok(&["publish", "add", "blue", "5353:53/udp"])?;
    let server = lab.server("blue", scripts::UDP_SERVER, &["53"])?;
    let out = lab.py(
        Some("outside"),
        scripts::UDP_CLIENT,
        &[UPLINK, "5353", "3000"],
    )?;
    lab.note("outside's client", stdout(&out));
    lab.require(
        stdout(&out) == "reply 3000",
        format!(
            "outside's 3000-byte datagram did not come back: {}",
            stdout(&out)
        ),
    );
    lab.observe("3000 bytes through 5353")?;
    // Compared: what the server got from the real socket. What it gets of
    // the crafted fragments is an intended difference, required below.
    lab.note("blue's server", clients(&server).join(", "));

    let mac = lab.mac(None, "nl-uplink")?;
    let (out_addr, up) = (ip(OUTSIDE), ip(UPLINK));
    let whole = Ip::new(out_addr, up, PROTO_UDP, 0x0201).packet(&packet::udp(
        out_addr,
        up,
        21010,
        5353,
        &[0x5a; 2000],
    ));
    let mut fragments = packet::fragment(&whole, 800);
    fragments.reverse();
    lab.send("outside", &mac, &fragments)?;
    lab.observe("crafted fragments in reverse order")?;
    let got = clients(&server);
    let reassembled = got.iter().any(|c| c == "from 198.18.0.2 2000");
    if datapath == "iptables" {
        lab.require(
            reassembled,
            format!("blue never got the reassembled 2000-byte datagram: {got:?}"),
        );
    } else {
        // Intended (see INTENDED): fragments ahead of their first cannot be
        // translated by a TC program; they must be dropped and counted,
        // never delivered half translated.
        let status = lab.sb.status()?;
        let dropped = netlab_tests::nat_counter(&status, "frag_unknown").unwrap_or(0);
        lab.require(
            !reassembled && dropped >= 2,
            format!(
                "fragments ahead of their first: expected them dropped and counted \
                 (frag_unknown = {dropped}), blue got {got:?}"
            ),
        );
    }
    Ok(lab.record)
}

/// Difference 3a: a host socket bound to the port masquerade gave red's
/// flow to the same destination still connects (netfilter remaps one of
/// them), and red's flow keeps working.
fn host_socket_on_a_masquerade_port(datapath: &str) -> Result<Record> {
    let mut lab = ConfLab::up(datapath)?;
    let server = lab.server("outside", scripts::TCP_SERVER, &["9100"])?;
    let mut red = lab.sb.spawn(
        &netlab_tests::conformance::lab::python(Some("red"), scripts::TCP_HOLD, &[OUTSIDE, "9100"]),
        netlab_tests::conformance::lab::LIFETIME,
    )?;
    red.wait_for("connected from", std::time::Duration::from_secs(10))?;
    let mut server = server;
    server.wait_for("from ", std::time::Duration::from_secs(10))?;
    red.send_line("first")?;
    red.wait_for("echo first", std::time::Duration::from_secs(10))?;
    let port = first_client_port(&server)?.to_string();
    lab.observe("red's flow")?;

    let out = lab.py(
        None,
        scripts::TCP_ONCE,
        &[OUTSIDE, "9100", "host", "0.0.0.0", &port],
    )?;
    let host = stdout(&out).replace(&port, "MASQUERADE-PORT");
    lab.note("host bound to red's masquerade port", host.clone());
    lab.require(
        host == "ok from MASQUERADE-PORT",
        format!("the host's socket on red's masquerade port {port} did not connect: {host}"),
    );
    lab.observe("host on the same port")?;

    red.send_line("second")?;
    let red_ok = red
        .wait_for("echo second", std::time::Duration::from_secs(5))
        .is_ok();
    lab.note("red's flow afterwards", format!("echoes={red_ok}"));
    lab.require(
        red_ok,
        "red's connection broke after the host used its port",
    );
    lab.observe("red again")?;
    Ok(lab.record)
}

/// Difference 3b: a host connection from local port 8080 (published) to
/// outside gets its replies, instead of having them taken for new DNAT
/// flows to blue.
fn host_connection_from_published_port(datapath: &str) -> Result<Record> {
    let mut lab = ConfLab::up(datapath)?;
    let _server = lab.server("outside", scripts::TCP_SERVER, &["9100"])?;
    let blue = lab.server("blue", scripts::TCP_SERVER, &["80"])?;
    let out = lab.py(
        None,
        scripts::TCP_ONCE,
        &[OUTSIDE, "9100", "from-8080", "0.0.0.0", "8080"],
    )?;
    lab.note("host from port 8080", stdout(&out));
    lab.require(
        stdout(&out) == "ok from 8080",
        format!(
            "the host's connection from port 8080 failed: {}",
            stdout(&out)
        ),
    );
    lab.note("blue's clients", clients(&blue).join(", "));
    lab.observe("host from 8080")?;
    Ok(lab.record)
}

/// Difference 4: after `publish rm 8080/tcp`, a SYN from a client port that
/// had a flow a moment ago (now TIME_WAIT) is a new flow: it must not reach
/// blue.
fn publish_rm_then_port_reuse(datapath: &str) -> Result<Record> {
    let mut lab = ConfLab::up(datapath)?;
    let _blue = lab.server("blue", scripts::TCP_SERVER, &["80"])?;
    let out = lab.py(
        Some("outside"),
        scripts::TCP_ONCE,
        &[UPLINK, "8080", "before-rm", "0.0.0.0", "21020"],
    )?;
    lab.note("before rm", stdout(&out));
    lab.observe("a connection from 21020")?;
    lab.sb.netlab_ok(&["publish", "rm", "8080/tcp"])?;

    let mac = lab.mac(None, "nl-uplink")?;
    let (out_addr, up) = (ip(OUTSIDE), ip(UPLINK));
    let mut syn = Tcp::new(21020, 8080, TCP_SYN);
    syn.seq = 0x5000_0000;
    let packet = Ip::new(out_addr, up, PROTO_TCP, 0x0401).packet(&syn.segment(out_addr, up, b""));
    lab.send("outside", &mac, &[packet])?;
    lab.observe("a SYN from 21020 after rm")?;
    let reached_blue: Vec<String> = lab
        .record
        .seen
        .get(&("a SYN from 21020 after rm".to_owned(), "blue".to_owned()))
        .into_iter()
        .flatten()
        .filter(|l| l.starts_with("tcp "))
        .cloned()
        .collect();
    lab.require(
        reached_blue.is_empty(),
        format!("after `publish rm 8080/tcp`, the reused client port still reached blue: {reached_blue:?}"),
    );
    Ok(lab.record)
}

/// One client port reaching two published ports of one backend (blue:80
/// as 8080 and 8081), one connection after the other: the backend would
/// see the same tuple for both flows, so netfilter's implicit source NAT
/// gives the second another source port. (A Service's NodePorts met it by
/// chance: a client's kernel may reuse a port toward another port.)
fn one_client_port_to_two_published_ports(datapath: &str) -> Result<Record> {
    let mut lab = ConfLab::up(datapath)?;
    let blue = lab.server("blue", scripts::TCP_SERVER, &["80"])?;
    lab.sb
        .netlab_ok(&["publish", "add", "blue", "8081:80/tcp"])?;
    for port in ["8080", "8081"] {
        let out = lab.py(
            Some("outside"),
            scripts::TCP_ONCE,
            &[UPLINK, port, &format!("to-{port}"), "0.0.0.0", "21030"],
        )?;
        lab.note(&format!("from 21030 to {port}"), stdout(&out));
        lab.observe(&format!("from 21030 to {port}"))?;
    }
    let ports: Vec<String> = ConfLab::lines_of(&blue, "from ")
        .iter()
        .filter_map(|l| {
            l.split_whitespace()
                .nth(1)?
                .rsplit_once(':')
                .map(|(_, p)| p.to_owned())
        })
        .collect();
    lab.note(
        "blue saw the first from 21030, the second from another port",
        (ports.len() == 2 && ports[0] == "21030" && ports[1] != "21030").to_string(),
    );
    Ok(lab.record)
}

/// Difference 5: a SYN from outside with blue's address as its source, to
/// the published port, and UDP and ping with red's. Nothing with a lab
/// address may come back out (the invariant). The reference does not
/// compare: with rp_filter off (a new namespace's default) netfilter
/// delivers the SYN to blue, where the fix is to drop it at the uplink.
fn spoofed_lab_source_from_outside(datapath: &str) -> Result<Record> {
    let mut lab = ConfLab::up(datapath)?;
    let _blue = lab.server("blue", scripts::TCP_SERVER, &["80"])?;
    let mac = lab.mac(None, "nl-uplink")?;
    let (up, blue, red) = (ip(UPLINK), ip(BLUE), ip(RED));
    let syn = Ip::new(blue, up, PROTO_TCP, 0x0501)
        .packet(&Tcp::new(21030, 8080, TCP_SYN).segment(blue, up, b""));
    lab.send("outside", &mac, &[syn])?;
    lab.observe("SYN from 192.168.15.2 to 8080")?;
    let udp =
        Ip::new(red, up, PROTO_UDP, 0x0502).packet(&packet::udp(red, up, 21031, 9000, b"spoof"));
    let echo = Ip::new(red, up, PROTO_ICMP, 0x0503).packet(&packet::icmp_echo(
        ICMP_ECHO_REQUEST,
        21032,
        1,
        b"spoof",
    ));
    lab.send("outside", &mac, &[udp, echo])?;
    lab.observe("UDP and ping from 192.168.15.1")?;
    Ok(lab.record)
}

/// Difference 6: `nat.uplink` naming a bridge is refused with an error
/// that names it, or masquerade works through it.
fn bridge_as_uplink(datapath: &str) -> Result<Record> {
    let topology = DEFAULT_TOPOLOGY
        .replace(
            r#"peer = { name = "nl-uplink", addresses = ["198.18.0.1/24"] }"#,
            r#"peer = { name = "nl-uplink", bridge = "br-uplink" }"#,
        )
        .replace(r#"uplink = "nl-uplink""#, r#"uplink = "br-uplink""#)
        + "\n[[bridge]]\nname = \"br-uplink\"\naddresses = [\"198.18.0.1/24\"]\n";
    assert!(
        topology.contains(r#"bridge = "br-uplink""#),
        "the default topology changed"
    );
    match ConfLab::try_up(datapath, Some(&topology))? {
        Err(refused) => {
            let mut record = Record::default();
            let names_it = refused.stderr.contains("br-uplink");
            record.notes.insert("verdict".into(), "acceptable".into());
            if !names_it {
                record.violations.push(format!(
                    "`netlab up` refused a bridge uplink without naming `br-uplink`: {refused}"
                ));
            }
            Ok(record)
        }
        Ok(mut lab) => {
            let server = lab.server("outside", scripts::TCP_SERVER, &["9100"])?;
            let out = lab.py(
                Some("red"),
                scripts::TCP_ONCE,
                &[OUTSIDE, "9100", "via-bridge"],
            )?;
            let seen = clients(&server);
            lab.observe("red to outside")?;
            let works = stdout(&out).starts_with("ok") && seen == ["from 198.18.0.1"];
            lab.require(
                works,
                format!(
                    "a bridge uplink was accepted but masquerade does not work: client {}, \
                     server saw {seen:?}",
                    stdout(&out)
                ),
            );
            lab.record.seen.clear();
            lab.note("verdict", "acceptable");
            Ok(lab.record)
        }
    }
}

/// Broadcast and multicast from red: the `redirect` datapath must do as
/// the bridge does (blue receives them, the uplink never sends them).
fn broadcast_and_multicast(datapath: &str) -> Result<Record> {
    let mut lab = ConfLab::up(datapath)?;
    let red = ip(RED);
    let frames: [(&str, &str, &str); 4] = [
        ("limited broadcast", "255.255.255.255", "ff:ff:ff:ff:ff:ff"),
        ("subnet broadcast", "192.168.15.255", "ff:ff:ff:ff:ff:ff"),
        ("all-hosts multicast", "224.0.0.1", "01:00:5e:00:00:01"),
        ("group multicast", "239.1.2.3", "01:00:5e:01:02:03"),
    ];
    for (n, (step, dst, mac)) in frames.iter().enumerate() {
        let dst = ip(dst);
        let id = 0x0700 + n as u16;
        let p = Ip::new(red, dst, PROTO_UDP, id).packet(&packet::udp(
            red,
            dst,
            21040,
            9999,
            step.as_bytes(),
        ));
        lab.send("red", mac, &[p])?;
        lab.observe(step)?;
        let blue_got = lab
            .record
            .seen
            .get(&(step.to_string(), "blue".to_owned()))
            .is_some_and(|lines| lines.iter().any(|l| l.contains(&format!("id={id:#06x}"))));
        lab.require(blue_got, format!("blue did not receive red's {step}"));
        let outside_got = lab
            .record
            .seen
            .get(&(step.to_string(), "outside".to_owned()))
            .is_some_and(|lines| !lines.is_empty());
        lab.require(!outside_got, format!("red's {step} reached outside"));
    }
    Ok(lab.record)
}

/// ICMP errors about live flows reach the flow's owner translated, with the
/// quoted header's addresses, ports and L4 checksum made right.
fn icmp_errors_about_live_flows(datapath: &str) -> Result<Record> {
    let mut lab = ConfLab::up(datapath)?;
    let out = lab.py(
        Some("red"),
        scripts::UDP_CLIENT,
        &[OUTSIDE, "9999", "64", "21050"],
    )?;
    lab.note("red udp to a closed port", stdout(&out));
    lab.observe("port unreachable to red")?;

    lab.sb
        .netlab_ok(&["publish", "add", "blue", "5400:5400/udp"])?;
    let out = lab.py(
        Some("outside"),
        scripts::UDP_CLIENT,
        &[UPLINK, "5400", "64", "21051"],
    )?;
    lab.note("outside udp to a closed backend", stdout(&out));
    lab.observe("port unreachable to outside")?;

    // A TCP flow, then "fragmentation needed" about it from outside.
    let server = lab.server("outside", scripts::TCP_SERVER, &["9100"])?;
    let mut red = lab.sb.spawn(
        &netlab_tests::conformance::lab::python(Some("red"), scripts::TCP_HOLD, &[OUTSIDE, "9100"]),
        netlab_tests::conformance::lab::LIFETIME,
    )?;
    red.wait_for("connected from", std::time::Duration::from_secs(10))?;
    let mut server = server;
    server.wait_for("from ", std::time::Duration::from_secs(10))?;
    let port = first_client_port(&server)?;
    lab.observe("a tcp flow")?;
    let mac = lab.mac(None, "nl-uplink")?;
    let (up, out_addr) = (ip(UPLINK), ip(OUTSIDE));
    let mut quoted_tcp = Tcp::new(port, 9100, TCP_ACK);
    quoted_tcp.seq = 1;
    let quoted =
        Ip::new(up, out_addr, PROTO_TCP, 0x0801).packet(&quoted_tcp.segment(up, out_addr, b""));
    let mut mtu = [0_u8; 4];
    mtu[2..4].copy_from_slice(&1400_u16.to_be_bytes());
    let err = Ip::new(out_addr, up, PROTO_ICMP, 0x0802).packet(&packet::icmp(
        ICMP_DEST_UNREACH,
        4,
        mtu,
        &quoted,
    ));
    lab.send("outside", &mac, &[err])?;
    lab.observe("frag needed about red's tcp flow")?;

    let bad: Vec<String> = lab
        .record
        .seen
        .values()
        .flatten()
        .filter(|l| l.contains("[about:") && l.contains("BAD"))
        .cloned()
        .collect();
    lab.require(
        bad.is_empty(),
        format!("ICMP errors with a stale checksum: {bad:?}"),
    );
    Ok(lab.record)
}

/// The port search finds a free port whenever one exists: 100 flows from
/// red to one destination through a 100-port masquerade range all get
/// through (netfilter searches the whole range).
fn port_search_finds_every_free_port(datapath: &str) -> Result<Record> {
    let range = r#"port_range = "32768-60999""#;
    assert!(
        DEFAULT_TOPOLOGY.contains(range),
        "the default topology changed"
    );
    let topology = DEFAULT_TOPOLOGY.replace(range, r#"port_range = "40000-40099""#);
    let mut lab = ConfLab::up_with(datapath, Some(&topology))?;
    let server = lab.server("outside", scripts::UDP_SERVER, &["9000"])?;
    let gw = lab.mac(None, "v-net-0")?;
    let (red, out) = (ip(RED), ip(OUTSIDE));
    let packets: Vec<Vec<u8>> = (0..100_u16)
        .map(|i| {
            Ip::new(red, out, PROTO_UDP, 0x0900 + i).packet(&packet::udp(
                red,
                out,
                22000 + i,
                9000,
                b"flow",
            ))
        })
        .collect();
    lab.send("red", &gw, &packets)?;
    lab.observe("100 flows")?;
    let sources: std::collections::BTreeSet<String> = ConfLab::lines_of(&server, "from ")
        .iter()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .collect();
    lab.note("distinct sources outside saw", sources.len().to_string());
    lab.require(
        sources.len() == 100,
        format!(
            "only {} of 100 flows got a port from a 100-port range",
            sources.len()
        ),
    );
    // The lines name every translated packet; the count above says it all.
    lab.record.seen.clear();
    Ok(lab.record)
}

/// Established flows survive a SYN flood: with the smallest conntrack table
/// netlab allows (1024), 8000 SYNs from outside to the published port must
/// not evict the connection that was open before them.
fn established_flow_survives_a_syn_flood(datapath: &str) -> Result<Record> {
    let size = "conntrack_size = 65536";
    assert!(
        DEFAULT_TOPOLOGY.contains(size),
        "the default topology changed"
    );
    let topology = DEFAULT_TOPOLOGY.replace(size, "conntrack_size = 1024");
    let mut lab = ConfLab::up_with(datapath, Some(&topology))?;
    let _blue = lab.server("blue", scripts::TCP_SERVER, &["80"])?;
    let mut client = lab.sb.spawn(
        &netlab_tests::conformance::lab::python(
            Some("outside"),
            scripts::TCP_HOLD,
            &[UPLINK, "8080"],
        ),
        netlab_tests::conformance::lab::LIFETIME,
    )?;
    client.wait_for("connected from", std::time::Duration::from_secs(10))?;
    client.send_line("before")?;
    client.wait_for("echo before", std::time::Duration::from_secs(10))?;
    lab.observe("connected")?;

    let mac = lab.mac(None, "nl-uplink")?;
    let (out, up) = (ip(OUTSIDE), ip(UPLINK));
    let flood: Vec<Vec<u8>> = (0..8000_u16)
        .map(|i| {
            Ip::new(out, up, PROTO_TCP, 0x2000 + i)
                .packet(&Tcp::new(1024 + i, 8080, TCP_SYN).segment(out, up, b""))
        })
        .collect();
    for chunk in flood.chunks(500) {
        lab.send("outside", &mac, chunk)?;
    }
    lab.observe("flood")?;
    // Thousands of lines that say nothing the outcome does not.
    lab.record.seen.retain(|(step, _), _| step != "flood");

    client.send_line("after")?;
    let survived = client
        .wait_for("echo after", std::time::Duration::from_secs(5))
        .is_ok();
    lab.note(
        "the connection after the flood",
        format!("echoes={survived}"),
    );
    lab.require(
        survived,
        "the connection established before an 8000-SYN flood stopped working",
    );
    lab.observe("after the flood")?;
    Ok(lab.record)
}

/// Issue 21, item 4: the host connecting into the lab from a local port
/// that is also a published port (8080) gets its replies, instead of
/// having them DNATed to the port's backend.
fn host_into_the_lab_from_a_published_port(datapath: &str) -> Result<Record> {
    let mut lab = ConfLab::up(datapath)?;
    let _red = lab.server("red", scripts::TCP_SERVER, &["9100"])?;
    let blue = lab.server("blue", scripts::TCP_SERVER, &["80"])?;
    let out = lab.py(
        None,
        scripts::TCP_ONCE,
        &[RED, "9100", "host-into-red", "0.0.0.0", "8080"],
    )?;
    lab.note("host to red from port 8080", stdout(&out));
    lab.require(
        stdout(&out) == "ok from 8080",
        format!(
            "the host's connection into red from port 8080 failed: {}",
            stdout(&out)
        ),
    );
    lab.note("blue's clients", clients(&blue).join(", "));
    lab.observe("host into red from 8080")?;
    Ok(lab.record)
}

/// An `AF_INET6` socket connecting to an IPv4-mapped address (Java's and
/// many runtimes' default), then an unconnected UDP socket talking to two
/// published ports in turn: `HOST PORT_A PORT_B`. Prints the TCP outcome,
/// then one "reply from ADDR:PORT" (or "timeout") per datagram.
const DUAL_STACK_CLIENT: &str = r#"
import socket, sys
host, a, b = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
try:
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.settimeout(3)
    s.connect(("::ffff:" + host, 8080))
    s.sendall(b"mapped")
    s.shutdown(socket.SHUT_WR)
    got = b""
    while chunk := s.recv(65536):
        got += chunk
    print("tcp6 mapped " + ("ok" if got == b"mapped" else f"got {got!r}"))
except OSError as e:
    print(f"tcp6 mapped error {e!r}")
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(2)
for port in [a, b, a, b]:
    u.sendto(b"which", (host, port))
    try:
        _, peer = u.recvfrom(65535)
        print(f"to {port}: reply from {peer[0]}:{peer[1]}")
    except socket.timeout:
        print(f"to {port}: timeout")
"#;

/// Issue 21, item 5: dual-stack sockets on the host reach published ports
/// through IPv4-mapped addresses, and an unconnected UDP socket talking to
/// two published ports hears each answer from the port it asked.
fn dual_stack_sockets_on_the_host(datapath: &str) -> Result<Record> {
    let mut lab = ConfLab::up(datapath)?;
    lab.sb
        .netlab_ok(&["publish", "add", "blue", "5353:53/udp"])?;
    lab.sb
        .netlab_ok(&["publish", "add", "red", "5354:53/udp"])?;
    let _blue_tcp = lab.server("blue", scripts::TCP_SERVER, &["80"])?;
    let _blue = lab.server("blue", scripts::UDP_SERVER, &["53"])?;
    let _red = lab.server("red", scripts::UDP_SERVER, &["53"])?;
    let out = lab.py(None, DUAL_STACK_CLIENT, &[UPLINK, "5353", "5354"])?;
    let lines: Vec<&str> = out.stdout.lines().collect();
    lab.note("host's dual-stack client", lines.join("; "));
    lab.require(
        lines.first() == Some(&"tcp6 mapped ok"),
        format!("an AF_INET6 socket did not reach 8080 through ::ffff:{UPLINK}: {lines:?}"),
    );
    for (port, line) in [5353, 5354, 5353, 5354].iter().zip(lines.iter().skip(1)) {
        lab.require(
            *line == format!("to {port}: reply from {UPLINK}:{port}"),
            format!("the unconnected socket's answer to {port}: {line}"),
        );
    }
    lab.observe("dual-stack and unconnected sockets")?;
    Ok(lab.record)
}

/// Issue 21, item 7: a world host that routes the lab's subnet via the
/// uplink reaches no namespace, on any datapath (Docker 28 drops routed
/// access to a NAT network's unpublished ports; netlab's lab is closed
/// both ways). Absolute: netfilter as netlab configured it before let it in.
fn routed_access_into_the_lab(datapath: &str) -> Result<Record> {
    let mut lab = ConfLab::up(datapath)?;
    let blue_tcp = lab.server("blue", scripts::TCP_SERVER, &["80"])?;
    let blue_udp = lab.server("blue", scripts::UDP_SERVER, &["53"])?;
    lab.sb.ok(&[
        "ip",
        "-n",
        "outside",
        "route",
        "add",
        "192.168.15.0/24",
        "via",
        UPLINK,
    ])?;
    let tcp = lab.py(Some("outside"), scripts::TCP_ONCE, &[BLUE, "80", "routed"])?;
    let udp = lab.py(Some("outside"), scripts::UDP_CLIENT, &[BLUE, "53", "20"])?;
    lab.note("routed tcp to blue:80", stdout(&tcp));
    lab.note("routed udp to blue:53", stdout(&udp));
    lab.require(
        !stdout(&tcp).starts_with("ok") && stdout(&udp) != "reply 20",
        format!(
            "the world reached blue by routing: tcp `{}`, udp `{}`",
            stdout(&tcp),
            stdout(&udp)
        ),
    );
    lab.require(
        clients(&blue_tcp).is_empty() && clients(&blue_udp).is_empty(),
        format!(
            "blue's servers heard the world: {:?} {:?}",
            clients(&blue_tcp),
            clients(&blue_udp)
        ),
    );
    lab.observe("routed access")?;
    Ok(lab.record)
}

/// Issue 21, item 8: netlab carries no IPv6 yet, and the lab is closed for
/// it too. With IPv6 addresses and forwarding on the host, red's IPv6 to
/// the world and to blue's ULA address goes nowhere; link-local IPv6
/// between red and blue (neighbour discovery included) still works.
fn ipv6_stays_in_the_lab(datapath: &str) -> Result<Record> {
    let mut lab = ConfLab::up(datapath)?;
    for argv in [
        &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"][..],
        &[
            "ip",
            "addr",
            "add",
            "fd00:15::5/64",
            "dev",
            "v-net-0",
            "nodad",
        ],
        &[
            "ip",
            "addr",
            "add",
            "fd00:18::1/64",
            "dev",
            "nl-uplink",
            "nodad",
        ],
        &[
            "ip",
            "-n",
            "red",
            "addr",
            "add",
            "fd00:15::1/64",
            "dev",
            "veth-red",
            "nodad",
        ],
        &[
            "ip",
            "-n",
            "blue",
            "addr",
            "add",
            "fd00:15::2/64",
            "dev",
            "veth-blue",
            "nodad",
        ],
        &[
            "ip",
            "-n",
            "outside",
            "addr",
            "add",
            "fd00:18::2/64",
            "dev",
            "veth-outside",
            "nodad",
        ],
        &[
            "ip",
            "-n",
            "red",
            "-6",
            "route",
            "add",
            "default",
            "via",
            "fd00:15::5",
        ],
        &[
            "ip",
            "-n",
            "outside",
            "-6",
            "route",
            "add",
            "fd00:15::/64",
            "via",
            "fd00:18::1",
        ],
    ] {
        lab.sb.ok(argv)?;
    }
    let ping6 = |lab: &ConfLab, to: &str| -> Result<bool> {
        let out = lab.sb.run(&[
            "ip", "netns", "exec", "red", "ping", "-6", "-n", "-q", "-c", "2", "-W", "2", to,
        ])?;
        Ok(out.success())
    };
    // The control: IPv6 works between the host and the world (routes,
    // neighbour discovery), so what fails below fails for the lab's sake.
    let control = lab
        .sb
        .run(&["ping", "-6", "-n", "-q", "-c", "1", "-W", "2", "fd00:18::2"])?
        .success();
    lab.require(
        control,
        "the host cannot reach the world over IPv6: the case proves nothing",
    );
    // Link-local addresses are usable once duplicate address detection ends.
    let mut ll = None;
    for _ in 0..50 {
        let out = lab
            .sb
            .ok(&["ip", "-n", "blue", "-6", "addr", "show", "dev", "veth-blue"])?;
        // "inet6 fe80::.../64 scope link" (with "tentative" while DAD runs).
        let found = out.stdout.lines().find_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            (words.first() == Some(&"inet6")
                && words.contains(&"link")
                && !words.contains(&"tentative"))
            .then(|| words[1].split('/').next().unwrap_or_default().to_owned())
        });
        if found.is_some() {
            ll = found;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let ll = ll.context("blue has no usable link-local address within 5 s")?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    let world = ping6(&lab, "fd00:18::2")?;
    let blue = ping6(&lab, "fd00:15::2")?;
    let link_local = ping6(&lab, &format!("{ll}%veth-red"))?;
    lab.note(
        "red's IPv6",
        format!("world={world} blue-ula={blue} blue-link-local={link_local}"),
    );
    lab.require(
        !world && !blue && link_local,
        format!(
            "IPv6: red reached the world: {world}, blue's ULA: {blue} (both must fail); \
             blue's link-local: {link_local} (must work)"
        ),
    );
    if datapath != "iptables" {
        let status = lab.sb.status()?;
        let closed = netlab_tests::nat_counter(&status, "ipv6_closed").unwrap_or(0);
        lab.require(closed > 0, "netlab counted no ipv6_closed drop");
    }
    Ok(lab.record)
}

/// IPv6 inside the dual-stack lab (its IPv6 subnet bridged, the host
/// routing IPv6): pings red to blue and to the bridge's address, a TCP
/// connection red to blue, and a crafted datagram to a closed port of
/// blue, whose port unreachable comes back to red. Neighbour discovery is
/// the kernels' own, and must work for any of it to.
fn ipv6_between_namespaces(datapath: &str) -> Result<Record> {
    let mut lab = ConfLab::up_dual_stack(datapath)?;
    let blue = lab.server("blue", scripts::TCP_SERVER, &["80", "::"])?;
    lab.observe("server up")?;
    for (step, to) in [
        ("red ping6 blue", BLUE6),
        ("red ping6 the bridge", GATEWAY6),
    ] {
        let out = lab.sb.run(&[
            "ip", "netns", "exec", "red", "ping", "-6", "-n", "-q", "-c", "2", "-i", "0.2", "-W",
            "2", to,
        ])?;
        lab.note(step, format!("success={}", out.success()));
        lab.observe(step)?;
    }
    let out = lab.py(Some("red"), scripts::TCP_ONCE, &[BLUE6, "80", "red-tcp6"])?;
    lab.note(
        "red tcp6 to blue",
        out.stdout.split(" from").next().unwrap_or("").trim(),
    );
    lab.observe("red tcp6 to blue")?;
    lab.note("blue's clients", clients(&blue).join(", "));

    let blue_mac = lab.mac(Some("blue"), "veth-blue")?;
    let (red, blue6) = (ip6(RED6), ip6(BLUE6));
    let datagram = Ip6::new(red, blue6, PROTO_UDP, 0x0c01)
        .packet(&packet::udp(red, blue6, 21100, 9, b"closed"));
    lab.send("red", &blue_mac, &[datagram])?;
    lab.observe("crafted udp6 to a closed port of blue")?;
    Ok(lab.record)
}

/// The lab is as closed for IPv6 as for IPv4 (crafted packets on the
/// dual-stack lab with its IPv6 subnet bridged, on a host that routes
/// IPv6, whose world routes the lab's subnet to it): red reaches neither
/// the world nor, with a world source, blue; the world reaches red
/// neither routed nor with a spoofed lab source; the host's own uplink
/// address answers red as it answers any neighbour's ping.
fn ipv6_closed_lab(datapath: &str) -> Result<Record> {
    let mut lab = ConfLab::up_dual_stack(datapath)?;
    // Neighbour discovery first, so that nothing below waits on it.
    for (from, to) in [("red", GATEWAY6), ("red", BLUE6), ("outside", UPLINK6)] {
        let out = lab.sb.run(&[
            "ip", "netns", "exec", from, "ping", "-6", "-n", "-q", "-c", "1", "-W", "2", to,
        ])?;
        lab.note(
            &format!("warm-up {from} to {to}"),
            format!("success={}", out.success()),
        );
    }
    lab.observe("warm-up")?;
    let gateway = lab.mac(None, "v-net-0")?;
    let uplink = lab.mac(None, "nl-uplink")?;
    let blue_mac = lab.mac(Some("blue"), "veth-blue")?;
    let (red, blue, out, up) = (ip6(RED6), ip6(BLUE6), ip6(OUTSIDE6), ip6(UPLINK6));
    let spoofed = ip6("fd00:15::77");
    let udp = |src: Ipv6Addr, dst: Ipv6Addr, id: u16| {
        Ip6::new(src, dst, PROTO_UDP, id).packet(&packet::udp(src, dst, 21100, 9000, b"closed?"))
    };
    let echo = |src: Ipv6Addr, dst: Ipv6Addr, id: u16| {
        Ip6::new(src, dst, PROTO_ICMPV6, id).packet(&packet::icmp6_echo(
            src,
            dst,
            ICMPV6_ECHO_REQUEST,
            id,
            1,
            b"closed?",
        ))
    };
    let steps: [(&str, &str, &str, Vec<u8>); 6] = [
        (
            "red to the world",
            "red",
            gateway.as_str(),
            udp(red, out, 0x0d01),
        ),
        (
            "red to the uplink's own address",
            "red",
            gateway.as_str(),
            echo(red, up, 0x0d02),
        ),
        (
            "the world routed into the lab",
            "outside",
            uplink.as_str(),
            udp(out, red, 0x0d03),
        ),
        (
            "the world spoofing a lab source to red",
            "outside",
            uplink.as_str(),
            udp(spoofed, red, 0x0d04),
        ),
        (
            "the world spoofing a lab source to the uplink",
            "outside",
            uplink.as_str(),
            echo(spoofed, up, 0x0d05),
        ),
        (
            "red spoofing a world source to blue",
            "red",
            blue_mac.as_str(),
            udp(out, blue, 0x0d06),
        ),
    ];
    for (step, from, mac, packet) in steps {
        lab.send(from, mac, &[packet])?;
        lab.observe(step)?;
    }
    Ok(lab.record)
}

/// NAT66 with real clients on the dual-stack lab (its IPv6 subnet
/// masqueraded, as `netlab up --dual-stack` has it), against ip6tables:
/// red to the world masqueraded (TCP, UDP, ping), a UDP datagram to a
/// closed port of the world (its port unreachable translated back), the
/// world to a published port, red to it through the bridge's address, and
/// blue to its own (the hairpin).
fn ipv6_real_clients(datapath: &str) -> Result<Record> {
    let mut lab = ConfLab::up_with(datapath, Some(netlab::topology::DEFAULT_LAB_DUAL_STACK))?;
    let _tcp_out = lab.server("outside", scripts::TCP_SERVER, &["9100", "::"])?;
    let _udp_out = lab.server("outside", scripts::UDP_SERVER, &["9000", "-", "::"])?;
    let blue = lab.server("blue", scripts::TCP_SERVER, &["80", "::"])?;
    lab.observe("servers up")?;
    let steps: [(&str, &str, &str, &str, &str); 4] = [
        ("red tcp6 to outside", "red", OUTSIDE6, "9100", "red-tcp6"),
        (
            "outside to published [2001:2::1]:8080",
            "outside",
            UPLINK6,
            "8080",
            "published6",
        ),
        (
            "red to published [fd00:15::5]:8080",
            "red",
            GATEWAY6,
            "8080",
            "gateway6",
        ),
        (
            "blue hairpin to [fd00:15::5]:8080",
            "blue",
            GATEWAY6,
            "8080",
            "hairpin6",
        ),
    ];
    for (step, from, host, port, payload) in steps {
        let out = lab.py(Some(from), scripts::TCP_ONCE, &[host, port, payload])?;
        lab.note(step, out.stdout.split(" from").next().unwrap_or("").trim());
        lab.observe(step)?;
    }
    lab.note("blue's clients", clients(&blue).join(", "));
    let out = lab.py(Some("red"), scripts::UDP_CLIENT, &[OUTSIDE6, "9000", "100"])?;
    lab.note("red udp6 to outside", stdout(&out));
    lab.observe("red udp6 to outside")?;
    let out = lab.py(Some("red"), scripts::UDP_CLIENT, &[OUTSIDE6, "9", "10"])?;
    lab.note("red udp6 to a closed port of outside", stdout(&out));
    lab.observe("red udp6 to a closed port of outside")?;
    let out = lab.sb.run(&[
        "ip", "netns", "exec", "red", "ping", "-6", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "2",
        OUTSIDE6,
    ])?;
    lab.note("red ping6 outside", format!("success={}", out.success()));
    lab.observe("red ping6 outside")?;
    Ok(lab.record)
}

/// NAT66's closed lab on the dual-stack lab (its IPv6 subnet masqueraded):
/// the world reaches red neither routed (a careless upstream routes the
/// lab's subnet to the host) nor with a spoofed lab source, nor an
/// unpublished port of the uplink's address; an ICMPv6 error about no flow
/// of the lab is not let in; red spoofing a world source goes nowhere.
fn ipv6_masqueraded_lab_stays_closed(datapath: &str) -> Result<Record> {
    let mut lab = ConfLab::up_with(datapath, Some(netlab::topology::DEFAULT_LAB_DUAL_STACK))?;
    lab.sb.ok(&[
        "ip",
        "-n",
        "outside",
        "-6",
        "route",
        "add",
        "fd00:15::/64",
        "via",
        UPLINK6,
    ])?;
    let _red = lab.server("red", scripts::UDP_SERVER, &["9000", "-", "::"])?;
    for (from, to) in [("red", GATEWAY6), ("outside", UPLINK6)] {
        let out = lab.sb.run(&[
            "ip", "netns", "exec", from, "ping", "-6", "-n", "-q", "-c", "1", "-W", "2", to,
        ])?;
        lab.note(
            &format!("warm-up {from} to {to}"),
            format!("success={}", out.success()),
        );
    }
    lab.observe("warm-up")?;
    let uplink = lab.mac(None, "nl-uplink")?;
    let blue_mac = lab.mac(Some("blue"), "veth-blue")?;
    let (red, blue, out, up) = (ip6(RED6), ip6(BLUE6), ip6(OUTSIDE6), ip6(UPLINK6));
    let spoofed = ip6("fd00:15::77");
    let udp = |src: Ipv6Addr, dst: Ipv6Addr, dport: u16, id: u16| {
        Ip6::new(src, dst, PROTO_UDP, id).packet(&packet::udp(src, dst, 21200, dport, b"closed?"))
    };
    // An ICMPv6 port unreachable from outside about a datagram red never
    // sent (no flow has its tuple).
    let unrelated = {
        let quoted =
            Ip6::new(up, out, PROTO_UDP, 0x0e10).packet(&packet::udp(up, out, 40000, 9000, b""));
        Ip6::new(out, up, PROTO_ICMPV6, 0x0e05).packet(&packet::icmp6(
            out,
            up,
            packet::ICMPV6_DEST_UNREACH,
            4,
            [0; 4],
            &quoted,
        ))
    };
    let steps: [(&str, &str, &str, Vec<u8>); 5] = [
        (
            "the world routed into the masqueraded subnet",
            "outside",
            uplink.as_str(),
            udp(out, red, 9000, 0x0e01),
        ),
        (
            "the world spoofing a lab source to red",
            "outside",
            uplink.as_str(),
            udp(spoofed, red, 9000, 0x0e02),
        ),
        (
            "the world to an unpublished port of the uplink",
            "outside",
            uplink.as_str(),
            udp(out, up, 9999, 0x0e03),
        ),
        (
            "an ICMPv6 error about no flow",
            "outside",
            uplink.as_str(),
            unrelated,
        ),
        (
            "red spoofing a world source to blue",
            "red",
            blue_mac.as_str(),
            udp(out, blue, 9000, 0x0e06),
        ),
    ];
    for (step, from, mac, packet) in steps {
        lab.send(from, mac, &[packet])?;
        lab.observe(step)?;
    }
    Ok(lab.record)
}

/// Issue 21, item 9: an ICMP error about a namespace's hairpin flow to its
/// own published port goes back to it: blue sending to its own published
/// UDP port with nothing listening hears ECONNREFUSED.
fn icmp_error_about_a_hairpin_flow(datapath: &str) -> Result<Record> {
    let mut lab = ConfLab::up(datapath)?;
    lab.sb
        .netlab_ok(&["publish", "add", "blue", "5353:53/udp"])?;
    let out = lab.py(Some("blue"), scripts::UDP_CLIENT, &[UPLINK, "5353", "8"])?;
    lab.note(
        "blue to its own published port, nothing listening",
        stdout(&out),
    );
    lab.require(
        stdout(&out) == "refused",
        format!("blue did not hear the port unreachable: {}", stdout(&out)),
    );
    lab.observe("hairpin to a closed port")?;
    Ok(lab.record)
}

/// Issue 21, item 9: ICMP timestamp requests are masqueraded like echo
/// (nf_conntrack tracks them by identifier), so red gets outside's reply.
fn icmp_timestamp_through_masquerade(datapath: &str) -> Result<Record> {
    let mut lab = ConfLab::up(datapath)?;
    let gw = lab.mac(None, "v-net-0")?;
    let (red, out) = (ip(RED), ip(OUTSIDE));
    let warm = lab.sb.run(&[
        "ip", "netns", "exec", "red", "ping", "-c", "1", "-W", "1", OUTSIDE,
    ])?;
    lab.note("warm-up ping", format!("success={}", warm.success()));
    lab.observe("warm-up")?;
    // Type 13, code 0, identifier 0x0777, sequence 1, three timestamps.
    let request = Ip::new(red, out, PROTO_ICMP, 0x0601).packet(&packet::icmp(
        13,
        0,
        [0x07, 0x77, 0x00, 0x01],
        &[0; 12],
    ));
    lab.send("red", &gw, &[request])?;
    lab.observe("a timestamp request from red")?;
    Ok(lab.record)
}

/// Hostile load (issue 21): while an established TCP flow and a UDP flow
/// to published ports are idle, the world sends TCP pickups and UDP
/// datagrams that the host then drops (TTL 1, expiring in forwarding
/// after DNAT), SYNs to the published port and a scan of unpublished
/// ports, with a conntrack of 1024 entries. Afterwards both flows work,
/// and (netlab's datapaths) no flow of the flood outlives the timeout of a
/// flow whose packet never left (2 s).
fn hostile_load_spares_idle_flows(datapath: &str) -> Result<Record> {
    let size = "conntrack_size = 65536";
    let topology = DEFAULT_TOPOLOGY.replace(size, "conntrack_size = 1024");
    let mut lab = ConfLab::up_with(datapath, Some(&topology))?;
    lab.sb
        .netlab_ok(&["publish", "add", "blue", "5353:53/udp"])?;
    let _blue = lab.server("blue", scripts::TCP_SERVER, &["80"])?;
    let _blue_udp = lab.server("blue", scripts::UDP_SERVER, &["53"])?;
    let mut tcp = lab.sb.spawn(
        &netlab_tests::conformance::lab::python(
            Some("outside"),
            scripts::TCP_HOLD,
            &[UPLINK, "8080"],
        ),
        netlab_tests::conformance::lab::LIFETIME,
    )?;
    tcp.wait_for("connected from", std::time::Duration::from_secs(10))?;
    // The idle connection's own port (ephemeral: it may fall among the
    // flood's ports below).
    let idle_port: u64 = tcp
        .stdout()
        .lines()
        .find_map(|line| line.strip_prefix("connected from ")?.trim().parse().ok())
        .unwrap_or(0);
    tcp.send_line("before")?;
    tcp.wait_for("echo before", std::time::Duration::from_secs(10))?;
    let udp = lab.py(
        Some("outside"),
        scripts::UDP_CLIENT,
        &[UPLINK, "5353", "10", "21999"],
    )?;
    lab.note("udp before", stdout(&udp));
    lab.observe("idle flows open")?;

    let mac = lab.mac(None, "nl-uplink")?;
    let (out, up) = (ip(OUTSIDE), ip(UPLINK));
    let mut flood = Vec::new();
    for i in 0..3000_u16 {
        let mut ack = Tcp::new(30000 + i, 8080, TCP_ACK);
        ack.seq = 0x1000_0000 + u32::from(i);
        let mut ip4 = Ip::new(out, up, PROTO_TCP, 0x3000 + i);
        ip4.ttl = 1;
        flood.push(ip4.packet(&ack.segment(out, up, b"pickup")));
    }
    for i in 0..1000_u16 {
        let mut ip4 = Ip::new(out, up, PROTO_UDP, 0x4000 + i);
        ip4.ttl = 1;
        flood.push(ip4.packet(&packet::udp(out, up, 40000 + i, 5353, b"ttl1")));
    }
    for i in 0..1000_u16 {
        flood.push(
            Ip::new(out, up, PROTO_TCP, 0x5000 + i)
                .packet(&Tcp::new(50000 + i, 8080, TCP_SYN).segment(out, up, b"")),
        );
    }
    for i in 0..1000_u16 {
        flood.push(
            Ip::new(out, up, PROTO_TCP, 0x6000 + i)
                .packet(&Tcp::new(21000, 10000 + i, TCP_SYN).segment(out, up, b"")),
        );
    }
    for chunk in flood.chunks(500) {
        lab.send("outside", &mac, chunk)?;
    }
    lab.observe("flood")?;
    lab.record.seen.retain(|(step, _), _| step != "flood");
    std::thread::sleep(std::time::Duration::from_secs(3));

    tcp.send_line("after")?;
    let survived = tcp
        .wait_for("echo after", std::time::Duration::from_secs(5))
        .is_ok();
    let udp = lab.py(
        Some("outside"),
        scripts::UDP_CLIENT,
        &[UPLINK, "5353", "10", "21999"],
    )?;
    lab.note(
        "after the flood",
        format!("tcp echoes={survived}, udp {}", stdout(&udp)),
    );
    lab.require(
        survived && stdout(&udp) == "reply 10",
        format!(
            "the idle flows did not survive the flood: tcp echoes={survived}, udp {}",
            stdout(&udp)
        ),
    );
    if datapath != "iptables" {
        let listing = lab.sb.netlab_ok(&["conntrack", "--json"])?;
        let leftovers: Vec<&str> = listing
            .stdout
            .lines()
            .filter(|line| {
                line.contains("\"ttl1\"") || {
                    let flow: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
                    let sport = flow["original"]["sport"].as_u64().unwrap_or(0);
                    // The flood's TCP pickups (30000-32999) and UDP
                    // (40000-40999), not the idle connection.
                    flow["original"]["src"] == OUTSIDE
                        && sport != idle_port
                        && ((30000..33000).contains(&sport) || (40000..41000).contains(&sport))
                }
            })
            .collect();
        lab.require(
            leftovers.is_empty(),
            format!(
                "flows of packets the host dropped outlived 2 s: {}",
                leftovers.join("\n")
            ),
        );
    }
    lab.observe("after the flood")?;
    Ok(lab.record)
}

/// Two CPUs opening one flow at once (issue 21, item 2): `DEST PORT
/// FIRST_SRC PAIRS`. For each source port, two UDP sockets bound to it
/// with SO_REUSEPORT, one thread each pinned to CPU 0 and CPU 1, send at
/// a barrier. Prints "sent N".
const RACING_SENDERS: &str = r#"
import os, socket, sys, threading
dest, port, first, pairs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
sent = 0
for p in range(first, first + pairs):
    socks = []
    for _ in range(2):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("0.0.0.0", p))
        socks.append(s)
    barrier = threading.Barrier(2)
    def go(cpu, s):
        global sent
        os.sched_setaffinity(0, {cpu})
        barrier.wait()
        s.sendto(f"race {p} {cpu}".encode(), (dest, port))
    threads = [threading.Thread(target=go, args=(cpu, s)) for cpu, s in enumerate(socks)]
    for t in threads: t.start()
    for t in threads: t.join()
    sent += 2
    for s in socks: s.close()
print(f"sent {sent}", flush=True)
"#;

/// Both datagrams of each racing pair reach outside, from one masquerade
/// port (netfilter holds both tuples in one object; netlab's two halves
/// must come out of the race as one flow), and nothing is dropped for a
/// failed insert.
fn racing_inserts_of_one_flow(datapath: &str) -> Result<Record> {
    let mut lab = ConfLab::up(datapath)?;
    let server = lab.server("outside", scripts::UDP_SERVER, &["9000"])?;
    let pairs = 200;
    let out = lab.py(
        Some("red"),
        RACING_SENDERS,
        &[OUTSIDE, "9000", "33000", &pairs.to_string()],
    )?;
    lab.note("red's racing senders", stdout(&out));
    std::thread::sleep(std::time::Duration::from_millis(500));
    let heard = ConfLab::lines_of(&server, "from ");
    let mut by_pair: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    // The server logs "from HOST:PORT LEN": group by the masquerade port.
    for line in &heard {
        let port = line
            .split_whitespace()
            .nth(1)
            .and_then(|hp| hp.rsplit_once(':'))
            .map_or("?", |(_, p)| p)
            .to_owned();
        by_pair.entry(port).or_default().push(line.clone());
    }
    lab.note("datagrams outside heard", heard.len().to_string());
    lab.require(
        heard.len() == 2 * pairs,
        format!(
            "outside heard {} of {} racing datagrams",
            heard.len(),
            2 * pairs
        ),
    );
    lab.require(
        by_pair.len() == pairs && by_pair.values().all(|v| v.len() == 2),
        format!(
            "each pair must leave from one port: {} ports for {pairs} pairs",
            by_pair.len()
        ),
    );
    if datapath != "iptables" {
        let status = lab.sb.status()?;
        let failed = netlab_tests::nat_counter(&status, "ct_insert_failed").unwrap_or(0);
        let races = netlab_tests::nat_counter(&status, "ct_insert_race").unwrap_or(0);
        lab.require(
            failed == 0,
            format!("{failed} inserts failed (and their packets were dropped); {races} races"),
        );
    }
    Ok(lab.record)
}

// ---------------------------------------------------------------------------
// Services, against kube-proxy's iptables rules
// ---------------------------------------------------------------------------

/// The default lab with a service range and `services` (TOML
/// `[[service]]` tables).
fn with_services(services: &str) -> String {
    format!("{DEFAULT_TOPOLOGY}\nservice_range = \"10.96.0.0/24\"\n{services}")
}

/// `[[service]]` NAME at 10.96.0.10:PORT/PROTO over BACKENDS, with
/// NODE_PORT and affinity if given.
fn service(
    name: &str,
    port: u16,
    proto: &str,
    backends: &[&str],
    node_port: Option<u16>,
    affinity: bool,
) -> String {
    let backends: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    let mut text = format!(
        "\n[[service]]\nname = \"{name}\"\naddress = \"10.96.0.10\"\nport = {port}\nproto = \"{proto}\"\nbackends = [{}]\n",
        backends.join(", ")
    );
    if let Some(node_port) = node_port {
        text += &format!("node_port = {node_port}\n");
    }
    if affinity {
        text += "affinity = \"client_ip\"\n";
    }
    text
}

/// A ClusterIP with one backend, TCP and UDP, from a lab namespace and
/// from the backend itself (hairpin), and a NodePort from the world:
/// packet for packet as kube-proxy's rules.
fn service_with_one_backend(datapath: &str) -> Result<Record> {
    let topology = with_services(&format!(
        "{}{}",
        service("web", 80, "tcp", &["blue:80"], Some(30080), false),
        service("dns", 53, "udp", &["blue:53"], None, false)
    ));
    let mut lab = ConfLab::up_with(datapath, Some(&topology))?;
    let tcp = lab.server("blue", scripts::TCP_SERVER, &["80"])?;
    let _udp = lab.server("blue", scripts::UDP_SERVER, &["53"])?;
    lab.observe("servers up")?;
    for (step, netns, to) in [
        ("red to the ClusterIP", "red", ("10.96.0.10", "80")),
        ("blue to its own ClusterIP", "blue", ("10.96.0.10", "80")),
        ("outside to the NodePort", "outside", (UPLINK, "30080")),
    ] {
        let out = lab.py(Some(netns), scripts::TCP_ONCE, &[to.0, to.1, step])?;
        lab.note(step, out.stdout.split(" from").next().unwrap_or("").trim());
        lab.observe(step)?;
    }
    let out = lab.py(
        Some("red"),
        scripts::UDP_CLIENT,
        &["10.96.0.10", "53", "64"],
    )?;
    lab.note("red udp to the ClusterIP", stdout(&out));
    lab.observe("red udp to the ClusterIP")?;
    // An address and port no Service has: nothing answers.
    let out = lab.py(
        Some("red"),
        scripts::TCP_ONCE,
        &["10.96.0.10", "81", "none"],
    )?;
    lab.note(
        "red to a port no Service has answered",
        stdout(&out).starts_with("ok").to_string(),
    );
    lab.note("blue's clients", clients(&tcp).join(", "));
    Ok(lab.record)
}

/// Two backends: every one is chosen over a bounded run, each connection
/// answered once; with session affinity, one client's connections all go
/// to one. Which backend a connection gets is random in kube-proxy's rules
/// and hashed in netlab's, so only these outcomes are compared, not the
/// packets each backend saw.
fn service_over_two_backends(datapath: &str) -> Result<Record> {
    let topology = with_services(&format!(
        "{}{}",
        service("web", 80, "tcp", &["red:80", "blue:80"], Some(30080), false),
        service(
            "sticky",
            81,
            "tcp",
            &["red:80", "blue:80"],
            Some(30081),
            true
        )
    ));
    let mut lab = ConfLab::up_with(datapath, Some(&topology))?;
    let red = lab.server("red", scripts::TCP_SERVER, &["80"])?;
    let blue = lab.server("blue", scripts::TCP_SERVER, &["80"])?;
    lab.observe("servers up")?;
    let counted = |lab: &mut ConfLab, port: &str| -> Result<(usize, usize)> {
        let before = (clients(&red).len(), clients(&blue).len());
        let mut ok = 0;
        for i in 0..20 {
            let out = lab.py(
                Some("outside"),
                scripts::TCP_ONCE,
                &[UPLINK, port, &format!("c{i}")],
            )?;
            ok += usize::from(out.stdout.starts_with("ok"));
        }
        lab.observe(&format!("20 connections to {port}"))?;
        let to_red = clients(&red).len() - before.0;
        let to_blue = clients(&blue).len() - before.1;
        lab.note(
            &format!("{port}: answered"),
            format!("{ok} of 20, {} served", to_red + to_blue),
        );
        Ok((to_red, to_blue))
    };
    let (to_red, to_blue) = counted(&mut lab, "30080")?;
    lab.note(
        "30080: every backend chosen",
        (to_red > 0 && to_blue > 0).to_string(),
    );
    let (to_red, to_blue) = counted(&mut lab, "30081")?;
    lab.note(
        "30081 (affinity): one backend",
        (to_red == 0 || to_blue == 0).to_string(),
    );
    lab.record
        .seen
        .retain(|(step, _), _| !step.starts_with("20 connections"));
    Ok(lab.record)
}

/// A backend replaced while a UDP flow and a TCP connection run through
/// the NodePort: their next packets are evaluated afresh and go to the
/// new backend (the TCP connection is reset there), as kube-proxy's
/// `conntrack -D` of a removed endpoint makes them.
fn service_backend_replaced(datapath: &str) -> Result<Record> {
    let topology = with_services(&format!(
        "{}{}",
        service("web", 80, "tcp", &["blue:80"], Some(30080), false),
        service("dns", 53, "udp", &["blue:53"], Some(30053), false)
    ));
    let mut lab = ConfLab::up_with(datapath, Some(&topology))?;
    let _blue_tcp = lab.server("blue", scripts::TCP_SERVER, &["80"])?;
    let blue_udp = lab.server("blue", scripts::UDP_SERVER, &["53"])?;
    let red_udp = lab.server("red", scripts::UDP_SERVER, &["53"])?;
    let _red_tcp = lab.server("red", scripts::TCP_SERVER, &["80"])?;
    lab.observe("servers up")?;
    let mut held = lab.sb.spawn(
        &netlab_tests::conformance::lab::python(
            Some("outside"),
            scripts::TCP_HOLD,
            &[UPLINK, "30080"],
        ),
        std::time::Duration::from_secs(60),
    )?;
    held.wait_for("connected from", std::time::Duration::from_secs(10))?;
    held.send_line("before")?;
    held.wait_for("echo before", std::time::Duration::from_secs(10))?;
    let out = lab.py(
        Some("outside"),
        scripts::UDP_CLIENT,
        &[UPLINK, "30053", "64", "21053"],
    )?;
    lab.note("udp before", stdout(&out));
    lab.observe("before the change")?;

    for (name, port, node_port) in [("web", "80", "30080"), ("dns", "53", "30053")] {
        let address = if name == "dns" {
            format!("10.96.0.10:{port}/udp")
        } else {
            format!("10.96.0.10:{port}")
        };
        lab.sb.netlab_ok(&[
            "service",
            "add",
            name,
            &address,
            &format!("red:{port}"),
            "--node-port",
            node_port,
        ])?;
    }
    let out = lab.py(
        Some("outside"),
        scripts::UDP_CLIENT,
        &[UPLINK, "30053", "64", "21053"],
    )?;
    lab.note("udp after", stdout(&out));
    held.send_line("after")?;
    let start = std::time::Instant::now();
    let answer = loop {
        let out = held.stdout();
        if out.contains("echo after") {
            break "echoed";
        }
        if out.contains("failed") {
            break "failed";
        }
        if start.elapsed() > std::time::Duration::from_secs(10) {
            break "no answer";
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    lab.note("tcp after", answer);
    lab.observe("after the change")?;
    lab.note("udp to blue", clients(&blue_udp).len().to_string());
    lab.note("udp to red", clients(&red_udp).len().to_string());
    Ok(lab.record)
}

macro_rules! cases {
    ($($name:ident: $reference:expr),* $(,)?) => {
        $(
            #[test]
            #[ignore = "privileged: run through `cargo xtask test`"]
            fn $name() {
                check(&Case {
                    name: stringify!($name),
                    reference: $reference,
                    run: super::$name,
                });
            }
        )*
    };
}

mod case {
    use super::*;
    cases!(
        real_clients: Reference::Iptables,
        malformed_l4_from_red: Reference::Absolute,
        fragmented_reply_to_masquerade: Reference::Iptables,
        fragments_to_published_udp: Reference::Iptables,
        host_socket_on_a_masquerade_port: Reference::Iptables,
        host_connection_from_published_port: Reference::Iptables,
        publish_rm_then_port_reuse: Reference::Iptables,
        one_client_port_to_two_published_ports: Reference::Iptables,
        spoofed_lab_source_from_outside: Reference::Absolute,
        bridge_as_uplink: Reference::Iptables,
        broadcast_and_multicast: Reference::Bridge,
        icmp_errors_about_live_flows: Reference::Iptables,
        port_search_finds_every_free_port: Reference::Iptables,
        established_flow_survives_a_syn_flood: Reference::Iptables,
        host_into_the_lab_from_a_published_port: Reference::Iptables,
        dual_stack_sockets_on_the_host: Reference::Iptables,
        routed_access_into_the_lab: Reference::Absolute,
        ipv6_stays_in_the_lab: Reference::Absolute,
        ipv6_between_namespaces: Reference::Iptables,
        ipv6_closed_lab: Reference::Iptables,
        ipv6_real_clients: Reference::Iptables,
        ipv6_masqueraded_lab_stays_closed: Reference::Iptables,
        icmp_error_about_a_hairpin_flow: Reference::Iptables,
        icmp_timestamp_through_masquerade: Reference::Iptables,
        hostile_load_spares_idle_flows: Reference::Iptables,
        racing_inserts_of_one_flow: Reference::Absolute,
        service_with_one_backend: Reference::Iptables,
        service_over_two_backends: Reference::Iptables,
        service_backend_replaced: Reference::Iptables,
    );
}

/// The fuzzer's CI run: a fixed seed, a few hundred probes, bounded in
/// time, every datapath at once. The long run is `cargo xtask fuzz`.
#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn fuzz_ci() {
    let summary = fuzz::run(
        fuzz::Budget {
            seed: fuzz::DEFAULT_SEED,
            packets: 200,
            seconds: 40,
            batch: 10,
        },
        &fuzz::accepted(),
    );
    let report = summary.report();
    eprintln!("{report}");
    assert!(
        summary.probes_tried >= 100,
        "the fuzzer ran short:\n{report}"
    );
    assert!(summary.clean(), "{report}");
}
