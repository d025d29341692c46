//! The default lab end to end: up, connectivity, idempotency, down, packet
//! counters and exec. Each test runs in its own sandbox (see the harness).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test fails by panicking, helpers included"
)]

use netlab_tests::{
    Detail, LabStatus, NetState, Sandbox, netns_names, packets, status_hook, status_links,
};

const LAB: &str = "default";

/// Every veth of the default lab, both ends.
const VETHS: [&str; 6] = [
    "nl-uplink",
    "veth-blue",
    "veth-blue-br",
    "veth-outside",
    "veth-red",
    "veth-red-br",
];

/// The datapath runs where it should, once: the NAT programs on both hooks
/// of every host-side end (a program listed twice on a hook means
/// something attached it again), nothing on the namespace sides until
/// somebody traces. Every end has the kernel's counters.
fn assert_datapath_attached(status: &LabStatus) {
    let links = status_links(status);
    let mut veths: Vec<&str> = links
        .iter()
        .filter(|(_, link)| link.kind.as_deref() == Some("veth"))
        .map(|(_, link)| link.name.as_str())
        .collect();
    veths.sort_unstable();
    assert_eq!(veths, VETHS, "veths in status: {status:#?}");
    for veth in VETHS {
        let host_side = veth.ends_with("-br") || veth == "nl-uplink";
        for (hook, program) in [("ingress", "nat_ingress"), ("egress", "nat_egress")] {
            let entry = status_hook(status, veth, hook).unwrap();
            let want: &[&str] = if host_side { &[program] } else { &[] };
            assert_eq!(entry.programs, want, "{hook} of {veth}: {entry:#?}");
        }
    }
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn default_lab_connects_and_counts() {
    let sb = Sandbox::new().unwrap();
    sb.netlab_ok(&["up"]).unwrap();

    sb.ping(Some("red"), "192.168.15.2", 1).unwrap();
    sb.ping(None, "192.168.15.1", 1).unwrap();

    let listed = netns_names(&sb.ok(&["ip", "netns", "list"]).unwrap().stdout);
    assert_eq!(listed, ["blue", "outside", "red"]);

    let status = sb.status().unwrap();
    assert_eq!(status.lab, LAB, "{status:#?}");
    assert!(status.complete, "{status:#?}");
    for place in &status.places {
        assert!(place.present, "{place:#?}");
    }
    assert_datapath_attached(&status);
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn second_up_changes_nothing() {
    let sb = Sandbox::new().unwrap();
    sb.netlab_ok(&["up"]).unwrap();
    let after_first = NetState::capture(&sb, Detail::Full).unwrap();

    let second = sb.netlab_ok(&["up"]).unwrap();
    assert!(
        second.stdout.contains(" 0 created"),
        "the second `up` should create nothing: {second}"
    );
    NetState::capture(&sb, Detail::Full)
        .unwrap()
        .same_as(&after_first, "after the second `up`")
        .unwrap();

    let status = sb.status().unwrap();
    assert!(status.complete, "{status:#?}");
    assert_datapath_attached(&status);
    sb.ping(Some("red"), "192.168.15.2", 1).unwrap();
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn down_restores_the_network() {
    let sb = Sandbox::new().unwrap();
    let before = NetState::capture(&sb, Detail::Identity).unwrap();

    sb.netlab_ok(&["up"]).unwrap();
    sb.ping(Some("blue"), "192.168.15.1", 1).unwrap();
    assert!(sb.exists(&format!("/run/netlab/{LAB}.json")).unwrap());
    assert!(sb.exists(&format!("/sys/fs/bpf/netlab/{LAB}")).unwrap());

    sb.netlab_ok(&["down"]).unwrap();
    NetState::capture(&sb, Detail::Identity)
        .unwrap()
        .same_as(&before, "after `down`")
        .unwrap();
    sb.assert_no_lab_traces(LAB).unwrap();
    assert!(
        !sb.exists("/sys/fs/bpf/netlab").unwrap(),
        "/sys/fs/bpf/netlab outlived the last lab"
    );
    // Whatever `up` left in /run/netlab (locks, say), no lab record remains.
    let state_dir = sb.path_via_holder("/run/netlab");
    if state_dir.exists() {
        let records: Vec<_> = std::fs::read_dir(&state_dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".json"))
            .collect();
        assert!(
            records.is_empty(),
            "records left in /run/netlab: {records:?}"
        );
    }

    let again = sb.netlab_ok(&["down"]).unwrap();
    assert!(
        again.stdout.contains("nothing to remove") || again.stderr.contains("nothing to remove"),
        "a second `down` should say there is nothing to remove: {again}"
    );
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn counters_rise_with_traffic() {
    const PINGS: u32 = 5;
    let sb = Sandbox::new().unwrap();
    sb.netlab_ok(&["up"]).unwrap();
    // Resolve ARP first, so the counted round below is pure ICMP.
    sb.ping(Some("red"), "192.168.15.2", 1).unwrap();

    // Requests go red → blue, replies blue → red; each crosses a veth pair
    // on both sides of the bridge.
    let directions = [
        ("veth-red", "egress"),
        ("veth-red-br", "ingress"),
        ("veth-blue-br", "egress"),
        ("veth-blue", "ingress"),
        ("veth-blue", "egress"),
        ("veth-blue-br", "ingress"),
        ("veth-red-br", "egress"),
        ("veth-red", "ingress"),
    ];
    let before = sb.status().unwrap();
    sb.ping(Some("red"), "192.168.15.2", PINGS).unwrap();
    let after = sb.status().unwrap();

    for (link, hook) in directions {
        let was = packets(&before, link, hook).unwrap();
        let now = packets(&after, link, hook).unwrap();
        assert!(
            now >= was + u64::from(PINGS),
            "{link} {hook}: {was} packets before {PINGS} pings, {now} after"
        );
        let bytes = |status: &LabStatus| status_hook(status, link, hook).unwrap().bytes;
        let (was, now) = (bytes(&before), bytes(&after));
        // 84 bytes of IPv4 + ICMP per echo, without the Ethernet header.
        assert!(
            now >= was + u64::from(PINGS) * 84,
            "{link} {hook}: {was} bytes before {PINGS} pings, {now} after"
        );
    }
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn exec_runs_in_the_lab_namespace() {
    let sb = Sandbox::new().unwrap();

    let no_lab = sb
        .netlab(&["exec", "red", "--", "true"])
        .unwrap()
        .failed()
        .unwrap();
    assert!(
        !no_lab.stderr.trim().is_empty(),
        "`exec` without a lab should say why it failed: {no_lab}"
    );

    sb.netlab_ok(&["up"]).unwrap();
    let red = sb
        .netlab_ok(&["exec", "red", "--", "ip", "-br", "addr"])
        .unwrap();
    assert!(red.stdout.contains("192.168.15.1/24"), "{red}");
    assert!(!red.stdout.contains("192.168.15.2"), "{red}");
    let blue = sb
        .netlab_ok(&["exec", "blue", "--", "ip", "-br", "addr"])
        .unwrap();
    assert!(blue.stdout.contains("192.168.15.2/24"), "{blue}");
    let pinged = sb
        .netlab_ok(&[
            "exec",
            "red",
            "--",
            "ping",
            "-c",
            "1",
            "-W",
            "1",
            "192.168.15.2",
        ])
        .unwrap();
    assert!(pinged.stdout.contains("1 received"), "{pinged}");

    let stranger = sb
        .netlab(&["exec", "nowhere", "--", "true"])
        .unwrap()
        .failed()
        .unwrap();
    assert!(
        stranger.stderr.contains("nowhere") && stranger.stderr.contains("not a namespace"),
        "the error should name the namespace and why: {stranger}"
    );

    let false_ = sb.netlab(&["exec", "red", "--", "false"]).unwrap();
    assert_eq!(false_.code(), Some(1), "{false_}");
    let seven = sb
        .netlab(&["exec", "red", "--", "sh", "-c", "exit 7"])
        .unwrap();
    assert_eq!(seven.code(), Some(7), "{seven}");
}

/// Every machine-readable output ends each object with a newline, so
/// `| tail -1 | jq` and line counters see the last one (issue 13).
#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn json_outputs_end_every_object_with_a_newline() {
    let sb = Sandbox::new().unwrap();
    sb.netlab_ok(&["up"]).unwrap();
    // Two flows through masquerade, so conntrack lists more than one line.
    sb.ping(Some("red"), "198.18.0.2", 1).unwrap();
    sb.ping(Some("blue"), "198.18.0.2", 1).unwrap();
    let lines = sb.netlab_ok(&["conntrack", "--json"]).unwrap().stdout;
    assert!(lines.ends_with('\n'), "conntrack --json: {lines:?}");
    let flows: Vec<serde_json::Value> = lines
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    assert!(flows.len() >= 2, "two flows listed: {lines}");
    for args in [
        &["status", "--json"][..],
        &["publish", "list", "--json"],
        &["publish", "add", "blue", "9090:90/tcp", "--json"],
        &["publish", "rm", "9090/tcp", "--json"],
    ] {
        let out = sb.netlab_ok(args).unwrap().stdout;
        assert!(out.ends_with('\n'), "{args:?}: {out:?}");
        serde_json::from_str::<serde_json::Value>(&out).expect("one JSON document");
    }
    sb.netlab_ok(&["down"]).unwrap();
}
