//! `netlab graph` (issue 15): the default lab laid out by Graphviz holds
//! every namespace and link of the topology, and a running lab's picture
//! carries its datapath and counters.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test fails by panicking, helpers included"
)]

use std::collections::BTreeSet;

use netlab::{
    graph::{self, Format, Picture},
    topology::{self, Place},
};
use netlab_tests::Sandbox;

/// The `<title>`s of an SVG made by Graphviz: one per cluster, node and
/// edge (`cluster_NAME`, `NODE`, `TAIL--HEAD`), entities decoded.
fn titles(svg: &str) -> BTreeSet<String> {
    svg.split("<title>")
        .skip(1)
        .filter_map(|rest| rest.split_once("</title>").map(|(t, _)| t))
        .map(|t| {
            t.replace("&#45;", "-")
                .replace("&gt;", ">")
                .replace("&lt;", "<")
                .replace("&quot;", "\"")
                .replace("&amp;", "&")
        })
        .collect()
}

/// Needs Graphviz (`cargo xtask test` installs it), not root.
#[test]
fn default_lab_svg_has_every_namespace_and_link() {
    let topo = topology::default_lab().unwrap();
    let dot = Picture::of_topology(&topo).render(Format::Dot);
    let svg = String::from_utf8(graph::svg(&dot).unwrap()).unwrap();
    assert!(svg.contains("<svg"), "not an SVG:\n{svg}");
    let titles = titles(&svg);
    assert!(titles.contains("cluster_host"), "{titles:?}");
    for ns in &topo.namespaces {
        assert!(
            titles.contains(&format!("cluster_{}", ns.name)),
            "namespace {} missing: {titles:?}",
            ns.name
        );
    }
    let node = |place: &Place, name: &str| format!("{place}/{name}");
    let edge = |a: &str, b: &str| {
        titles.contains(&format!("{a}--{b}")) || titles.contains(&format!("{b}--{a}"))
    };
    for bridge in &topo.bridges {
        assert!(titles.contains(&node(&Place::Host, &bridge.name)));
    }
    for veth in &topo.veths {
        let (a, b) = (
            node(&veth.a.place, &veth.a.name),
            node(&veth.b.place, &veth.b.name),
        );
        assert!(titles.contains(&a) && titles.contains(&b), "{titles:?}");
        assert!(edge(&a, &b), "veth {a} -- {b} missing: {titles:?}");
        for end in [&veth.a, &veth.b] {
            if let Some(bridge) = &end.bridge {
                let port = node(&end.place, &end.name);
                assert!(
                    edge(&node(&Place::Host, bridge), &port),
                    "bridge port {port} missing: {titles:?}"
                );
            }
        }
    }
    for address in topo.addresses() {
        assert!(svg.contains(&address.net.to_string()), "{}", address.net);
    }
    assert!(svg.contains("publish 8080/tcp"), "published port missing");
    assert!(svg.contains("masquerade 192.168.15.0/24"));
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn live_graph_shows_the_datapath_and_counters() {
    let sb = Sandbox::new().unwrap();
    sb.netlab_ok(&["up", "--datapath", "redirect"]).unwrap();
    sb.ping(Some("red"), "192.168.15.2", 3).unwrap();
    let dot = sb.netlab_ok(&["graph"]).unwrap().stdout;
    assert!(dot.contains("redirect datapath (live"), "{dot}");
    let sent: u64 = dot
        .split("veth-red sent ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter for veth-red:\n{dot}"));
    assert!(
        sent >= 3,
        "veth-red sent {sent} packets, pinged 3 times:\n{dot}"
    );
    let mermaid = sb
        .netlab_ok(&["graph", "--format", "mermaid"])
        .unwrap()
        .stdout;
    assert!(mermaid.contains("veth-red sent "), "{mermaid}");
    // Ports published at run time are drawn; -f draws the file, not the lab.
    sb.netlab_ok(&["publish", "add", "red", "9090:90/udp"])
        .unwrap();
    let dot = sb.netlab_ok(&["graph"]).unwrap().stdout;
    assert!(dot.contains("publish 9090/udp"), "{dot}");
}
