//! netlab as a CNI plugin: the specification's cases run the way the
//! reference plugins test theirs (environment and stdin, throwaway
//! namespaces), then real runtimes end to end (containerd 1.6's `ctr run
//! --cni`, podman 4.3 with its CNI backend). Each test runs in its own
//! sandbox, on the node topology of `docs/cni/node.toml`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test fails by panicking, helpers included"
)]

use std::{collections::BTreeSet, thread, time::Duration};

use netlab::{
    cni::spec::{AddResult, ErrorReply, VersionReply},
    state::LabState,
};
use netlab_tests::{Output, Sandbox};

/// The node every test brings up (pods on `nl-pods`, 10.77.0.0/24).
const NODE: &str = include_str!("../../docs/cni/node.toml");
const LAB: &str = "node";
const NODE_FILE: &str = "/run/node.toml";
/// The reference plugins (Debian's containernetworking-plugins), for
/// delegated IPAM.
const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// A sandbox with the node up; `range` replaces the pod range when given.
fn node(range: Option<&str>) -> Sandbox {
    let sb = Sandbox::new().unwrap();
    let topology = match range {
        Some(range) => NODE.replace("10.77.0.10-10.77.0.250", range),
        None => NODE.to_owned(),
    };
    sb.write_file(NODE_FILE, &topology).unwrap();
    sb.netlab_ok(&["up", "-f", NODE_FILE]).unwrap();
    sb
}

/// A network configuration at `version`, with `extra` keys merged in.
fn config(version: &str, extra: serde_json::Value) -> String {
    let mut conf = serde_json::json!({
        "cniVersion": version,
        "name": "pods",
        "type": "netlab",
        "lab": LAB,
    });
    if let (Some(conf), Some(extra)) = (conf.as_object_mut(), extra.as_object()) {
        conf.extend(extra.clone());
    }
    conf.to_string()
}

/// A 1.0.0 configuration with the port mapping 8080 → 80 over `protocol`,
/// on every host address (`hostIP` empty), as podman's `-p 8080:80` sends.
fn mapping_8080(protocol: &str) -> String {
    config(
        "1.0.0",
        serde_json::json!({"runtimeConfig": {"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": protocol, "hostIP": ""}]}}),
    )
}

/// The plugin for container `id` (interface eth0) in `/run/netns/NETNS`.
fn call(sb: &Sandbox, command: &str, id: &str, netns: &str, conf: &str) -> Output {
    let path = if netns.is_empty() {
        String::new()
    } else {
        format!("/run/netns/{netns}")
    };
    sb.cni(
        &[
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", id),
            ("CNI_NETNS", &path),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", REFERENCE_PLUGINS),
        ],
        conf,
    )
    .unwrap()
}

fn add(sb: &Sandbox, id: &str, netns: &str, conf: &str) -> AddResult {
    let out = call(sb, "ADD", id, netns, conf).ok().unwrap();
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("ADD printed no result ({e}):\n{out}"))
}

/// A failed call's error object: on stdout, with a non-zero exit.
fn error(out: Output) -> ErrorReply {
    let out = out.failed().unwrap();
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("no CNI error object on stdout ({e}):\n{out}"))
}

fn netns(sb: &Sandbox, name: &str) {
    sb.ok(&["ip", "netns", "add", name]).unwrap();
}

fn record(sb: &Sandbox) -> LabState {
    let text =
        std::fs::read_to_string(sb.path_via_holder(&format!("/run/netlab/{LAB}.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The host ends of pods the host has (`nlp...`).
fn pod_links(sb: &Sandbox) -> Vec<String> {
    let out = sb.ok(&["ip", "-br", "link"]).unwrap();
    out.stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with("nlp"))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .collect()
}

/// Nothing of any pod is left: no record, no host end, no published port.
fn assert_no_pods(sb: &Sandbox) {
    let state = record(sb);
    assert!(state.pods.is_empty(), "pods left: {:?}", state.pods);
    assert!(
        state
            .published
            .iter()
            .all(|p| !p.namespace.starts_with("cni:")),
        "pod ports left: {:?}",
        state.published
    );
    assert_eq!(pod_links(sb), Vec::<String>::new());
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn version_status_and_errors_follow_the_spec() {
    let sb = Sandbox::new().unwrap();
    let out = sb
        .cni(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.0.0"}"#)
        .unwrap()
        .ok()
        .unwrap();
    let version: VersionReply = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(version.cni_version, "1.0.0");
    for v in ["0.4.0", "1.0.0", "1.1.0"] {
        assert!(version.supported_versions.iter().any(|s| s == v), "{out}");
    }
    let conf = config("1.1.0", serde_json::json!({}));
    // No lab yet: not available, for STATUS and ADD alike.
    assert_eq!(error(call(&sb, "STATUS", "c1", "", &conf)).code, 50);
    netns(&sb, "p1");
    assert_eq!(error(call(&sb, "ADD", "c1", "p1", &conf)).code, 50);

    sb.write_file(NODE_FILE, NODE).unwrap();
    sb.netlab_ok(&["up", "-f", NODE_FILE]).unwrap();
    call(&sb, "STATUS", "c1", "", &conf).ok().unwrap();

    assert_eq!(error(call(&sb, "ADD", "c1", "p1", "{")).code, 6);
    let old = config("0.2.0", serde_json::json!({}));
    assert_eq!(error(call(&sb, "ADD", "c1", "p1", &old)).code, 1);
    let missing = error(
        sb.cni(
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_NETNS", "/run/netns/p1"),
                ("CNI_IFNAME", "eth0"),
            ],
            &conf,
        )
        .unwrap(),
    );
    assert_eq!(missing.code, 4);
    assert!(missing.msg.contains("CNI_CONTAINERID"), "{missing:?}");
    let sctp = mapping_8080("sctp");
    let unsupported = error(call(&sb, "ADD", "c1", "p1", &sctp));
    assert_eq!(unsupported.code, 2);
    assert!(unsupported.msg.contains("sctp"), "{unsupported:?}");
    assert_eq!(error(call(&sb, "ADD", "c1", "nosuch", &conf)).code, 3);
    // None of the failures left anything behind.
    assert_no_pods(&sb);
    sb.netlab_ok(&["down"]).unwrap();
    assert_eq!(error(call(&sb, "STATUS", "c1", "", &conf)).code, 50);
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn add_check_del_at_every_version() {
    let sb = node(None);
    for (n, version) in ["0.4.0", "1.0.0", "1.1.0"].into_iter().enumerate() {
        let (id, ns) = (format!("c{n}"), format!("p{n}"));
        netns(&sb, &ns);
        let conf = config(version, serde_json::json!({}));
        let result = add(&sb, &id, &ns, &conf);
        assert_eq!(result.cni_version, version);
        let ip = &result.ips[0];
        assert_eq!(ip.version.is_some(), version == "0.4.0", "{result:?}");
        let pod = &result.interfaces[ip.interface.unwrap()];
        assert_eq!(pod.name, "eth0");
        assert_eq!(
            pod.sandbox.as_deref(),
            Some(format!("/run/netns/{ns}").as_str())
        );
        let inside = sb
            .ok(&["ip", "-n", &ns, "-br", "link", "show", "eth0"])
            .unwrap();
        assert!(inside.stdout.contains(&pod.mac), "{inside}\n{result:?}");
        let addr = ip.address.split('/').next().unwrap();
        assert!(addr.starts_with("10.77.0."), "{result:?}");
        // The pod reaches its gateway and the world (masqueraded).
        sb.ping(Some(&ns), "10.77.0.1", 1).unwrap();
        sb.ping(Some(&ns), "198.18.0.2", 1).unwrap();
        // `netlab status` lists it, ready, on its host end.
        let listed = sb.status().unwrap().pods;
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].address, ip.address);
        assert_eq!(listed[0].key, format!("cni:pods/{id}/eth0"));
        assert!(listed[0].ready);
        assert_eq!(listed[0].host_veth, result.interfaces[0].name);
        let shown = sb.netlab_ok(&["status"]).unwrap();
        assert!(shown.stdout.contains("[pods]"), "{shown}");

        let with_prev = |conf: &str| {
            let mut value: serde_json::Value = serde_json::from_str(conf).unwrap();
            value["prevResult"] = serde_json::to_value(&result).unwrap();
            value.to_string()
        };
        call(&sb, "CHECK", &id, &ns, &with_prev(&conf))
            .ok()
            .unwrap();
        // The address gone from the container: CHECK says so.
        sb.ok(&["ip", "-n", &ns, "addr", "flush", "dev", "eth0"])
            .unwrap();
        let damaged = error(call(&sb, "CHECK", &id, &ns, &with_prev(&conf)));
        assert_eq!(damaged.code, 103);
        assert!(damaged.msg.contains(addr), "{damaged:?}");
        call(&sb, "DEL", &id, &ns, &conf).ok().unwrap();
        assert_eq!(
            error(call(&sb, "CHECK", &id, &ns, &with_prev(&conf))).code,
            103
        );
    }
    assert_no_pods(&sb);
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn del_is_idempotent_and_frees_the_address() {
    let sb = node(Some("10.77.0.10-10.77.0.11"));
    let conf = config("1.0.0", serde_json::json!({}));
    for ns in ["p1", "p2", "p3"] {
        netns(&sb, ns);
    }
    add(&sb, "c1", "p1", &conf);
    add(&sb, "c2", "p2", &conf);
    // The pool is empty: the third ADD fails and leaks nothing.
    assert_eq!(error(call(&sb, "ADD", "c3", "p3", &conf)).code, 101);
    assert_eq!(record(&sb).pods.len(), 2);
    assert_eq!(pod_links(&sb).len(), 2);
    // DEL twice; with an empty CNI_NETNS (what ctr sends); after the
    // namespace is gone; of a container never added.
    call(&sb, "DEL", "c1", "p1", &conf).ok().unwrap();
    call(&sb, "DEL", "c1", "p1", &conf).ok().unwrap();
    call(&sb, "DEL", "c1", "", &conf).ok().unwrap();
    sb.ok(&["ip", "netns", "del", "p2"]).unwrap();
    call(&sb, "DEL", "c2", "", &conf).ok().unwrap();
    call(&sb, "DEL", "never", "", &conf).ok().unwrap();
    assert_no_pods(&sb);
    // Both addresses came back.
    netns(&sb, "p4");
    let a = add(&sb, "c3", "p3", &conf).ips[0].address.clone();
    let b = add(&sb, "c4", "p4", &conf).ips[0].address.clone();
    assert_ne!(a, b);
    // `down` takes the pods' host ends along.
    sb.netlab_ok(&["down"]).unwrap();
    assert_eq!(pod_links(&sb), Vec::<String>::new());
    // DEL with the lab gone: nothing to do, success.
    call(&sb, "DEL", "c3", "p3", &conf).ok().unwrap();
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn a_half_done_add_is_undone_by_del() {
    let sb = node(None);
    let conf = mapping_8080("tcp");
    netns(&sb, "p1");
    // ADD aborts after each of its kernel changes in turn, as a kill -9
    // would; DEL then removes whatever it made.
    // Seven steps with one port mapping: recorded, veth, address and
    // route, bridge, datapath, host end up, port.
    for steps in 1..=7 {
        let steps = steps.to_string();
        let out = sb
            .cni(
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "c1"),
                    ("CNI_NETNS", "/run/netns/p1"),
                    ("CNI_IFNAME", "eth0"),
                    ("NETLAB_FAULT_AFTER_STEPS", &steps),
                ],
                &conf,
            )
            .unwrap();
        assert!(
            out.signal().is_some(),
            "ADD was not aborted at step {steps}:\n{out}"
        );
        call(&sb, "DEL", "c1", "p1", &conf).ok().unwrap();
        assert_no_pods(&sb);
        let inside = sb.ok(&["ip", "-n", "p1", "-br", "link"]).unwrap();
        assert!(!inside.stdout.contains("eth0"), "step {steps}: {inside}");
    }
    add(&sb, "c1", "p1", &conf);
    sb.ping(Some("p1"), "198.18.0.2", 1).unwrap();
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn a_repeated_add_is_refused_and_leaks_nothing() {
    let sb = node(None);
    let conf = config("1.0.0", serde_json::json!({}));
    netns(&sb, "p1");
    add(&sb, "c1", "p1", &conf);
    let before = (record(&sb), pod_links(&sb));
    let refused = error(call(&sb, "ADD", "c1", "p1", &conf));
    assert_eq!(refused.code, 100);
    assert_eq!((record(&sb), pod_links(&sb)), before);
    sb.ping(Some("p1"), "10.77.0.1", 1).unwrap();
    // Another container may not take an interface name the container has.
    let other = error(call(&sb, "ADD", "c2", "p1", &conf));
    assert_eq!(other.code, 104);
    assert_eq!((record(&sb), pod_links(&sb)), before);
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn gc_keeps_the_listed_attachments_only() {
    let sb = node(None);
    let conf = config("1.1.0", serde_json::json!({}));
    for n in 1..=3 {
        netns(&sb, &format!("p{n}"));
        add(&sb, &format!("c{n}"), &format!("p{n}"), &conf);
    }
    // Neither key: refused, rather than removing every pod.
    assert_eq!(error(call(&sb, "GC", "", "", &conf)).code, 7);
    assert_eq!(record(&sb).pods.len(), 3);
    // Both keys count (libcni sends both).
    let gc = config(
        "1.1.0",
        serde_json::json!({
            "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}],
            "cni.dev/attachments": [{"containerID": "c3", "ifname": "eth0"}],
        }),
    );
    call(&sb, "GC", "", "", &gc).ok().unwrap();
    let kept: BTreeSet<String> = record(&sb)
        .pods
        .iter()
        .map(|p| p.container_id.clone())
        .collect();
    assert_eq!(kept, BTreeSet::from(["c1".to_owned(), "c3".to_owned()]));
    assert_eq!(pod_links(&sb).len(), 2);
    sb.ping(Some("p1"), "10.77.0.1", 1).unwrap();
    sb.ping(Some("p3"), "10.77.0.1", 1).unwrap();
    let gone = sb.ok(&["ip", "-n", "p2", "-br", "link"]).unwrap();
    assert!(!gone.stdout.contains("eth0"), "{gone}");
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn parallel_adds_get_distinct_addresses() {
    let sb = node(None);
    let conf = config("1.0.0", serde_json::json!({}));
    let pods = 10;
    for n in 0..pods {
        netns(&sb, &format!("p{n}"));
    }
    let addresses: BTreeSet<String> = thread::scope(|s| {
        let workers: Vec<_> = (0..pods)
            .map(|n| {
                let (sb, conf) = (&sb, &conf);
                s.spawn(move || {
                    add(sb, &format!("c{n}"), &format!("p{n}"), conf).ips[0]
                        .address
                        .clone()
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    assert_eq!(addresses.len(), pods, "{addresses:?}");
    assert_eq!(record(&sb).pods.len(), pods);
    assert_eq!(pod_links(&sb).len(), pods);
    // Pod to pod, across the bridge.
    let first = addresses.iter().next().unwrap();
    sb.ping(Some("p0"), first.split('/').next().unwrap(), 1)
        .unwrap();
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn port_mappings_are_published_ports_in_ebpf() {
    let sb = node(None);
    let conf = mapping_8080("tcp");
    netns(&sb, "p1");
    let result = add(&sb, "c1", "p1", &conf);
    let addr = result.ips[0].address.split('/').next().unwrap().to_owned();
    let mut server = sb
        .spawn(
            &[
                "ip",
                "netns",
                "exec",
                "p1",
                "python3",
                "-u",
                "-m",
                "http.server",
                "80",
                "--bind",
                "0.0.0.0",
            ],
            Duration::from_secs(60),
        )
        .unwrap();
    server
        .wait_for("Serving HTTP", Duration::from_secs(10))
        .unwrap();
    let listed = sb.netlab_ok(&["publish", "list"]).unwrap();
    assert!(listed.stdout.contains(&format!("({addr}:80)")), "{listed}");
    let curl = [
        "ip",
        "netns",
        "exec",
        "outside",
        "curl",
        "-s",
        "-m",
        "3",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "http://198.18.0.1:8080/",
    ];
    let answer = sb.ok(&curl).unwrap();
    assert_eq!(answer.stdout, "200", "{answer}");
    // The DNAT is netlab's: no iptables rule anywhere in the node.
    let rules = sb.ok(&["iptables-save"]).unwrap();
    assert!(!rules.stdout.contains("8080"), "{rules}");
    // A second pod cannot take the same host port, and takes nothing.
    netns(&sb, "p2");
    let taken = error(call(&sb, "ADD", "c2", "p2", &conf));
    assert_eq!(taken.code, 102);
    assert_eq!(record(&sb).pods.len(), 1);
    // DEL removes the port with the pod.
    call(&sb, "DEL", "c1", "p1", &conf).ok().unwrap();
    assert_no_pods(&sb);
    let after = sb.run(&curl).unwrap();
    assert_ne!(after.stdout, "200", "{after}");
    server.stop();
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn ipam_can_be_delegated_to_host_local() {
    let sb = node(None);
    let conf = config(
        "1.0.0",
        serde_json::json!({"ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.77.0.0/24", "rangeStart": "10.77.0.200",
                         "rangeEnd": "10.77.0.201", "gateway": "10.77.0.1"}]],
            "dataDir": "/run/cni-ipam"
        }}),
    );
    netns(&sb, "p1");
    let result = add(&sb, "c1", "p1", &conf);
    assert_eq!(result.ips[0].address, "10.77.0.200/24", "{result:?}");
    assert!(sb.exists("/run/cni-ipam/pods/10.77.0.200").unwrap());
    sb.ping(Some("p1"), "198.18.0.2", 1).unwrap();
    call(&sb, "DEL", "c1", "p1", &conf).ok().unwrap();
    // host-local released it too.
    assert!(!sb.exists("/run/cni-ipam/pods/10.77.0.200").unwrap());
    assert_no_pods(&sb);
}

/// Private CNI directories for a runtime whose paths are fixed (ctr's
/// `/etc/cni/net.d` and `/opt/cni/bin`): tmpfs mounts inside the sandbox
/// over them (the host keeps its own), netlab linked in as the plugin and
/// the node's conflist the only configuration.
fn cni_dirs(sb: &Sandbox) {
    for dir in ["/etc/cni", "/opt", "/var/lib/cni"] {
        // The mount points (empty directories where a fresh host has none).
        std::fs::create_dir_all(dir).unwrap();
        sb.ok(&["mount", "-t", "tmpfs", "netlab-cni", dir]).unwrap();
    }
    sb.ok(&["mkdir", "-p", "/etc/cni/net.d", "/opt/cni/bin"])
        .unwrap();
    let netlab = sb.netlab_path().to_string_lossy().into_owned();
    sb.ok(&["ln", "-s", &netlab, "/opt/cni/bin/netlab"])
        .unwrap();
    sb.write_file(
        "/etc/cni/net.d/10-netlab.conflist",
        include_str!("../../docs/cni/netlab.conflist"),
    )
    .unwrap();
}

/// A busybox root filesystem (Debian's busybox-static), with a page to serve.
fn rootfs(sb: &Sandbox) -> &'static str {
    let root = "/run/rootfs";
    sb.ok(&[
        "mkdir",
        "-p",
        "/run/rootfs/bin",
        "/run/rootfs/proc",
        "/run/rootfs/sys",
        "/run/rootfs/dev",
        "/run/rootfs/etc",
        "/run/rootfs/www",
    ])
    .unwrap();
    sb.ok(&["cp", "/bin/busybox", "/run/rootfs/bin/busybox"])
        .unwrap();
    sb.ok(&["chroot", root, "/bin/busybox", "--install", "-s", "/bin"])
        .unwrap();
    sb.write_file("/run/rootfs/www/index.html", "served by a pod\n")
        .unwrap();
    root
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn containerd_runs_containers_on_netlab() {
    let sb = node(None);
    cni_dirs(&sb);
    let root = rootfs(&sb);
    sb.write_file(
        "/run/ctd/config.toml",
        "version = 2\nroot = \"/run/ctd/root\"\nstate = \"/run/ctd/state\"\n\
         disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
         [grpc]\n  address = \"/run/ctd/containerd.sock\"\n\
         [ttrpc]\n  address = \"/run/ctd/containerd.sock.ttrpc\"\n",
    )
    .unwrap();
    let mut containerd = sb
        .spawn(
            &["containerd", "--config", "/run/ctd/config.toml"],
            Duration::from_secs(120),
        )
        .unwrap();
    containerd
        .wait_for("containerd successfully booted", Duration::from_secs(30))
        .unwrap();
    let ctr = |args: &[&str]| {
        let mut argv = vec![
            "ctr",
            "--address",
            "/run/ctd/containerd.sock",
            "run",
            "--rm",
            "--cni",
            "--rootfs",
            root,
        ];
        argv.extend_from_slice(args);
        argv.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    // A server container (it gets the range's first address), then a
    // client container that fetches its page across the bridge.
    let server_argv = ctr(&["web", "/bin/sh", "-c", "httpd -p 80 -h /www; sleep 6"]);
    let server_argv: Vec<&str> = server_argv.iter().map(String::as_str).collect();
    let server = sb.spawn(&server_argv, Duration::from_secs(60)).unwrap();
    let mut up = false;
    for _ in 0..100 {
        if record(&sb).pods.iter().any(|p| p.ready) {
            up = true;
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert!(up, "the server container never got a pod");
    let server_addr = record(&sb).pods[0].addr.to_string();
    let mut trace = sb
        .spawn(
            &[
                &sb.netlab_path().to_string_lossy(),
                "trace",
                "--json",
                "--notices-json",
                "--count",
                "4",
                "host",
                &server_addr,
            ],
            Duration::from_secs(30),
        )
        .unwrap();
    trace.wait_for_trace_start(Duration::from_secs(10)).unwrap();
    let client_argv = ctr(&[
        "client",
        "/bin/sh",
        "-c",
        &format!("ip -4 addr show eth0; wget -q -O - http://{server_addr}/"),
    ]);
    let client_argv: Vec<&str> = client_argv.iter().map(String::as_str).collect();
    let client = sb.ok(&client_argv).unwrap();
    assert!(client.stdout.contains("inet 10.77.0."), "{client}");
    assert!(client.stdout.contains("served by a pod"), "{client}");
    // netlab traced the containers' packets.
    let traced = trace.finish(Duration::from_secs(10)).unwrap();
    assert!(traced.stdout.contains(&server_addr), "{traced}");
    server.finish(Duration::from_secs(30)).unwrap();
    // `ctr run --rm` ran DEL (with an empty CNI_NETNS) for both.
    assert_no_pods(&sb);
    containerd.stop();
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn podman_runs_containers_on_netlab() {
    let sb = node(None);
    let root = rootfs(&sb);
    let netlab = sb.netlab_path().to_string_lossy().into_owned();
    sb.ok(&["mkdir", "-p", "/run/pm/net.d", "/run/pm/bin", "/run/pm/tmp"])
        .unwrap();
    sb.ok(&["ln", "-s", &netlab, "/run/pm/bin/netlab"]).unwrap();
    sb.write_file(
        "/run/pm/net.d/netlab.conflist",
        include_str!("../../docs/cni/netlab.conflist"),
    )
    .unwrap();
    sb.write_file(
        "/run/pm/containers.conf",
        "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"/run/pm/bin\"]\n\
         network_config_dir = \"/run/pm/net.d\"\ndefault_network = \"netlab\"\n\
         [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
         events_logfile_path = \"/run/pm/events.log\"\ntmp_dir = \"/run/pm/tmp\"\n",
    )
    .unwrap();
    sb.write_file(
        "/run/pm/storage.conf",
        "[storage]\ndriver = \"vfs\"\ngraphroot = \"/run/pm/storage\"\nrunroot = \"/run/pm/runroot\"\n",
    )
    .unwrap();
    let podman = |args: &[&str]| {
        let mut argv = vec![
            "env",
            "CONTAINERS_CONF=/run/pm/containers.conf",
            "CONTAINERS_STORAGE_CONF=/run/pm/storage.conf",
            "podman",
        ];
        argv.extend_from_slice(args);
        sb.run(&argv).unwrap()
    };
    let backend = podman(&["info", "--format", "{{.Host.NetworkBackend}}"])
        .ok()
        .unwrap();
    assert_eq!(backend.stdout.trim(), "cni", "{backend}");
    // Podman's default limits exceed this machine's hard ones.
    let limits = [
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
    ];
    let mut run = vec![
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "netlab",
        "-p",
        "8080:80",
    ];
    run.extend_from_slice(&limits);
    run.extend_from_slice(&[
        "--rootfs",
        root,
        "/bin/httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    podman(&run).ok().unwrap();
    let pods = record(&sb).pods;
    assert_eq!(pods.len(), 1, "{pods:?}");
    let web = pods[0].addr.to_string();
    // Published by netlab's eBPF datapath, from the world.
    let page = sb
        .ok(&[
            "ip",
            "netns",
            "exec",
            "outside",
            "curl",
            "-s",
            "-m",
            "5",
            "http://198.18.0.1:8080/",
        ])
        .unwrap();
    assert_eq!(page.stdout, "served by a pod\n", "{page}");
    let rules = sb.ok(&["iptables-save"]).unwrap();
    assert!(
        !rules.stdout.contains("8080"),
        "iptables rules for the port: {rules}"
    );
    // Reachable from another container.
    let mut client = vec!["run", "--rm", "--network", "netlab"];
    client.extend_from_slice(&limits);
    let url = format!("http://{web}/");
    client.extend_from_slice(&["--rootfs", root, "/bin/wget", "-q", "-O", "-", &url]);
    let fetched = podman(&client).ok().unwrap();
    assert!(fetched.stdout.contains("served by a pod"), "{fetched}");
    podman(&["rm", "-f", "-t", "0", "web"]).ok().unwrap();
    assert_no_pods(&sb);
}
