//! `netlab metrics` (issue 15): scraped inside the sandbox while traffic
//! flows, its counters rise; both formats it serves are well formed
//! (checked by the harness's reader, and by `promtool` when installed).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test fails by panicking, helpers included"
)]

use std::{thread, time::Duration};

use netlab_tests::{
    Background, Sandbox,
    exposition::{self, Format, Sample, value},
};

/// The server binds the sandbox's own loopback; nothing outside sees it.
const LISTEN: &str = "127.0.0.1:9478";
const LIFETIME: Duration = Duration::from_secs(60);

fn serve(sb: &Sandbox) -> Background {
    let netlab = sb.netlab_path().to_string_lossy().into_owned();
    let mut server = sb
        .spawn(&[&netlab, "metrics", "--listen", LISTEN], LIFETIME)
        .unwrap();
    server
        .wait_for("serving lab", Duration::from_secs(10))
        .unwrap();
    server
}

/// One scrape as Prometheus makes it (asking for OpenMetrics).
fn scrape(sb: &Sandbox) -> Vec<Sample> {
    let url = format!("http://{LISTEN}/metrics");
    let out = sb
        .ok(&[
            "curl",
            "-sS",
            "--max-time",
            "10",
            "-H",
            "Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
            &url,
        ])
        .unwrap();
    exposition::parse(&out.stdout, Format::OpenMetrics)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", out.stdout))
}

/// The classic text format (what curl gets), checked by promtool if the
/// machine has it.
fn scrape_classic(sb: &Sandbox) -> Vec<Sample> {
    let url = format!("http://{LISTEN}/metrics");
    let out = sb.ok(&["curl", "-sS", "--max-time", "10", &url]).unwrap();
    let has_promtool = sb
        .run(&["sh", "-c", "command -v promtool"])
        .unwrap()
        .success();
    if has_promtool {
        let check = sb
            .run(&[
                "sh",
                "-c",
                &format!("curl -sS --max-time 10 {url} | promtool check metrics"),
            ])
            .unwrap();
        assert!(check.success(), "promtool check metrics:\n{check}");
    } else {
        eprintln!("promtool is not installed: format checked by the harness only");
    }
    exposition::parse(&out.stdout, Format::Classic)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", out.stdout))
}

fn lab_value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut all = vec![("lab", "default")];
    all.extend_from_slice(labels);
    value(samples, name, &all).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Every counter of `before` is still there in `after`, not lower.
fn assert_monotonic(before: &[Sample], after: &[Sample]) {
    for old in before.iter().filter(|s| s.name.ends_with("_total")) {
        let new = after
            .iter()
            .find(|s| s.name == old.name && s.labels == old.labels)
            .unwrap_or_else(|| panic!("{} {:?} vanished", old.name, old.labels));
        assert!(
            new.value >= old.value,
            "{} {:?} went down: {} → {}",
            old.name,
            old.labels,
            old.value,
            new.value
        );
    }
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn counters_rise_while_traffic_flows() {
    let sb = Sandbox::new().unwrap();
    sb.netlab_ok(&["up"]).unwrap();
    let _server = serve(&sb);

    let first = scrape(&sb);
    assert_eq!(lab_value(&first, "netlab_lab_up", &[]), 1.0);
    assert_eq!(
        lab_value(&first, "netlab_lab_info", &[("datapath", "bridge")]),
        1.0
    );
    assert_eq!(lab_value(&first, "netlab_published_ports", &[]), 1.0);
    assert_eq!(
        lab_value(
            &first,
            "netlab_published_port_info",
            &[
                ("netns", "blue"),
                ("proto", "tcp"),
                ("host_port", "8080"),
                ("port", "80")
            ]
        ),
        1.0
    );
    assert!(lab_value(&first, "netlab_conntrack_entries_limit", &[]) > 0.0);
    let red_out = [("netns", "red"), ("iface", "veth-red"), ("hook", "egress")];
    let uplink_out = [
        ("netns", "host"),
        ("iface", "nl-uplink"),
        ("hook", "egress"),
    ];
    let at_start =
        |name: &str, labels: &[(&str, &str)]| value(&first, name, labels).map_or(0.0, |v| v);

    // Masqueraded traffic, red → outside, flowing while we scrape.
    let ping = sb
        .spawn(
            &[
                "ip",
                "netns",
                "exec",
                "red",
                "ping",
                "-n",
                "-q",
                "-c",
                "20",
                "-i",
                "0.2",
                "198.18.0.2",
            ],
            LIFETIME,
        )
        .unwrap();
    thread::sleep(Duration::from_millis(1500));
    let during = scrape(&sb);
    let out = ping.finish(Duration::from_secs(20)).unwrap().ok().unwrap();
    assert!(out.stdout.contains("20 received"), "{out}");
    let after = scrape(&sb);

    for (name, labels) in [
        ("netlab_iface_packets_total", &red_out[..]),
        ("netlab_iface_bytes_total", &red_out[..]),
        ("netlab_iface_packets_total", &uplink_out[..]),
    ] {
        let (start, mid, end) = (
            at_start(name, labels),
            lab_value(&during, name, labels),
            lab_value(&after, name, labels),
        );
        assert!(
            start < mid && mid < end,
            "{name} {labels:?} did not rise while traffic flowed: {start} → {mid} → {end}"
        );
    }
    assert!(lab_value(&after, "netlab_nat_events_total", &[("reason", "snat_new")]) >= 1.0);
    assert!(lab_value(&after, "netlab_conntrack_entries", &[]) >= 2.0);
    assert!(lab_value(&after, "netlab_iface_packets_total", &red_out) >= 20.0);
    lab_value(&after, "netlab_trace_events_total", &[]);
    lab_value(&after, "netlab_trace_events_lost_total", &[]);
    assert_monotonic(&first, &during);
    assert_monotonic(&during, &after);

    let classic = scrape_classic(&sb);
    assert!(lab_value(&classic, "netlab_iface_packets_total", &red_out) >= 20.0);
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn redirect_decisions_and_trace_events_are_counted() {
    let sb = Sandbox::new().unwrap();
    sb.netlab_ok(&["up", "--datapath", "redirect"]).unwrap();
    let _server = serve(&sb);
    let before = scrape(&sb);
    let decisions = |samples: &[Sample]| -> f64 {
        samples
            .iter()
            .filter(|s| s.name == "netlab_redirect_decisions_total")
            .map(|s| s.value)
            .sum()
    };

    // Tracing on while red pings blue: hops become trace events.
    let netlab = sb.netlab_path().to_string_lossy().into_owned();
    let mut trace = sb
        .spawn(
            &[
                &netlab,
                "trace",
                "--json",
                "--notices-json",
                "--duration",
                "3",
                "icmp",
            ],
            LIFETIME,
        )
        .unwrap();
    trace.wait_for_trace_start(Duration::from_secs(10)).unwrap();
    sb.ping(Some("red"), "192.168.15.2", 3).unwrap();
    trace.finish(Duration::from_secs(30)).unwrap().ok().unwrap();

    let after = scrape(&sb);
    assert!(
        decisions(&after) > decisions(&before),
        "no redirect decision counted: {after:#?}"
    );
    assert!(
        lab_value(
            &after,
            "netlab_redirect_decisions_total",
            &[("iface", "veth-red-br"), ("reason", "redirect_peer")]
        ) >= 3.0
    );
    assert!(lab_value(&after, "netlab_trace_events_total", &[]) >= 12.0);
    assert_eq!(
        lab_value(&after, "netlab_trace_events_lost_total", &[]),
        0.0
    );
    assert_monotonic(&before, &after);
    scrape_classic(&sb);
}
