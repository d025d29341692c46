//! A lab never takes the host's own traffic (issue 13): `up` refuses a lab
//! subnet that holds an address the host is talking to through a route
//! that is not a lab's own (here its default route), and a lab that is up
//! leaves the host's reach of everything outside its subnets alone.
//!
//! Everything lives in the test's sandbox: its root namespace plays the
//! host, and a namespace `far`, reached through the host's default route,
//! plays the rest of the world.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test fails by panicking, helpers included"
)]

use std::time::Duration;

use netlab_tests::Sandbox;

/// An address inside the default lab's uplink subnet (see
/// netlab/src/topology/default.toml) that no lab interface holds.
const IN_LAB_SUBNET: &str = "198.18.0.77";
/// The first address past the default lab's uplink subnet.
const JUST_OUTSIDE: &str = "198.18.1.1";

const LIFETIME: Duration = Duration::from_secs(60);

/// Gives the sandbox's host a default route into a namespace `far` that
/// holds `addresses` on its loopback.
fn far_world(sb: &Sandbox, addresses: &[&str]) {
    for argv in [
        &["ip", "netns", "add", "far"][..],
        &[
            "ip", "link", "add", "to-far", "type", "veth", "peer", "name", "far0", "netns", "far",
        ],
        &["ip", "addr", "add", "10.250.0.1/30", "dev", "to-far"],
        &["ip", "link", "set", "to-far", "up"],
        &[
            "ip",
            "-n",
            "far",
            "addr",
            "add",
            "10.250.0.2/30",
            "dev",
            "far0",
        ],
        &["ip", "-n", "far", "link", "set", "far0", "up"],
        &["ip", "-n", "far", "link", "set", "lo", "up"],
        &[
            "ip",
            "-n",
            "far",
            "route",
            "add",
            "default",
            "via",
            "10.250.0.1",
        ],
        &["ip", "route", "add", "default", "via", "10.250.0.2"],
    ] {
        sb.ok(argv).unwrap();
    }
    for addr in addresses {
        let cidr = format!("{addr}/32");
        sb.ok(&["ip", "-n", "far", "addr", "add", &cidr, "dev", "lo"])
            .unwrap();
    }
}

const SERVER: &str = r#"
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7000)); s.listen(1)
print("ready", flush=True)
conn, _ = s.accept()
time.sleep(60)
"#;

const CLIENT: &str = r#"
import socket, sys, time
s = socket.create_connection((sys.argv[1], 7000), timeout=5)
print("connected", flush=True)
time.sleep(60)
"#;

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn up_refuses_a_subnet_holding_a_peer_of_the_host() {
    let sb = Sandbox::new().unwrap();
    far_world(&sb, &[IN_LAB_SUBNET]);
    let mut server = sb
        .spawn(
            &[
                "ip",
                "netns",
                "exec",
                "far",
                "python3",
                "-u",
                "-c",
                SERVER,
                IN_LAB_SUBNET,
            ],
            LIFETIME,
        )
        .unwrap();
    server.wait_for("ready", Duration::from_secs(10)).unwrap();
    let mut client = sb
        .spawn(&["python3", "-u", "-c", CLIENT, IN_LAB_SUBNET], LIFETIME)
        .unwrap();
    client
        .wait_for("connected", Duration::from_secs(10))
        .unwrap();

    let out = sb.netlab(&["up"]).unwrap().failed().unwrap();
    for needle in [IN_LAB_SUBNET, "established TCP connection", "--force"] {
        assert!(out.stderr.contains(needle), "lacks `{needle}`: {out}");
    }
    sb.assert_no_lab_traces("default").unwrap();

    // --force builds it anyway, and says why it should not have.
    let out = sb.netlab_ok(&["up", "--force"]).unwrap();
    assert!(out.stderr.contains(IN_LAB_SUBNET), "no warning: {out}");
    sb.netlab_ok(&["down"]).unwrap();
    drop(client);
    drop(server);
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn the_host_still_reaches_what_lies_outside_the_lab() {
    let sb = Sandbox::new().unwrap();
    far_world(&sb, &[JUST_OUTSIDE]);
    sb.ping(None, JUST_OUTSIDE, 1).unwrap();
    sb.netlab_ok(&["up"]).unwrap();
    sb.ping(None, JUST_OUTSIDE, 1)
        .expect("the lab took the host's route to an address outside its subnets");
    sb.netlab_ok(&["down"]).unwrap();
}
