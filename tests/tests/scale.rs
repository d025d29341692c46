//! A generated lab: 250 namespaces from one `[[namespace_group]]`, with
//! published ports and masquerade, built, converged and torn down inside a
//! sandbox, leaving nothing behind.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test fails by panicking, helpers included"
)]

use netlab_tests::{Detail, NetState, Sandbox, netns_names};

const MEMBERS: usize = 250;

const TOPOLOGY: &str = r#"name = "scale"

[[namespace]]
name = "outside"

[[bridge]]
name = "br-scale"
addresses = ["10.200.0.1/16"]

[[namespace_group]]
name = "m{n}"
count = 250
host_veth = "m{n}-br"
bridge = "br-scale"
address = "10.200.0.2/16"
default_via = "10.200.0.1"
publish = ["20000:80/tcp"]

[[veth]]
name = "veth-outside"
netns = "outside"
addresses = ["198.18.0.2/24"]
peer = { name = "nl-uplink", addresses = ["198.18.0.1/24"] }

[nat]
masquerade = ["10.200.0.0/16"]
uplink = "nl-uplink"
"#;

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn group_of_250_namespaces_comes_up_and_leaves_nothing() {
    let sb = Sandbox::new().unwrap();
    let before = NetState::capture(&sb, Detail::Identity).unwrap();
    sb.write_file("/run/scale.toml", TOPOLOGY).unwrap();

    let up = sb.netlab_ok(&["up", "-f", "/run/scale.toml"]).unwrap();
    assert!(up.stdout.contains("scale is up"), "{up}");
    let listed = netns_names(&sb.ok(&["ip", "netns", "list"]).unwrap().stdout);
    assert_eq!(listed.len(), MEMBERS + 1, "{listed:?}");
    assert!(listed.iter().any(|n| n == "m250"), "{listed:?}");

    // First and last member reach each other across the bridge.
    sb.ping(Some("m1"), "10.200.0.251", 1).unwrap();
    sb.ping(Some("m250"), "10.200.0.2", 1).unwrap();

    // A second `up` converges: nothing new.
    let again = sb.netlab_ok(&["up", "-f", "/run/scale.toml"]).unwrap();
    assert!(again.stdout.contains(": 0 created"), "{again}");

    sb.netlab_ok(&["down", "--lab", "scale"]).unwrap();
    NetState::capture(&sb, Detail::Identity)
        .unwrap()
        .same_as(&before, "after `down` of the 250-namespace lab")
        .unwrap();
    sb.assert_no_lab_traces("scale").unwrap();
}
