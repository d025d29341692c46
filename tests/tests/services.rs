//! Services end to end, on every datapath: a ClusterIP load-balanced over
//! the default lab's two namespaces, reached from a lab namespace; a
//! NodePort reached from `outside`; session affinity; a backend removed
//! while flows run; the world kept off ClusterIPs; `service add|rm|list`.
//!
//! Each scenario is written once, as a function of the datapath, and
//! [`per_datapath!`] makes one test per datapath of it. The backends are
//! small Python servers that say who they are, each bounded in time;
//! traffic only goes to the lab's own addresses.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test fails by panicking, helpers included"
)]

use std::{collections::BTreeMap, time::Duration};

use netlab_tests::{
    Background, Sandbox, nat_counter,
    scripts::{ASK_MANY, WHOAMI_SERVER},
};
use serde_json::Value;

const VIP: &str = "10.96.0.10";
const UPLINK: &str = "198.18.0.1";
const GATEWAY: &str = "192.168.15.5";
const OUTSIDE: &str = "198.18.0.2";
const NODE_PORT: &str = "30080";
const LIFETIME: Duration = Duration::from_secs(120);
const SETTLE: Duration = Duration::from_secs(10);

/// `HOST PORT`: one connection; prints `backend NAME`, then for each line
/// of stdin `echo LINE`, or `lost ...` when the connection broke.
const LONG_CLIENT: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
f = s.makefile()
print("backend " + f.readline().split()[0], flush=True)
for line in sys.stdin:
    try:
        s.sendall(line.encode())
        got = f.readline().strip()
        print(f"echo {got}" if got else "lost: closed", flush=True)
    except OSError as e:
        print(f"lost: {e}", flush=True)
"#;

/// The default lab with a service range, and `web` over red and blue,
/// once for TCP (with a NodePort) and once for UDP (`web-udp`).
fn topology(affinity: bool) -> String {
    let affinity = if affinity {
        "affinity = \"client_ip\"\n"
    } else {
        ""
    };
    let mut text = format!(
        "{}\nservice_range = \"10.96.0.0/24\"\n",
        netlab::topology::DEFAULT_LAB
    );
    for (name, proto, node_port) in [("web", "tcp", true), ("web-udp", "udp", false)] {
        text += &format!(
            "\n[[service]]\nname = \"{name}\"\naddress = \"{VIP}\"\nport = 80\nproto = \"{proto}\"\n\
             backends = [\"red:8000\", \"blue:8000\"]\n{affinity}"
        );
        if node_port {
            text += &format!("node_port = {NODE_PORT}\n");
        }
    }
    text
}

/// The lab up on `datapath` with the Services, and both backends serving.
fn lab(datapath: &str, affinity: bool) -> (Sandbox, Vec<Background>) {
    let sb = Sandbox::new().unwrap();
    sb.write_file("/run/services.toml", &topology(affinity))
        .unwrap();
    sb.netlab_ok(&["up", "-f", "/run/services.toml", "--datapath", datapath])
        .unwrap();
    let servers = ["red", "blue"]
        .iter()
        .map(|ns| {
            let mut server = sb
                .spawn(&python(ns, WHOAMI_SERVER, &[ns]), LIFETIME)
                .unwrap();
            server.wait_for("ready", SETTLE).unwrap();
            server
        })
        .collect();
    (sb, servers)
}

fn python<'a>(netns: &'a str, script: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut argv = vec!["ip", "netns", "exec", netns, "python3", "-u", "-c", script];
    argv.extend_from_slice(args);
    argv
}

/// `count` requests from `netns` to `host:port`: how many each backend
/// answered (by name), every answer checked to come from one backend that
/// saw `source` (if given).
fn ask(
    sb: &Sandbox,
    netns: &str,
    to: (&str, &str),
    count: u32,
    proto: &str,
    source: Option<&str>,
) -> BTreeMap<String, u32> {
    let n = count.to_string();
    let out = sb
        .ok(&python(netns, ASK_MANY, &[to.0, to.1, &n, proto]))
        .unwrap();
    let mut answered = BTreeMap::new();
    for line in out.stdout.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert!(
            words.len() == 2 && ["red", "blue"].contains(&words[0]),
            "{proto} to {}:{}: `{line}` is not one backend's answer\n{out}",
            to.0,
            to.1
        );
        if let Some(source) = source {
            // A backend reaching itself sees the gateway (hairpin NAT).
            let expected = if words[0] == netns { GATEWAY } else { source };
            assert_eq!(words[1], expected, "the source the backend saw: {line}");
        }
        *answered.entry(words[0].to_owned()).or_insert(0) += 1;
    }
    assert_eq!(answered.values().sum::<u32>(), count, "{out}");
    answered
}

/// A ClusterIP from a lab namespace, TCP and UDP: every backend is chosen
/// over a bounded run, and each request is answered by exactly one; the
/// backend sees the client's own address (a backend reaching itself
/// sees the gateway: hairpin NAT, as Docker does for a published port).
fn cluster_ip_spreads_over_every_backend(datapath: &str) {
    let (sb, _servers) = lab(datapath, false);
    for proto in ["tcp", "udp"] {
        let answered = ask(&sb, "blue", (VIP, "80"), 40, proto, Some("192.168.15.2"));
        assert_eq!(answered.len(), 2, "{proto}: {answered:?}");
    }
    let answered = ask(&sb, "red", (VIP, "80"), 40, "tcp", Some("192.168.15.1"));
    assert_eq!(answered.len(), 2, "from a backend itself: {answered:?}");
    // The host's own sockets (the eBPF datapaths translate them at
    // connect(); iptables in OUTPUT, routed by the lab's route to the
    // service range).
    let out = sb
        .ok(&["python3", "-u", "-c", ASK_MANY, VIP, "80", "20", "tcp"])
        .unwrap();
    for backend in ["red", "blue"] {
        assert!(
            out.stdout.lines().any(|l| l.starts_with(backend)),
            "from the host: {out}"
        );
    }
    assert_eq!(out.stdout.lines().count(), 20, "{out}");
    let status = sb.status().unwrap();
    let services = &status.nat.as_ref().unwrap().services;
    assert_eq!(services.len(), 2, "{services:?}");
    assert!(
        services[0].starts_with("web 10.96.0.10:80/tcp -> 192.168.15.1:8000 192.168.15.2:8000"),
        "{services:?}"
    );
    if datapath != "iptables" {
        // Each flow opened by the Service, hairpinned or not.
        let opened = nat_counter(&status, "service_new").unwrap_or(0)
            + nat_counter(&status, "hairpin_new").unwrap_or(0);
        assert!(opened >= 120, "{opened} flows opened: {status:?}");
    }
}

/// Session affinity: every flow of a client goes to one backend.
fn affinity_keeps_a_client_on_one_backend(datapath: &str) {
    let (sb, _servers) = lab(datapath, true);
    for proto in ["tcp", "udp"] {
        let answered = ask(&sb, "blue", (VIP, "80"), 20, proto, None);
        assert_eq!(answered.len(), 1, "{proto}: {answered:?}");
    }
}

/// The NodePort from the world reaches the node's backends, which see the
/// world's address (externalTrafficPolicy: Local); the world cannot route
/// to a ClusterIP.
fn node_port_serves_the_world_and_cluster_ips_do_not(datapath: &str) {
    let (sb, _servers) = lab(datapath, false);
    let answered = ask(
        &sb,
        "outside",
        (UPLINK, NODE_PORT),
        30,
        "tcp",
        Some(OUTSIDE),
    );
    assert_eq!(answered.len(), 2, "{answered:?}");
    sb.ok(&[
        "ip",
        "netns",
        "exec",
        "outside",
        "ip",
        "route",
        "add",
        "10.96.0.0/24",
        "via",
        UPLINK,
    ])
    .unwrap();
    let out = sb
        .ok(&python("outside", ASK_MANY, &[VIP, "80", "1", "tcp"]))
        .unwrap();
    assert!(
        out.stdout.starts_with("error"),
        "the world reached a ClusterIP: {out}"
    );
    if datapath != "iptables" {
        let status = sb.status().unwrap();
        assert!(
            nat_counter(&status, "routed_into_lab").unwrap_or(0) >= 1,
            "{status:?}"
        );
    }
}

/// A backend removed while flows run: its flows end, the others go on,
/// and new flows go to the backends left. Then `service rm`.
fn a_removed_backend_s_flows_are_cut(datapath: &str) {
    let (sb, _servers) = lab(datapath, false);
    // Long connections until each backend holds one.
    let mut held: BTreeMap<String, Background> = BTreeMap::new();
    for _ in 0..40 {
        if held.len() == 2 {
            break;
        }
        let mut client = sb
            .spawn(&python("blue", LONG_CLIENT, &[VIP, "80"]), LIFETIME)
            .unwrap();
        client.wait_for("backend ", SETTLE).unwrap();
        let backend = client
            .stdout()
            .lines()
            .find_map(|l| l.strip_prefix("backend ").map(str::to_owned))
            .unwrap();
        held.entry(backend).or_insert(client);
    }
    assert_eq!(held.len(), 2, "40 connections all went to one backend");
    for (name, client) in &mut held {
        client.send_line(&format!("before-{name}")).unwrap();
        client
            .wait_for(&format!("echo before-{name}"), SETTLE)
            .unwrap();
    }

    let listed = sb.netlab_ok(&["service", "list", "--json"]).unwrap();
    let listed: Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(listed[0]["name"], "web", "{listed:#}");
    assert_eq!(listed[0]["backends"].as_array().unwrap().len(), 2);

    // red leaves the Service.
    let out = sb
        .netlab_ok(&[
            "service",
            "add",
            "web",
            "10.96.0.10:80",
            "blue:8000",
            "--node-port",
            NODE_PORT,
            "--json",
        ])
        .unwrap();
    let outcome: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(outcome["action"], "update", "{outcome:#}");

    let mut blue = held.remove("blue").unwrap();
    blue.send_line("after").unwrap();
    blue.wait_for("echo after", SETTLE).unwrap();
    let mut red = held.remove("red").unwrap();
    red.send_line("after").unwrap();
    red.wait_for("lost", SETTLE).unwrap();
    let answered = ask(&sb, "blue", (VIP, "80"), 10, "tcp", None);
    assert_eq!(
        answered.keys().collect::<Vec<_>>(),
        ["blue"],
        "{answered:?}"
    );

    sb.netlab_ok(&["service", "rm", "web"]).unwrap();
    let out = sb
        .ok(&python("blue", ASK_MANY, &[VIP, "80", "1", "tcp"]))
        .unwrap();
    assert!(
        out.stdout.starts_with("error"),
        "a removed Service answered: {out}"
    );
    let listed = sb.netlab_ok(&["service", "list"]).unwrap();
    assert!(listed.stdout.starts_with("web-udp "), "{listed}");
    assert_eq!(listed.stdout.lines().count(), 1, "{listed}");
}

macro_rules! per_datapath {
    ($($scenario:ident),* $(,)?) => {
        mod bridge {
            $(
                #[test]
                #[ignore = "privileged: run through `cargo xtask test`"]
                fn $scenario() {
                    super::$scenario("bridge");
                }
            )*
        }

        mod iptables {
            $(
                #[test]
                #[ignore = "privileged: run through `cargo xtask test`"]
                fn $scenario() {
                    super::$scenario("iptables");
                }
            )*
        }

        mod redirect {
            $(
                #[test]
                #[ignore = "privileged: run through `cargo xtask test`"]
                fn $scenario() {
                    super::$scenario("redirect");
                }
            )*
        }
    };
}

per_datapath!(
    cluster_ip_spreads_over_every_backend,
    affinity_keeps_a_client_on_one_backend,
    node_port_serves_the_world_and_cluster_ips_do_not,
    a_removed_backend_s_flows_are_cut,
);
