//! `up` killed part way (netlab's NETLAB_FAULT_AFTER_STEPS hook aborts it
//! like a kill -9 right after its N-th kernel change): `down` must still
//! remove everything, and a plain `up` must finish the job.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test fails by panicking, helpers included"
)]

use netlab_tests::{Detail, FAULT_ENV, NetState, Output, Sandbox};

const LAB: &str = "default";

/// Far more steps than the default lab has; reaching it means the hook
/// never stopped `up`.
const MAX_STEPS: usize = 64;

/// Runs `up` with the crash hook at step `n`. `None` if `up` ran out of
/// steps first and finished normally.
fn up_killed_after(sb: &Sandbox, n: usize) -> Option<Output> {
    let out = sb
        .netlab_env(&[(FAULT_ENV, &n.to_string())], &["up"])
        .unwrap();
    if out.success() {
        return None;
    }
    assert_eq!(
        out.signal(),
        Some(libc::SIGABRT),
        "`up` with the crash hook at step {n} should abort: {out}"
    );
    assert!(
        out.stderr.contains(&format!("after step {n}")),
        "the abort should name step {n}: {out}"
    );
    Some(out)
}

/// Every step, one by one, then one past the last: each time `down` brings
/// the sandbox back to exactly where it was.
#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn down_cleans_up_after_up_is_killed_at_any_step() {
    let sb = Sandbox::new().unwrap();
    let before = NetState::capture(&sb, Detail::Identity).unwrap();

    let mut steps = None;
    for n in 1..=MAX_STEPS {
        let killed = up_killed_after(&sb, n);
        if killed.is_some() {
            let status = sb.netlab(&["status"]).unwrap();
            assert!(
                status.stdout.contains("INCOMPLETE") || status.stderr.contains("INCOMPLETE"),
                "after a killed `up`, status should say the lab is incomplete: {status}"
            );
        }
        sb.netlab_ok(&["down"]).unwrap();
        NetState::capture(&sb, Detail::Identity)
            .unwrap()
            .same_as(&before, &format!("`down` after `up` killed at step {n}"))
            .unwrap();
        sb.assert_no_lab_traces(LAB).unwrap();
        if killed.is_none() {
            steps = Some(n - 1);
            break;
        }
    }
    let steps = steps.unwrap_or_else(|| panic!("`up` still aborted at step {MAX_STEPS}"));
    // namespaces, bridge, veths, addresses, routes, datapath: the default
    // lab cannot take fewer kernel changes than that.
    assert!(steps >= 10, "`up` finished after only {steps} steps");
    eprintln!("{}: the default lab takes {steps} steps", sb.label());
}

/// A plain `up` after a killed one converges to the same working lab.
#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn up_after_a_killed_up_converges() {
    let sb = Sandbox::new().unwrap();
    sb.netlab_ok(&["up"]).unwrap();
    let reference = NetState::capture(&sb, Detail::Identity).unwrap();
    sb.netlab_ok(&["down"]).unwrap();

    for n in [1, 3, 5, 8, 12] {
        up_killed_after(&sb, n).unwrap_or_else(|| panic!("`up` finished before step {n}"));
        sb.netlab_ok(&["up"]).unwrap();
        NetState::capture(&sb, Detail::Identity)
            .unwrap()
            .same_as(&reference, &format!("`up` after `up` killed at step {n}"))
            .unwrap();
        let status = sb.status().unwrap();
        assert!(status.complete, "after step {n}: {status:#?}");
        sb.ping(Some("red"), "192.168.15.2", 1).unwrap();
        sb.ping(Some("blue"), "192.168.15.1", 1).unwrap();
        sb.netlab_ok(&["down"]).unwrap();
    }
}
