//! The harness itself: sandboxes are isolated from the host and from each
//! other, leave nothing behind, and privileged tests fail without root.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test fails by panicking, helpers included"
)]

use std::{path::Path, process::Command, time::Duration};

use netlab_tests::{COMMAND_TIMEOUT, Sandbox, run_with_timeout};

/// What the test process itself sees: the real host, maybe with a user's
/// own lab, which the sandboxes must not touch.
fn host_view() -> String {
    let mut view = String::new();
    for argv in [
        &["ip", "netns", "list"][..],
        &["ip", "-br", "link"][..],
        &["ip", "-4", "route", "show", "table", "all"][..],
        &["ls", "-a", "/run/netlab", "/sys/fs/bpf/netlab"][..],
    ] {
        let mut cmd = Command::new(argv[0]);
        cmd.args(&argv[1..]);
        // `ls` fails on a missing directory; its stderr says which.
        let out = run_with_timeout(cmd, &argv.join(" "), COMMAND_TIMEOUT).unwrap();
        view.push_str(&format!(
            "$ {}\n{}{}",
            argv.join(" "),
            out.stdout,
            out.stderr
        ));
    }
    view
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn sandboxes_are_isolated_and_leave_nothing_behind() {
    let host_before = host_view();
    let a = Sandbox::new().unwrap();
    let b = Sandbox::new().unwrap();
    assert_ne!(a.label(), b.label());

    // The same lab, the same names, twice at once.
    a.netlab_ok(&["up"]).unwrap();
    b.netlab_ok(&["up"]).unwrap();
    a.ping(Some("red"), "192.168.15.2", 1).unwrap();
    b.ping(Some("red"), "192.168.15.2", 1).unwrap();
    assert_eq!(
        host_view(),
        host_before,
        "a sandboxed lab showed on the host"
    );

    let holder = a.pid();
    let proc_dir = format!("/proc/{holder}");
    let mount_ns = std::fs::read_link(format!("{proc_dir}/ns/mnt")).unwrap();
    drop(a);
    // Reaped, so its namespaces have no process left; a reused pid would
    // be in another mount namespace.
    if let Ok(now) = std::fs::read_link(format!("{proc_dir}/ns/mnt")) {
        assert_ne!(now, mount_ns, "the holder {holder} outlived its sandbox");
    }
    // The other sandbox's lab does not care.
    b.ping(Some("blue"), "192.168.15.1", 1).unwrap();
    let status = b.status().unwrap();
    assert!(status.complete, "{status:#?}");
    drop(b);

    assert_eq!(
        host_view(),
        host_before,
        "a sandbox left something on the host"
    );
}

/// The subject of [`privileged_tests_fail_without_root`]: any privileged
/// test would do; this one is quick.
#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn sandbox_starts() {
    let sb = Sandbox::new().unwrap();
    let out = sb.ok(&["ip", "-br", "link"]).unwrap();
    assert!(
        out.stdout.starts_with("lo "),
        "a fresh sandbox has only lo: {out}"
    );
    assert!(!sb.exists("/run/netlab").unwrap());
    assert!(sb.exists("/sys/fs/bpf").unwrap());
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn privileged_tests_fail_without_root() {
    netlab_tests::require_root().unwrap();
    let exe = std::env::current_exe().unwrap();
    assert!(Path::new(&exe).exists());
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid",
        "65534",
        "--regid",
        "65534",
        "--clear-groups",
        "--",
    ])
    .arg(&exe)
    .args(["--include-ignored", "--exact", "sandbox_starts"]);
    let out = run_with_timeout(
        cmd,
        "setpriv (nobody) sandbox_starts",
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(!out.success(), "without root the test must fail: {out}");
    assert!(
        out.stdout.contains("needs root") || out.stderr.contains("needs root"),
        "the failure should say root is needed: {out}"
    );
}
