//! `netlab trace` end to end (issue 5): hops in order with one trace id per
//! packet, NAT rewrites at the right hop, drops with their reasons, pcapng
//! read back by tshark, losses counted exactly, malformed frames; and
//! IPv6 (issue 25) through the eBPF datapath and through ip6tables' NAT66.
//!
//! Each test runs `netlab trace --json --duration N` in the background in
//! its own sandbox, waits for its "tracing lab" line, makes traffic, and
//! reads the JSON events once it exits.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test fails by panicking, helpers included"
)]

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use netlab_tests::{Background, Sandbox};
use serde_json::Value;

const BLUE: &str = "192.168.15.2";
const UPLINK: &str = "198.18.0.1";
const LIFETIME: Duration = Duration::from_secs(60);
const SETTLE: Duration = Duration::from_secs(10);

fn lab() -> Sandbox {
    let sb = Sandbox::new().unwrap();
    sb.netlab_ok(&["up"]).unwrap();
    sb
}

/// Starts `netlab trace ARGS` and waits until tracing is on.
fn trace(sb: &Sandbox, args: &[&str]) -> Background {
    let netlab = sb.netlab_path().to_string_lossy().into_owned();
    let mut argv = vec![netlab.as_str(), "trace"];
    argv.extend_from_slice(args);
    let mut bg = sb.spawn(&argv, LIFETIME).unwrap();
    bg.wait_for("tracing lab", SETTLE).unwrap();
    bg
}

/// Waits for a `--duration` trace to end; returns its JSON events and stderr.
fn events(bg: Background) -> (Vec<Value>, String) {
    let out = bg.finish(Duration::from_secs(30)).unwrap().ok().unwrap();
    let events = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{out}")))
        .collect();
    (events, out.stderr)
}

/// A server in blue on port 80, IPv4 and IPv6 alike, that sends "hi" to
/// each of its first `accepts` clients; running once it returns.
fn serve_hi(sb: &Sandbox, accepts: usize) -> Background {
    let script = format!(
        "import socket\ns=socket.socket(socket.AF_INET6)\n\
         s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('::',80))\ns.listen()\n\
         print('ready',flush=True)\nfor _ in range({accepts}):\n c,_=s.accept()\n \
         c.sendall(b'hi')\n c.close()"
    );
    let mut server = sb
        .spawn(
            &["ip", "netns", "exec", "blue", "python3", "-c", &script],
            LIFETIME,
        )
        .unwrap();
    server.wait_for("ready", SETTLE).unwrap();
    server
}

/// `tshark -r FILE -T fields -e FIELD...`: one line per packet, the
/// fields tab-separated.
fn tshark_fields(sb: &Sandbox, file: &str, fields: &[&str]) -> netlab_tests::Output {
    let mut argv = vec!["tshark", "-r", file, "-T", "fields"];
    for field in fields {
        argv.extend(["-e", field]);
    }
    sb.ok(&argv).unwrap()
}

/// The events of `netlab trace tcp` while a client in `client` connects to
/// `addr`:8080 (blue's port 80, published) and reads what a one-shot
/// server in blue sends.
fn traced_connection(sb: &Sandbox, client: &str, addr: &str) -> Vec<Value> {
    let _server = serve_hi(sb, 1);
    let bg = trace(sb, &["--json", "--duration", "3", "tcp"]);
    let connect = format!(
        "import socket\ns=socket.create_connection(('{addr}',8080),timeout=3)\nassert s.recv(10)==b'hi'"
    );
    sb.ok(&["ip", "netns", "exec", client, "python3", "-c", &connect])
        .unwrap();
    events(bg).0
}

fn hops(events: &[Value]) -> Vec<&Value> {
    events.iter().filter(|e| e["type"] == "hop").collect()
}

/// Events grouped by trace id, in time order.
fn journeys(events: &[Value]) -> BTreeMap<String, Vec<&Value>> {
    let mut out: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for e in events.iter().filter(|e| e["type"] != "lost") {
        out.entry(e["trace_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(e);
    }
    for list in out.values_mut() {
        list.sort_by_key(|e| e["time_ns"].as_u64());
    }
    out
}

fn place(e: &Value) -> String {
    format!(
        "{}/{} {}",
        e["netns"].as_str().unwrap(),
        e["iface"].as_str().unwrap(),
        e["direction"].as_str().unwrap()
    )
}

fn lost_total(stderr: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.contains("events lost"))
        .unwrap_or_else(|| panic!("no summary line: {stderr}"));
    line.split(", ")
        .find_map(|part| part.strip_suffix(" events lost"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("cannot read the lost count: {line}"))
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn ping_shows_every_hop_in_order() {
    let sb = lab();
    let bg = trace(&sb, &["--json", "--duration", "3", "icmp"]);
    sb.ping(Some("red"), BLUE, 1).unwrap();
    let (events, stderr) = events(bg);
    let hop_events: Vec<Value> = hops(&events).into_iter().cloned().collect();
    let journeys = journeys(&hop_events);
    assert_eq!(
        journeys.len(),
        2,
        "one journey per request and reply: {events:#?}"
    );
    let mut seen = Vec::new();
    for list in journeys.values() {
        let first = list[0];
        let kind = first["packet"]["icmp_type"].as_u64().unwrap();
        let path: Vec<String> = list.iter().map(|e| place(e)).collect();
        let expected: &[&str] = if kind == 8 {
            &[
                "red/veth-red egress",
                "host/veth-red-br ingress",
                "host/veth-blue-br egress",
                "blue/veth-blue ingress",
            ]
        } else {
            &[
                "blue/veth-blue egress",
                "host/veth-blue-br ingress",
                "host/veth-red-br egress",
                "red/veth-red ingress",
            ]
        };
        assert_eq!(path, expected, "icmp type {kind}: {list:#?}");
        assert!(list.iter().all(|e| e["action"] == "pass"));
        seen.push(kind);
    }
    seen.sort();
    assert_eq!(seen, [0, 8]);
    assert_eq!(lost_total(&stderr), 0);
}

/// A second `netlab trace` of a lab that is traced is refused with a clear
/// error, and the first session goes on: its events keep arriving and its
/// summary is true (issue 21, item 10). So is `trace --off`.
#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn a_second_session_is_refused_and_the_first_goes_on() {
    let sb = lab();
    let first = trace(&sb, &["--json", "--duration", "4", "icmp"]);
    let second = sb
        .netlab(&["trace", "--json", "--duration", "1", "icmp"])
        .unwrap()
        .failed()
        .unwrap();
    assert!(
        second.stderr.contains("already being traced") && second.stderr.contains("pid"),
        "the second session should be refused, naming the first: {second}"
    );
    let off = sb.netlab(&["trace", "--off"]).unwrap().failed().unwrap();
    assert!(off.stderr.contains("already being traced"), "{off}");
    sb.ping(Some("red"), BLUE, 1).unwrap();
    let (seen, stderr) = events(first);
    assert!(
        hops(&seen).len() >= 8,
        "the first session lost its events after the refusal: {seen:#?}"
    );
    assert_eq!(lost_total(&stderr), 0);
    // Once the first has ended, a new one may start.
    let again = trace(&sb, &["--json", "--duration", "1", "icmp"]);
    let _ = events(again);
}

/// A namespace reaching a published port on its own segment: DNATed on
/// its veth's host side, then bridged on to the backend as it is (the
/// program passes it), so the hop must show the rewrite it made, and the
/// journey go on in one piece.
/// The filter chooses in the kernel: of datagrams red sends blue to two
/// ports, only the journeys of the filtered one arrive, whole, and the
/// other port's never (a four-clause filter, each clause of another kind
/// of literal, so that every kind is compiled into the programs).
#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn the_filter_chooses_in_the_kernel() {
    let sb = lab();
    let filter = "udp and dst port 7001 and src host 192.168.15.1 \
                  or icmp and netns outside \
                  or net 10.99.0.0/16 \
                  or tcp and portrange 60000-60010";
    let bg = trace(&sb, &["--json", "--duration", "3", filter]);
    sb.ok(&[
        "ip", "netns", "exec", "red", "python3", "-c",
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor p in (7001,7002,7001,7002): s.sendto(b'x',('192.168.15.2',p))",
    ])
    .unwrap();
    let (events, _) = events(bg);
    let journeys = journeys(&events);
    assert_eq!(journeys.len(), 2, "two datagrams to 7001: {events:#?}");
    for journey in journeys.values() {
        let hops: Vec<&&Value> = journey.iter().filter(|e| e["type"] == "hop").collect();
        assert_eq!(hops.len(), 4, "{journey:#?}");
        for hop in hops {
            assert_eq!(hop["packet"]["dport"], 7001, "{journey:#?}");
        }
    }
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn a_bridged_hairpin_shows_its_dnat() {
    let sb = lab();
    let events = traced_connection(&sb, "red", "192.168.15.5");
    let journeys = journeys(&events);
    let syn = journeys
        .values()
        .find(|list| list[0]["packet"]["tcp_flags"] == "S" && list[0]["netns"] == "red")
        .unwrap_or_else(|| panic!("no SYN journey from red: {events:#?}"));
    let hops: Vec<&&Value> = syn.iter().filter(|e| e["type"] == "hop").collect();
    let path: Vec<String> = hops.iter().map(|e| place(e)).collect();
    assert_eq!(
        path,
        [
            "red/veth-red egress",
            "host/veth-red-br ingress",
            "host/veth-blue-br egress",
            "blue/veth-blue ingress"
        ],
        "{syn:#?}"
    );
    let dnat = &hops[1]["nat"][0];
    assert_eq!(dnat["kind"], "dnat", "{syn:#?}");
    assert_eq!(dnat["from"], "192.168.15.5:8080", "{syn:#?}");
    assert_eq!(dnat["to"], format!("{BLUE}:80"), "{syn:#?}");
    assert_eq!(hops[1]["action"], "pass", "{syn:#?}");
    assert_eq!(hops[2]["packet"]["dst"], BLUE, "{syn:#?}");
    assert_eq!(syn.last().unwrap()["type"], "delivered", "{syn:#?}");
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn published_port_shows_dnat_and_its_reverse() {
    let sb = lab();
    let events = traced_connection(&sb, "outside", UPLINK);
    let journeys = journeys(&events);
    // The SYN: DNAT on the uplink's ingress, after the hop before it.
    let syn = journeys
        .values()
        .find(|list| list[0]["packet"]["tcp_flags"] == "S" && list[0]["netns"] == "outside")
        .unwrap_or_else(|| panic!("no SYN journey: {events:#?}"));
    let path: Vec<String> = syn
        .iter()
        .filter(|e| e["type"] == "hop")
        .map(|e| place(e))
        .collect();
    // Its fate: the listening socket consumed it.
    assert_eq!(syn.last().unwrap()["type"], "delivered", "{syn:#?}");
    assert_eq!(
        path,
        [
            "outside/veth-outside egress",
            "host/nl-uplink ingress",
            "host/veth-blue-br egress",
            "blue/veth-blue ingress"
        ],
        "{syn:#?}"
    );
    let dnat = &syn[1]["nat"][0];
    assert_eq!(dnat["kind"], "dnat", "{syn:#?}");
    assert_eq!(dnat["from"], format!("{UPLINK}:8080"));
    assert_eq!(dnat["to"], format!("{BLUE}:80"));
    assert_eq!(syn[2]["packet"]["dst"], BLUE);
    assert!(syn[0]["nat"].as_array().unwrap().is_empty());
    // The SYN-ACK: the reverse rewrite on the way out of the uplink.
    let synack = journeys
        .values()
        .find(|list| list[0]["packet"]["tcp_flags"] == "SA")
        .unwrap_or_else(|| panic!("no SYN-ACK journey: {events:#?}"));
    let rewrite = synack
        .iter()
        .find(|e| !e["nat"].as_array().unwrap().is_empty())
        .unwrap_or_else(|| panic!("SYN-ACK not rewritten: {synack:#?}"));
    assert_eq!(place(rewrite), "host/nl-uplink egress");
    assert_eq!(rewrite["nat"][0]["from"], format!("{BLUE}:80"));
    assert_eq!(rewrite["nat"][0]["to"], format!("{UPLINK}:8080"));
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn drop_appears_with_its_reason() {
    let sb = lab();
    let bg = trace(&sb, &["--json", "--duration", "3", "tcp and port 9999"]);
    // Nothing is published on 9999: the host's stack refuses the SYN.
    let out = sb
        .run(&[
            "ip", "netns", "exec", "outside", "python3", "-c",
            "import socket\ntry:\n socket.create_connection(('198.18.0.1',9999),timeout=2)\nexcept ConnectionRefusedError:\n print('refused')",
        ])
        .unwrap();
    assert!(out.stdout.contains("refused"), "{out}");
    let (events, _) = events(bg);
    let journeys = journeys(&events);
    let syn = journeys
        .values()
        .find(|list| list[0]["packet"]["tcp_flags"] == "S")
        .unwrap_or_else(|| panic!("no SYN journey: {events:#?}"));
    let last = syn.last().unwrap();
    assert_eq!(last["type"], "kernel_drop", "{syn:#?}");
    assert_eq!(last["reason"], "NO_SOCKET", "{syn:#?}");
    assert_eq!(last["action"], "kernel_drop");
    assert!(
        last["location"].as_str().is_some_and(|l| l.contains('+')),
        "{last}"
    );
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn pcapng_is_read_by_tshark() {
    let sb = lab();
    let file = "/run/trace.pcapng";
    let bg = trace(&sb, &["--pcapng", file, "--duration", "3", "icmp"]);
    sb.ping(Some("red"), BLUE, 2).unwrap();
    let out = bg.finish(Duration::from_secs(30)).unwrap().ok().unwrap();
    assert!(out.stderr.contains("16 packets written"), "{out}");
    let read = tshark_fields(&sb, file, &["frame.comment", "icmp.type"]);
    let lines: Vec<&str> = read.stdout.lines().collect();
    assert_eq!(lines.len(), 16, "{read}");
    assert!(lines.iter().all(|l| l.contains("hop ")), "{read}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("red/veth-red egress: pass")),
        "{read}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.ends_with("\t8")).count(),
        8,
        "{read}"
    );
    let complaints: Vec<&str> = read
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains("Running as user"))
        .collect();
    assert!(complaints.is_empty(), "tshark complained: {read}");
    let ifaces = tshark_fields(&sb, file, &["frame.interface_name"]);
    assert!(ifaces.stdout.contains("host/veth-blue-br"), "{ifaces}");
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn tiny_ring_buffer_counts_what_it_loses() {
    let sb = Sandbox::new().unwrap();
    // One page: about a dozen events fit.
    sb.netlab(&["up"]).unwrap().ok().unwrap();
    let netlab = sb.netlab_path().to_string_lossy().into_owned();
    // The reader stalls on a full pipe (nothing reads it for 4 s) while
    // the flood fills the ring.
    let script = format!(
        "NETLAB_TRACE_RING_BYTES=4096 {netlab} trace --json --duration 6 udp and dst port 9999 \
         | (sleep 4; cat)"
    );
    let mut bg = sb.spawn(&["sh", "-c", &script], LIFETIME).unwrap();
    bg.wait_for("tracing lab", SETTLE).unwrap();
    const SENT: u64 = 2000;
    sb.ok(&[
        "ip", "netns", "exec", "red", "python3", "-c",
        "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor i in range(2000):\n s.sendto(b'x',('192.168.15.2',9999))\n if i%50==0: time.sleep(0.01)",
    ])
    .unwrap();
    let out = bg.finish(Duration::from_secs(30)).unwrap().ok().unwrap();
    let events: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let lost = lost_total(&out.stderr);
    let reported: u64 = events
        .iter()
        .filter(|e| e["type"] == "lost")
        .map(|e| e["count"].as_u64().unwrap())
        .sum();
    let received = events.iter().filter(|e| e["type"] != "lost").count() as u64;
    assert!(lost > 0, "nothing was lost:\n{}", out.stderr);
    assert_eq!(reported, lost, "the stream and the summary disagree");
    // Every datagram crosses four hops and is dropped by blue's stack
    // (no socket on 9999): five events each, delivered or counted lost.
    assert_eq!(
        received + lost,
        5 * SENT,
        "received {received} + lost {lost} != {}",
        5 * SENT
    );
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn malformed_frames_give_well_formed_events() {
    let sb = lab();
    let bg = trace(
        &sb,
        &["--json", "--duration", "3", "--iface", "red/veth-red"],
    );
    // Raw frames out of red: a truncated IPv4 header, an IPv4 header whose
    // length lies, a TCP header cut short, and a non-IP ethertype.
    sb.ok(&[
        "ip", "netns", "exec", "red", "python3", "-c",
        "import socket\ns=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)\ns.bind(('veth-red',0))\neth=b'\\xff'*6+b'\\x02'*6\nip=bytes([0x45,0,0,40,0,0,0,0,64,6,0,0,192,168,15,1,192,168,15,2])\nfor f in [eth+b'\\x08\\x00'+ip[:10], eth+b'\\x08\\x00'+bytes([0x4f])+ip[1:], eth+b'\\x08\\x00'+ip+b'\\x00\\x50', eth+b'\\x88\\xb5'+b'hello'*4]:\n s.send(f)",
    ])
    .unwrap();
    let (events, _) = events(bg);
    let kinds: Vec<&str> = hops(&events)
        .iter()
        .filter(|e| e["iface"] == "veth-red")
        .map(|e| e["packet"]["kind"].as_str().unwrap())
        .collect();
    for e in &events {
        assert!(e["trace_id"].as_str().is_some_and(|t| t.len() == 16), "{e}");
        let kind = e["packet"]["kind"].as_str().unwrap();
        assert!(
            [
                "ipv4",
                "ipv4_other",
                "ipv6",
                "ipv6_other",
                "not_ip",
                "malformed"
            ]
            .contains(&kind),
            "{e}"
        );
        // The namespace's own IPv6 (neighbour discovery, MLD) has addresses.
        if !kind.starts_with("ipv") {
            assert!(
                e["packet"]["src"].is_null() && e["packet"]["sport"].is_null(),
                "{e}"
            );
        }
    }
    assert!(kinds.contains(&"malformed"), "{kinds:?}");
    assert!(kinds.contains(&"not_ip"), "{kinds:?}");
    assert!(
        events.iter().any(|e| e["packet"]["ethertype"] == 0x88b5),
        "{events:#?}"
    );
}

/// The dual-stack lab on `bridge`, its IPv6 bridged (taken out of
/// nat.masquerade: the eBPF datapaths do not translate IPv6 yet).
fn dual_stack_on_bridge() -> Sandbox {
    let sb = Sandbox::new().unwrap();
    let masquerade6 = r#", "fd00:15::/64"]"#;
    let lab = netlab::topology::DEFAULT_LAB_DUAL_STACK;
    assert_eq!(lab.matches(masquerade6).count(), 1);
    sb.write_file("/run/dual.toml", &lab.replace(masquerade6, "]"))
        .unwrap();
    sb.netlab_ok(&["up", "-f", "/run/dual.toml", "--datapath", "bridge"])
        .unwrap();
    sb
}

/// IPv6 is traced as IPv4 is: an ICMPv6 echo is one journey per packet,
/// hop by hop through the NAT programs, and the IPv6 filter (`icmp6`, an
/// IPv6 `host`) keeps the IPv4 pings and neighbour discovery's other
/// packets out, in the kernel.
#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn ipv6_ping_shows_every_hop_in_order() {
    let sb = dual_stack_on_bridge();
    let bg = trace(
        &sb,
        &[
            "--json",
            "--duration",
            "3",
            "icmp6",
            "and",
            "host",
            "fd00:15::2",
        ],
    );
    sb.ping(Some("red"), "fd00:15::2", 2).unwrap();
    sb.ping(Some("red"), BLUE, 2).unwrap();
    let (events, stderr) = events(bg);
    assert!(
        events
            .iter()
            .all(|e| e["packet"]["kind"] == "ipv6" && e["packet"]["proto"] == "icmp6"),
        "only ICMPv6 passes the filter: {events:#?}"
    );
    let hop_events: Vec<Value> = hops(&events).into_iter().cloned().collect();
    let mut echoes = Vec::new();
    for list in journeys(&hop_events).values() {
        let first = list[0];
        let kind = first["packet"]["icmp_type"].as_u64().unwrap();
        if kind != 128 && kind != 129 {
            continue; // neighbour discovery with blue's address
        }
        let path: Vec<String> = list.iter().map(|e| place(e)).collect();
        let (from, to, expected): (&str, &str, &[&str]) = if kind == 128 {
            (
                "fd00:15::1",
                "fd00:15::2",
                &[
                    "red/veth-red egress",
                    "host/veth-red-br ingress",
                    "host/veth-blue-br egress",
                    "blue/veth-blue ingress",
                ],
            )
        } else {
            (
                "fd00:15::2",
                "fd00:15::1",
                &[
                    "blue/veth-blue egress",
                    "host/veth-blue-br ingress",
                    "host/veth-red-br egress",
                    "red/veth-red ingress",
                ],
            )
        };
        assert_eq!(path, expected, "icmp6 type {kind}: {list:#?}");
        for e in list {
            assert_eq!(e["packet"]["src"], from, "{e}");
            assert_eq!(e["packet"]["dst"], to, "{e}");
            assert!(e["packet"]["icmp_id"].as_u64().is_some(), "{e}");
            assert_eq!(e["action"], "pass", "{e}");
        }
        echoes.push(kind);
    }
    echoes.sort();
    assert_eq!(echoes, [128, 128, 129, 129], "{events:#?}");
    assert_eq!(lost_total(&stderr), 0);
}

/// A published port over IPv6 on the `iptables` datapath: the trace shows
/// the SYN to `[2001:2::1]:8080` leaving outside and arriving on the
/// uplink, and reaching blue as ip6tables' DNAT left it, `[fd00:15::2]:80`;
/// `ip6` keeps IPv4 out. The pcapng of the same packets is read by tshark
/// as IPv6.
#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn ipv6_published_port_through_ip6tables() {
    let sb = Sandbox::new().unwrap();
    sb.netlab_ok(&["up", "--dual-stack"]).unwrap();
    let _server = serve_hi(&sb, 3);
    let connect = "import socket\ns=socket.create_connection(('2001:2::1',8080),timeout=3)\nassert s.recv(10)==b'hi'";
    let bg = trace(&sb, &["--json", "--duration", "3", "ip6", "and", "tcp"]);
    sb.ok(&["ip", "netns", "exec", "outside", "python3", "-c", connect])
        .unwrap();
    // The same port over IPv4, which `ip6` must keep out.
    let connect4 = connect.replace("2001:2::1", UPLINK);
    sb.ok(&["ip", "netns", "exec", "outside", "python3", "-c", &connect4])
        .unwrap();
    let (events, _) = events(bg);
    assert!(
        events.iter().all(|e| e["packet"]["kind"] == "ipv6"),
        "only IPv6 passes `ip6`: {events:#?}"
    );
    // Where a SYN from outside to `dst`:`port` was seen.
    let syn_places = |dst: &str, port: u64| -> Vec<String> {
        hops(&events)
            .into_iter()
            .filter(|e| {
                e["packet"]["tcp_flags"] == "S"
                    && e["packet"]["src"] == "2001:2::2"
                    && e["packet"]["dst"] == dst
                    && e["packet"]["dport"] == port
            })
            .map(place)
            .collect()
    };
    let published = syn_places("2001:2::1", 8080);
    assert!(
        published.contains(&"outside/veth-outside egress".to_owned())
            && published.contains(&"host/nl-uplink ingress".to_owned()),
        "{published:?}: {events:#?}"
    );
    let backend = syn_places("fd00:15::2", 80);
    assert!(
        backend.contains(&"blue/veth-blue ingress".to_owned()),
        "{backend:?}: {events:#?}"
    );

    let file = "/run/trace6.pcapng";
    let bg = trace(
        &sb,
        &["--pcapng", file, "--duration", "3", "ip6", "and", "tcp"],
    );
    sb.ok(&["ip", "netns", "exec", "outside", "python3", "-c", connect])
        .unwrap();
    let out = bg.finish(Duration::from_secs(30)).unwrap().ok().unwrap();
    assert!(out.stderr.contains("packets written"), "{out}");
    let read = tshark_fields(&sb, file, &["ipv6.dst", "tcp.dstport"]);
    assert!(
        read.stdout.lines().any(|l| l == "2001:2::1\t8080"),
        "{read}"
    );
    assert!(read.stdout.lines().any(|l| l == "fd00:15::2\t80"), "{read}");
}

/// Hostile IPv6 is read as far as it goes, and never past what the walk
/// bounds: a header cut short and one that lies about its version are
/// malformed; a chain of five extension headers, or one whose length runs
/// past the frame, shows its addresses only; four extension headers and a
/// first fragment still show their ports; a later fragment has none.
#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn hostile_ipv6_is_read_as_far_as_it_goes() {
    let sb = lab();
    let bg = trace(
        &sb,
        &["--json", "--duration", "3", "--iface", "red/veth-red"],
    );
    sb.ok(&["ip", "netns", "exec", "red", "python3", "-c", HOSTILE_IPV6])
        .unwrap();
    let (events, _) = events(bg);
    let egress: Vec<&Value> = hops(&events)
        .into_iter()
        .filter(|e| e["iface"] == "veth-red" && e["direction"] == "egress")
        .collect();
    let to = |n: &str| -> &Value {
        let dst = format!("fd00:15::{n}");
        egress
            .iter()
            .find(|e| e["packet"]["dst"] == dst.as_str())
            .unwrap_or_else(|| panic!("no event to {dst}: {egress:#?}"))
    };
    let kind = |e: &Value| e["packet"]["kind"].as_str().unwrap().to_owned();
    // Five extension headers: more than the walk takes.
    assert_eq!(kind(to("103")), "ipv6_other", "{}", to("103"));
    assert_eq!(to("103")["packet"]["proto"], "0");
    // Four, the most it walks, then UDP.
    assert_eq!(kind(to("104")), "ipv6", "{}", to("104"));
    assert_eq!(to("104")["packet"]["proto"], "udp");
    assert_eq!(to("104")["packet"]["dport"], 9);
    // A later fragment: no ports in it.
    assert_eq!(kind(to("105")), "ipv6_other", "{}", to("105"));
    assert_eq!(to("105")["packet"]["proto"], "udp");
    assert!(to("105")["packet"]["dport"].is_null());
    // A first fragment carries the ports.
    assert_eq!(kind(to("106")), "ipv6", "{}", to("106"));
    assert_eq!(to("106")["packet"]["sport"], 53);
    // A hop-by-hop header longer than the frame.
    assert_eq!(kind(to("107")), "ipv6_other", "{}", to("107"));
    assert!(to("107")["packet"]["sport"].is_null());
    let malformed = egress.iter().filter(|e| kind(e) == "malformed").count();
    assert!(malformed >= 2, "{egress:#?}");
}

/// Raw frames out of red's veth, each to its own destination in
/// fd00:15::/64 (see `hostile_ipv6_is_read_as_far_as_it_goes`).
const HOSTILE_IPV6: &str = r#"
import socket, struct
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(('veth-red', 0))
eth = b'\xff' * 6 + b'\x02' * 6 + b'\x86\xdd'
def addr(n): return socket.inet_pton(socket.AF_INET6, 'fd00:15::%x' % n)
def ipv6(nh, dst, payload, version=6):
    return bytes([version << 4, 0, 0, 0]) + struct.pack('!HBB', len(payload), nh, 64) + addr(1) + addr(dst) + payload
udp = struct.pack('!HHHH', 53, 9, 8, 0)
def ext(nh): return bytes([nh, 0, 1, 4]) + b'\0' * 4  # 8 bytes, PadN
def frag(nh, offset, more): return struct.pack('!BBHI', nh, 0, (offset << 3) | more, 7)
for frame in [
    ipv6(17, 0x101, udp)[:20],
    ipv6(17, 0x102, udp, version=4),
    ipv6(0, 0x103, ext(60) + ext(60) + ext(60) + ext(60) + ext(17) + udp),
    ipv6(0, 0x104, ext(60) + ext(60) + ext(60) + ext(17) + udp),
    ipv6(44, 0x105, frag(17, 1, 0) + udp),
    ipv6(44, 0x106, frag(17, 0, 1) + udp),
    ipv6(0, 0x107, bytes([17, 200]) + b'\0' * 6 + udp),
]:
    s.send(eth + frame)
"#;

/// The ids of the lab's trace programs (`trace_hop` and the fate
/// tracepoints) the kernel has loaded: the programs under those names that
/// count into the lab's trace counters (other labs on the machine have
/// theirs).
fn trace_programs(sb: &Sandbox) -> Vec<(u64, String)> {
    let map = sb
        .ok(&[
            "bpftool",
            "-j",
            "map",
            "show",
            "pinned",
            "/sys/fs/bpf/netlab/default/maps/TRACE_STATS",
        ])
        .unwrap();
    let map: Value = serde_json::from_str(&map.stdout).unwrap();
    let stats = map["id"].as_u64().unwrap();
    let progs = sb.ok(&["bpftool", "-j", "prog", "show"]).unwrap();
    let progs: Vec<Value> = serde_json::from_str(&progs.stdout).unwrap();
    progs
        .iter()
        .filter(|p| {
            p["map_ids"]
                .as_array()
                .is_some_and(|ids| ids.iter().any(|id| id.as_u64() == Some(stats)))
        })
        .filter_map(|p| {
            let name = p["name"].as_str()?;
            name.starts_with("trace_")
                .then(|| (p["id"].as_u64().unwrap(), name.to_owned()))
        })
        .collect()
}

/// The entries of the lab's `TRACE_PROGS` slot array.
fn trace_slot(sb: &Sandbox) -> Vec<Value> {
    let out = sb
        .ok(&[
            "bpftool",
            "-j",
            "map",
            "dump",
            "pinned",
            "/sys/fs/bpf/netlab/default/maps/TRACE_PROGS",
        ])
        .unwrap();
    serde_json::from_str(&out.stdout).unwrap()
}

/// Every file under the lab's bpffs directory.
fn pins(sb: &Sandbox) -> Vec<String> {
    let out = sb.ok(&["find", "/sys/fs/bpf/netlab/default"]).unwrap();
    let mut files: Vec<String> = out.stdout.lines().map(str::to_owned).collect();
    files.sort();
    files
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn a_lab_never_traced_has_no_trace_program() {
    let sb = lab();
    assert!(trace_programs(&sb).is_empty(), "{:?}", trace_programs(&sb));
    assert!(trace_slot(&sb).is_empty());
    assert!(
        !pins(&sb).iter().any(|p| p.contains("trace_")),
        "{:?}",
        pins(&sb)
    );
    // Nor a ring buffer: each trace session makes its own.
    let kinds = datapath_map_types(&sb);
    assert!(kinds.contains(&"lru_hash".to_owned()), "{kinds:?}");
    assert!(!kinds.contains(&"ringbuf".to_owned()), "{kinds:?}");
    // Traffic flows with the slot empty (the tail call fails and returns).
    sb.ping(Some("red"), BLUE, 1).unwrap();
}

/// The types of the maps the lab keeps: those it pins and those its pinned
/// programs use.
fn datapath_map_types(sb: &Sandbox) -> Vec<String> {
    let mut ids = BTreeSet::new();
    for (kind, dir) in [("map", "maps"), ("prog", "progs")] {
        let out = sb
            .ok(&[
                "find",
                &format!("/sys/fs/bpf/netlab/default/{dir}"),
                "-type",
                "f",
            ])
            .unwrap();
        for pin in out.stdout.lines() {
            let shown = sb
                .ok(&["bpftool", "-j", kind, "show", "pinned", pin])
                .unwrap();
            let shown: Value = serde_json::from_str(&shown.stdout).unwrap();
            if kind == "map" {
                ids.insert(shown["id"].as_u64().unwrap());
            } else {
                let used = shown["map_ids"].as_array().unwrap();
                ids.extend(used.iter().map(|id| id.as_u64().unwrap()));
            }
        }
    }
    assert!(!ids.is_empty(), "the lab keeps no map");
    let maps = sb.ok(&["bpftool", "-j", "map", "show"]).unwrap();
    let maps: Vec<Value> = serde_json::from_str(&maps.stdout).unwrap();
    maps.iter()
        .filter(|m| m["id"].as_u64().is_some_and(|id| ids.contains(&id)))
        .map(|m| m["type"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn tracing_ten_times_leaves_nothing_behind() {
    let sb = lab();
    let before = pins(&sb);
    for _ in 0..10 {
        let bg = trace(&sb, &["--json", "--duration", "0.2", "icmp"]);
        // While it runs: trace_hop in the slot, and the fate tracepoints.
        let loaded = trace_programs(&sb);
        assert_eq!(trace_slot(&sb).len(), 1, "{loaded:?}");
        let (_, stderr) = events(bg);
        assert!(!stderr.contains("will not show"), "{stderr}");
        assert!(loaded.iter().any(|(_, n)| n == "trace_hop"), "{loaded:?}");
    }
    // A killed reader: the next `trace --off` cleans up.
    let bg = trace(&sb, &["--json", "icmp"]);
    assert_eq!(trace_slot(&sb).len(), 1);
    drop(bg.stop());
    sb.netlab_ok(&["trace", "--off"]).unwrap();
    assert!(trace_slot(&sb).is_empty());
    // Programs are freed once their last reference goes (RCU): give it a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !trace_programs(&sb).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(trace_programs(&sb).is_empty(), "{:?}", trace_programs(&sb));
    assert_eq!(pins(&sb), before, "pins changed");
    sb.ping(Some("red"), BLUE, 1).unwrap();
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn raw_socket_ping_ends_delivered() {
    let sb = lab();
    let bg = trace(&sb, &["--json", "--duration", "3", "icmp"]);
    // As root, ping uses a raw socket: the reply reaches it as a clone, and
    // the original is freed by ping_rcv as NO_SOCKET.
    sb.ping(Some("red"), BLUE, 1).unwrap();
    let (events, _) = events(bg);
    let journeys = journeys(&events);
    assert_eq!(journeys.len(), 2, "{events:#?}");
    for list in journeys.values() {
        let last = list.last().unwrap();
        assert_eq!(last["type"], "delivered", "{list:#?}");
        assert_eq!(last["action"], "delivered", "{list:#?}");
    }
    let reply = journeys
        .values()
        .find(|list| list[0]["packet"]["icmp_type"] == 0)
        .unwrap();
    let fate = reply.last().unwrap();
    assert_eq!(fate["netns"], "red", "{reply:#?}");
    assert_eq!(fate["hook"], "kfree_skb", "{reply:#?}");
    assert!(
        events.iter().all(|e| e["type"] != "kernel_drop"),
        "{events:#?}"
    );
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn human_output_names_the_fate() {
    let sb = lab();
    let netlab = sb.netlab_path().to_string_lossy().into_owned();
    let mut bg = sb
        .spawn(
            &[netlab.as_str(), "trace", "--duration", "3", "icmp"],
            LIFETIME,
        )
        .unwrap();
    bg.wait_for("tracing lab", SETTLE).unwrap();
    sb.ping(Some("red"), BLUE, 1).unwrap();
    let out = bg.finish(Duration::from_secs(30)).unwrap().ok().unwrap();
    assert_eq!(out.stdout.matches("trace ").count(), 2, "{out}");
    assert!(out.stdout.contains("4 hops"), "{out}");
    assert!(out.stdout.contains("delivered"), "{out}");
    assert!(!out.stdout.contains("kernel drop"), "{out}");
}
