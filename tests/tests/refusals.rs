//! What `up` must refuse, and how: bad topologies are rejected before any
//! kernel change, and netlab never adopts or deletes what it did not create.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test fails by panicking, helpers included"
)]

use netlab_tests::{Detail, NetState, Sandbox};

/// Adds a link to the sandbox's root namespace, the way a user's own
/// interface would be there. `dummy` when the kernel has it (some minimal
/// kernels lack the module); else a bridge, which the lab's own bridge
/// shows the kernel has.
fn add_host_link(sb: &Sandbox, name: &str) {
    let dummy = sb
        .run(&["ip", "link", "add", name, "type", "dummy"])
        .unwrap();
    if !dummy.success() {
        assert!(
            dummy.stderr.contains("Unknown device type"),
            "cannot add dummy link {name}: {dummy}"
        );
        sb.ok(&["ip", "link", "add", name, "type", "bridge"])
            .unwrap();
    }
}

/// A topology file inside the sandbox; returns its path there.
fn topology(sb: &Sandbox, file: &str, text: &str) -> String {
    let path = format!("/run/netlab-tests/{file}");
    sb.write_file(&path, text).unwrap();
    path
}

const LONG_NAME: &str = r#"name = "longname"

[[namespace]]
name = "app"

[[veth]]
name = "veth-app-bridge0"
netns = "app"
addresses = ["10.50.0.1/24"]
peer = { name = "veth-app-br", addresses = ["10.50.0.2/24"] }
"#;

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn interface_name_too_long_is_refused_with_its_place() {
    let sb = Sandbox::new().unwrap();
    let path = topology(&sb, "long-name.toml", LONG_NAME);
    let before = NetState::capture(&sb, Detail::Full).unwrap();

    let out = sb.netlab(&["up", "-f", &path]).unwrap().failed().unwrap();

    // Where the 16-byte name sits: 1-based line, and the column of its value.
    let (line, text) = LONG_NAME
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains("veth-app-bridge0"))
        .map(|(i, l)| (i + 1, l))
        .unwrap();
    let column = text.find('"').unwrap() + 1;
    let place = format!("{path}:{line}:{column}");
    assert_eq!("veth-app-bridge0".len(), 16);
    for wanted in ["veth-app-bridge0", "16", "15", place.as_str()] {
        assert!(
            out.stderr.contains(wanted),
            "the error should mention `{wanted}`: {out}"
        );
    }
    NetState::capture(&sb, Detail::Full)
        .unwrap()
        .same_as(&before, "after a refused `up`")
        .unwrap();
    sb.assert_no_lab_traces("longname").unwrap();
}

const OVERLAP: &str = r#"name = "overlap"

[[namespace]]
name = "app"

[[bridge]]
name = "ov-br0"
addresses = ["10.99.0.254/24"]

[[veth]]
name = "ov-app"
netns = "app"
addresses = ["10.99.0.10/24"]
peer = { name = "ov-app-br", bridge = "ov-br0" }
"#;

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn subnet_overlapping_a_host_route_is_refused() {
    let sb = Sandbox::new().unwrap();
    add_host_link(&sb, "hostdummy");
    sb.ok(&["ip", "addr", "add", "10.99.0.1/24", "dev", "hostdummy"])
        .unwrap();
    sb.ok(&["ip", "link", "set", "hostdummy", "up"]).unwrap();
    let routes = sb.ok(&["ip", "route"]).unwrap();
    assert!(routes.stdout.contains("10.99.0.0/24"), "{routes}");
    let path = topology(&sb, "overlap.toml", OVERLAP);
    let before = NetState::capture(&sb, Detail::Full).unwrap();

    let out = sb.netlab(&["up", "-f", &path]).unwrap().failed().unwrap();
    for wanted in ["10.99.0.0/24", "overlaps", "hostdummy"] {
        assert!(
            out.stderr.contains(wanted),
            "the error should mention `{wanted}`: {out}"
        );
    }
    NetState::capture(&sb, Detail::Full)
        .unwrap()
        .same_as(&before, "after a refused `up`")
        .unwrap();
    sb.assert_no_lab_traces("overlap").unwrap();
}

/// The netns file's inode identifies the namespace itself: same inode,
/// same namespace, not one deleted and recreated under the same name.
fn netns_inode(sb: &Sandbox, name: &str) -> String {
    let path = format!("/run/netns/{name}");
    sb.ok(&["stat", "-L", "-c", "%i", &path])
        .unwrap()
        .stdout
        .trim()
        .to_owned()
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn foreign_namespace_is_neither_adopted_nor_deleted() {
    let sb = Sandbox::new().unwrap();
    sb.ok(&["ip", "netns", "add", "red"]).unwrap();
    sb.ok(&["ip", "-n", "red", "link", "set", "lo", "up"])
        .unwrap();
    let inode = netns_inode(&sb, "red");
    let before = NetState::capture(&sb, Detail::Full).unwrap();

    let out = sb.netlab(&["up"]).unwrap().failed().unwrap();
    assert!(
        out.stderr.contains("`red`") && out.stderr.contains("already exists"),
        "the error should name the foreign namespace: {out}"
    );
    NetState::capture(&sb, Detail::Full)
        .unwrap()
        .same_as(&before, "after `up` met a foreign namespace")
        .unwrap();
    sb.assert_no_lab_traces("default").unwrap();

    sb.netlab_ok(&["down"]).unwrap();
    NetState::capture(&sb, Detail::Full)
        .unwrap()
        .same_as(&before, "after `down`")
        .unwrap();
    assert_eq!(netns_inode(&sb, "red"), inode, "`red` was recreated");
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn foreign_link_is_neither_adopted_nor_deleted() {
    let sb = Sandbox::new().unwrap();
    add_host_link(&sb, "v-net-0");
    let before = NetState::capture(&sb, Detail::Full).unwrap();

    let out = sb.netlab(&["up"]).unwrap().failed().unwrap();
    assert!(
        out.stderr.contains("`v-net-0`") && out.stderr.contains("already exists"),
        "the error should name the foreign link: {out}"
    );
    NetState::capture(&sb, Detail::Full)
        .unwrap()
        .same_as(&before, "after `up` met a foreign link")
        .unwrap();
    sb.assert_no_lab_traces("default").unwrap();

    sb.netlab_ok(&["down"]).unwrap();
    NetState::capture(&sb, Detail::Full)
        .unwrap()
        .same_as(&before, "after `down`")
        .unwrap();
}

/// A killed `up` leaves a half-built lab; what someone else creates in the
/// gap (a namespace and a link the lab wanted) stays theirs: the next `up`
/// refuses, and `down` removes only what netlab made.
#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn down_after_a_killed_up_spares_foreign_objects() {
    let sb = Sandbox::new().unwrap();
    let pristine = NetState::capture(&sb, Detail::Identity).unwrap();
    // Step 1 is the namespace `red`; `blue` and `v-net-0` come later.
    let killed = sb
        .netlab_env(&[(netlab_tests::FAULT_ENV, "1")], &["up"])
        .unwrap()
        .failed()
        .unwrap();
    assert!(killed.stderr.contains("after step 1"), "{killed}");
    let netlab_made = netns_inode(&sb, "red");

    sb.ok(&["ip", "netns", "add", "blue"]).unwrap();
    add_host_link(&sb, "v-net-0");
    let theirs = netns_inode(&sb, "blue");
    let with_theirs = NetState::capture(&sb, Detail::Full).unwrap();

    let refused = sb.netlab(&["up"]).unwrap().failed().unwrap();
    assert!(
        refused.stderr.contains("already exists"),
        "`up` should refuse the foreign objects: {refused}"
    );
    NetState::capture(&sb, Detail::Full)
        .unwrap()
        .same_as(&with_theirs, "after `up` met foreign objects")
        .unwrap();
    assert_eq!(netns_inode(&sb, "red"), netlab_made);

    sb.netlab_ok(&["down"]).unwrap();
    let listed = netlab_tests::netns_names(&sb.ok(&["ip", "netns", "list"]).unwrap().stdout);
    assert_eq!(listed, ["blue"], "`down` should remove red and only red");
    assert_eq!(netns_inode(&sb, "blue"), theirs, "`blue` was recreated");
    let link = sb.ok(&["ip", "-o", "link", "show", "v-net-0"]).unwrap();
    assert!(!link.stdout.contains("netlab:"), "{link}");
    sb.assert_no_lab_traces("default").unwrap();

    sb.ok(&["ip", "netns", "del", "blue"]).unwrap();
    sb.ok(&["ip", "link", "del", "v-net-0"]).unwrap();
    NetState::capture(&sb, Detail::Identity)
        .unwrap()
        .same_as(&pristine, "after removing the foreign objects")
        .unwrap();
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn without_privileges_up_says_what_it_needs_in_one_line() {
    let sb = Sandbox::new().unwrap();
    let netlab = sb.netlab_path().display().to_string();
    let out = sb
        .run(&[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            &netlab,
            "up",
        ])
        .unwrap()
        .failed()
        .unwrap();
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {out}");
    for needle in ["needs root", "CAP_NET_ADMIN", "CAP_BPF", "CAP_SYS_ADMIN"] {
        assert!(lines[0].contains(needle), "lacks `{needle}`: {out}");
    }
    sb.assert_no_lab_traces("default").unwrap();
}

/// Pins `TRACE_CONFIG` (an array of one value of `value_bytes`) where the
/// default lab's maps go, as an `up` that stopped after its first map did.
fn pin_trace_config(sb: &Sandbox, value_bytes: usize) {
    pin_map(sb, "TRACE_CONFIG", "array", value_bytes, 1);
}

/// Pins map `name` of `kind` (4-byte keys) where the default lab's maps go.
fn pin_map(sb: &Sandbox, name: &str, kind: &str, value_bytes: usize, entries: u32) {
    sb.ok(&["mkdir", "-p", "/sys/fs/bpf/netlab/default/maps"])
        .unwrap();
    let path = format!("/sys/fs/bpf/netlab/default/maps/{name}");
    let (value, entries) = (value_bytes.to_string(), entries.to_string());
    sb.ok(&[
        "bpftool", "map", "create", &path, "type", kind, "key", "4", "value", &value, "entries",
        &entries, "name", name,
    ])
    .unwrap();
}

/// A lab an older netlab brought up (its programs TCX links, its maps of
/// other layouts: here, its trace switch of 24 bytes) is not taken over: a
/// second datapath beside the old one would translate every packet twice.
/// The error says what to run.
#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn a_lab_of_an_older_netlab_is_not_taken_over() {
    let sb = Sandbox::new().unwrap();
    pin_trace_config(&sb, 24);
    let before = NetState::capture(&sb, Detail::Full).unwrap();
    let out = sb.netlab(&["up"]).unwrap().failed().unwrap();
    assert!(
        out.stderr.contains("older netlab")
            && out.stderr.contains("TRACE_CONFIG")
            && out.stderr.contains("netlab down"),
        "{out}"
    );
    NetState::capture(&sb, Detail::Full)
        .unwrap()
        .same_as(&before, "after the refused `up`")
        .unwrap();
}

/// An older netlab's counters had fewer entries (a drop reason was added
/// since): their sizes are the same, their count is not, and the lab is
/// refused all the same, naming the map and both layouts.
#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn a_lab_with_fewer_counters_is_not_taken_over() {
    let sb = Sandbox::new().unwrap();
    let older = netlab_common::nat::STAT_COUNT - 1;
    pin_map(&sb, "NAT_STATS", "percpu_array", 8, older);
    let out = sb.netlab(&["up"]).unwrap().failed().unwrap();
    assert!(
        out.stderr.contains("older netlab")
            && out.stderr.contains("NAT_STATS")
            && out.stderr.contains(&format!("{older} entries")),
        "{out}"
    );
}

/// An `up` killed while it pinned its maps leaves some of this netlab's
/// maps and not the others: the next `up` is no older netlab's, it makes
/// the rest and works.
#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn a_lab_with_some_of_its_maps_pinned_comes_up() {
    let sb = Sandbox::new().unwrap();
    pin_trace_config(&sb, size_of::<netlab_common::trace::TraceConfig>());
    sb.netlab_ok(&["up"]).unwrap();
    sb.ping(Some("red"), "198.18.0.2", 1).unwrap();
    sb.netlab_ok(&["down"]).unwrap();
    sb.assert_no_lab_traces("default").unwrap();
}
