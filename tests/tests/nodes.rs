//! Two nodes of a cluster, simulated as Kubernetes cannot run here: each
//! node is a network namespace with a mount namespace of its own (its own
//! bpffs pins and lab record), running its own netlab datapath, with pods
//! attached by the CNI plugin. The nodes share an underlay (a veth pair in
//! 198.18.1.0/24) and route each other's pod subnet over it
//! (`[[pod_network.peer]]`), as kindnet does, or reach it through a VXLAN
//! overlay (`[pod_network.vxlan]`), as flannel and Cilium's tunnel mode
//! do. Node A runs `bridge`, node B `redirect`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test fails by panicking, helpers included"
)]

use std::time::Duration;

use netlab::{cni::spec::AddResult, status::LabStatus};
use netlab_tests::{
    Background, COMMAND_TIMEOUT, Output, Sandbox, nat_counter, run_with_input,
    scripts::{ASK_MANY, WHOAMI_SERVER},
};

const NODE: &str = include_str!("../../docs/cni/node.toml");
const LIFETIME: Duration = Duration::from_secs(60);

/// One node: its name (lab and network namespace), its pod subnet's
/// second octet, its underlay address, and the process that holds its
/// mount namespace (with a bpffs and a /run/netlab of its own).
struct Node<'s> {
    sb: &'s Sandbox,
    name: &'static str,
    octet: u8,
    underlay: &'static str,
    holder: Option<(Background, String)>,
}

impl<'s> Node<'s> {
    fn new(sb: &'s Sandbox, name: &'static str, octet: u8, underlay: &'static str) -> Node<'s> {
        sb.ok(&["ip", "netns", "add", name]).unwrap();
        // Held by a process rather than a bind mount of the namespace: the
        // kernel refuses that bind when namespace ids (allocated per CPU)
        // look out of order.
        let mut holder = sb
            .spawn(
                &[
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    "mount -t bpf bpf /sys/fs/bpf && mkdir -p /run/netlab && \
                     mount -t tmpfs node /run/netlab && echo \"holder $$\" && exec sleep 600",
                ],
                Duration::from_secs(600),
            )
            .unwrap();
        holder.wait_for("holder ", Duration::from_secs(10)).unwrap();
        let pid = holder
            .stdout()
            .lines()
            .find_map(|l| l.strip_prefix("holder ").map(str::to_owned))
            .unwrap();
        Node {
            sb,
            name,
            octet,
            underlay,
            holder: Some((holder, pid)),
        }
    }

    /// `argv` inside the node: its mount namespace, then its network
    /// namespace.
    fn argv(&self, argv: &[&str]) -> Vec<String> {
        let pid = self
            .holder
            .as_ref()
            .map(|(_, pid)| pid.as_str())
            .unwrap_or("0");
        let mut full = vec![
            "nsenter".to_owned(),
            "-t".to_owned(),
            pid.to_owned(),
            "-m".to_owned(),
            format!("--net=/run/netns/{}", self.name),
            "--".to_owned(),
        ];
        full.extend(argv.iter().map(|a| (*a).to_owned()));
        full
    }

    fn run(&self, argv: &[&str]) -> Output {
        let argv = self.argv(argv);
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.sb.run(&refs).unwrap()
    }

    fn ok(&self, argv: &[&str]) -> Output {
        self.run(argv).ok().unwrap()
    }

    fn spawn(&self, argv: &[&str]) -> Background {
        let argv = self.argv(argv);
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.sb.spawn(&refs, LIFETIME).unwrap()
    }

    fn netlab(&self, args: &[&str]) -> Output {
        let netlab = self.sb.netlab_path().to_string_lossy().into_owned();
        let mut argv = vec![netlab.as_str()];
        argv.extend_from_slice(args);
        self.ok(&argv)
    }

    fn pods(&self) -> String {
        format!("10.{}.0.0/24", self.octet)
    }

    /// The node's lab: `docs/cni/node.toml` with this node's names, pod
    /// subnet and datapath, and `peer` as its one peer, through the
    /// overlay `nl-vx` if `overlay`.
    fn topology(&self, datapath: &str, peer: &Node, overlay: bool) -> String {
        let octet = self.octet.to_string();
        let mut text = NODE
            .replace("name = \"node\"", &format!("name = \"{}\"", self.name))
            .replace(
                "datapath = \"bridge\"",
                &format!("datapath = \"{datapath}\""),
            )
            .replace("\"outside\"", &format!("\"outside-{}\"", self.name))
            .replace("10.77.", &format!("10.{octet}."))
            .replace(
                "uplink = \"nl-uplink\"",
                "uplink = \"nl-uplink\"\nservice_range = \"10.96.0.0/24\"",
            )
            + &format!(
                "\n[[pod_network.peer]]\nsubnet = \"{}\"\nvia = \"{}\"\n",
                peer.pods(),
                peer.underlay
            );
        if overlay {
            text += "\n[pod_network.vxlan]\nname = \"nl-vx\"\nvni = 42\n";
        }
        text
    }

    /// A pod: its namespace (made inside the node), attached by the CNI
    /// plugin; its address.
    fn pod(&self, name: &str) -> String {
        self.ok(&["ip", "netns", "add", name]);
        let netlab = self.sb.netlab_path().to_string_lossy().into_owned();
        let argv = self.argv(&[&netlab]);
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut cmd = self.sb.command(&refs);
        cmd.env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", name)
            .env("CNI_NETNS", format!("/run/netns/{name}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni");
        let conf = serde_json::json!({"cniVersion": "1.0.0", "name": "pods",
            "type": "netlab", "lab": self.name})
        .to_string();
        let out = run_with_input(
            cmd,
            "netlab (CNI) ADD",
            COMMAND_TIMEOUT,
            Some(conf.as_bytes()),
        )
        .unwrap()
        .ok()
        .unwrap();
        let result: AddResult = serde_json::from_str(&out.stdout).unwrap();
        let cidr = &result.ips[0].address;
        cidr.split('/').next().unwrap().to_owned()
    }

    fn status(&self) -> LabStatus {
        serde_json::from_str(&self.netlab(&["status", "--json"]).stdout).unwrap()
    }

    fn routes(&self) -> String {
        self.ok(&["ip", "route"]).stdout
    }
}

/// A TCP server in `netns` of `node` on port 80 that answers each client
/// with the address it sees, once.
fn whoami_server(node: &Node, netns: &str) -> Background {
    node.spawn(&python_in(
        netns,
        "import socket\n\
         s = socket.socket()\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('0.0.0.0', 80))\n\
         s.listen()\n\
         print('listening', flush=True)\n\
         c, a = s.accept()\n\
         c.sendall(a[0].encode())\n\
         c.close()\n",
    ))
}

/// `python3 -c SCRIPT` in `netns`.
fn python_in<'a>(netns: &'a str, script: &'a str) -> [&'a str; 7] {
    ["ip", "netns", "exec", netns, "python3", "-c", script]
}

/// What the server at `to`:80 saw, from a client in `netns` of `node`.
fn whoami(node: &Node, netns: &str, to: &str) -> Output {
    let script = format!(
        "import socket\n\
         s = socket.create_connection(('{to}', 80), timeout=5)\n\
         print(s.recv(64).decode())\n"
    );
    node.run(&python_in(netns, &script))
}

fn seen_by(node: &Node, server_netns: &str, client: &Node, client_netns: &str, to: &str) -> String {
    let mut server = whoami_server(node, server_netns);
    server
        .wait_for("listening", Duration::from_secs(10))
        .unwrap();
    let out = whoami(client, client_netns, to).ok().unwrap();
    server.finish(Duration::from_secs(10)).unwrap();
    out.stdout.trim().to_owned()
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn pods_on_two_nodes_reach_each_other_with_their_own_addresses() {
    two_nodes(false);
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn pods_on_two_nodes_reach_each_other_over_a_vxlan_overlay() {
    two_nodes(true);
}

/// The status of `link` in the host namespace of `node`.
fn host_link(node: &Node, link: &str) -> netlab::status::LinkStatus {
    node.status()
        .places
        .into_iter()
        .find(|p| p.place == "host")
        .and_then(|p| p.links.into_iter().find(|l| l.name == link))
        .unwrap_or_else(|| panic!("{}: no link {link}", node.name))
}

/// Two nodes with a pod each, joined by routes over the underlay or, with
/// `overlay`, by VXLAN: pod to pod both ways with their own addresses, a
/// trace across, the world kept out, one node's `down` and `up` leaving
/// the other alone, and `down` leaving nothing behind.
fn two_nodes(overlay: bool) {
    let sb = Sandbox::new().unwrap();
    let a = Node::new(&sb, "node-a", 77, "198.18.1.1");
    let b = Node::new(&sb, "node-b", 78, "198.18.1.2");
    // The underlay between them.
    sb.ok(&[
        "ip", "link", "add", "ul", "netns", "node-a", "type", "veth", "peer", "name", "ul",
        "netns", "node-b",
    ])
    .unwrap();
    for node in [&a, &b] {
        node.ok(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", node.underlay),
            "dev",
            "ul",
        ]);
        node.ok(&["ip", "link", "set", "ul", "up"]);
        node.ok(&["ip", "link", "set", "lo", "up"]);
    }
    // Each node's datapath, then a pod on each.
    let up = |node: &Node, datapath: &str, peer: &Node| {
        let file = format!("/run/{}.toml", node.name);
        sb.write_file(&file, &node.topology(datapath, peer, overlay))
            .unwrap();
        node.netlab(&["up", "-f", &file]);
        // The overlay routes to the peer's VTEP (its pod subnet's network
        // address) through the device; the underlay, to its address.
        let (route, onlink) = if overlay {
            let vtep = peer.pods().trim_end_matches("/24").to_owned();
            (format!("{} via {vtep} dev nl-vx", peer.pods()), true)
        } else {
            (
                format!("{} via {} dev ul", peer.pods(), peer.underlay),
                false,
            )
        };
        let routes = node.routes();
        let line = routes.lines().find(|l| l.starts_with(&route));
        assert!(
            line.is_some_and(|l| l.contains("onlink") == onlink),
            "{routes}"
        );
    };
    up(&a, "bridge", &b);
    up(&b, "redirect", &a);
    let pod_a = a.pod("pod-a");
    let pod_b = b.pod("pod-b");
    assert!(pod_a.starts_with("10.77.0."), "{pod_a}");
    assert!(pod_b.starts_with("10.78.0."), "{pod_b}");
    if overlay {
        // The pods' packets fit the tunnel: their MTU is the device's.
        let link = a.ok(&["ip", "netns", "exec", "pod-a", "ip", "link", "show", "eth0"]);
        assert!(link.stdout.contains("mtu 1450"), "{link}");
        let vx = host_link(&b, "nl-vx");
        assert_eq!(vx.kind.as_deref(), Some("vxlan"), "{vx:?}");
        assert!(vx.addresses.iter().any(|a| a == "10.78.0.0/32"), "{vx:?}");
    }

    // Pod to pod across the underlay, both ways, with their own addresses.
    for (node, netns, to) in [(&a, "pod-a", &pod_b), (&b, "pod-b", &pod_a)] {
        node.ok(&[
            "ip", "netns", "exec", netns, "ping", "-c", "1", "-W", "5", to,
        ]);
    }
    assert_eq!(seen_by(&b, "pod-b", &a, "pod-a", &pod_b), pod_a);
    assert_eq!(seen_by(&a, "pod-a", &b, "pod-b", &pod_a), pod_b);

    // netlab trace on node B shows node A's pod arriving (over the
    // overlay: out of its device, decapsulated).
    let netlab = sb.netlab_path().to_string_lossy().into_owned();
    let mut trace = b.spawn(&[
        &netlab,
        "trace",
        "--json",
        "--notices-json",
        "--count",
        "2",
        "host",
        &pod_a,
    ]);
    trace.wait_for_trace_start(Duration::from_secs(10)).unwrap();
    a.ok(&[
        "ip", "netns", "exec", "pod-a", "ping", "-c", "2", "-W", "5", &pod_b,
    ]);
    let traced = trace.finish(Duration::from_secs(10)).unwrap();
    assert!(traced.stdout.contains(&pod_a), "{traced}");
    // Its hops on node B are named: the pod's host end, on the host (not
    // an interface of a lab namespace that shares its ifindex).
    assert!(
        traced.stdout.contains(r#""netns":"host","iface":"nlp"#),
        "{traced}"
    );
    assert!(!traced.stdout.contains("outside-node-b"), "{traced}");
    if overlay {
        assert!(traced.stdout.contains("nl-vx"), "{traced}");
        // What crossed went through the tunnel, on both nodes.
        for node in [&a, &b] {
            let vx = host_link(node, "nl-vx");
            assert!(vx.up, "{vx:?}");
        }
        let ul = a.ok(&["ip", "-s", "-j", "link", "show", "nl-vx"]);
        let stats: serde_json::Value = serde_json::from_str(&ul.stdout).unwrap();
        let tx = stats[0]["stats64"]["tx"]["packets"].as_u64().unwrap();
        assert!(tx >= 4, "{ul}");
    }

    // A Service with a backend on each node, declared on both (as
    // kube-proxy runs on every node): from a pod on either node, every
    // backend answers over a bounded run, each request exactly once, and
    // each backend sees the client pod's own address.
    let _servers: Vec<Background> = [(&a, "pod-a"), (&b, "pod-b")]
        .into_iter()
        .map(|(node, pod)| {
            let mut server = node.spawn(&[
                "ip",
                "netns",
                "exec",
                pod,
                "python3",
                "-u",
                "-c",
                WHOAMI_SERVER,
                pod,
            ]);
            server.wait_for("ready", Duration::from_secs(10)).unwrap();
            server
        })
        .collect();
    let backends = [format!("{pod_a}:8000"), format!("{pod_b}:8000")];
    for node in [&a, &b] {
        node.netlab(&[
            "service",
            "add",
            "web",
            "10.96.0.10:80",
            &backends[0],
            &backends[1],
        ]);
    }
    for (node, pod, addr) in [(&a, "pod-a", &pod_a), (&b, "pod-b", &pod_b)] {
        let out = node.ok(&[
            "ip",
            "netns",
            "exec",
            pod,
            "python3",
            "-u",
            "-c",
            ASK_MANY,
            "10.96.0.10",
            "80",
            "30",
            "tcp",
        ]);
        let mut seen = std::collections::BTreeMap::new();
        for line in out.stdout.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            assert!(
                words.len() == 2 && ["pod-a", "pod-b"].contains(&words[0]),
                "{line}\n{out}"
            );
            // A pod reaching itself through the Service sees its gateway.
            if words[0] != pod {
                assert_eq!(words[1], addr.as_str(), "{line}");
            }
            *seen.entry(words[0].to_owned()).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 2, "from {pod}: {seen:?}");
        assert_eq!(seen.values().sum::<u32>(), 30, "from {pod}: {seen:?}");
    }
    for node in [&a, &b] {
        node.netlab(&["service", "rm", "web"]);
    }

    // The world still sees each node's pods masqueraded, and cannot route
    // into them.
    for (node, pod, pod_addr) in [(&a, "pod-a", &pod_a), (&b, "pod-b", &pod_b)] {
        let world = format!("outside-{}", node.name);
        assert_eq!(seen_by(node, &world, node, pod, "198.18.0.2"), "198.18.0.1");
        // `outside` routes the pod subnet via the uplink (node.toml).
        let routed = node.run(&[
            "ip", "netns", "exec", &world, "ping", "-c", "1", "-W", "1", pod_addr,
        ]);
        assert!(!routed.success(), "{routed}");
        let dropped = nat_counter(&node.status(), "routed_into_lab").unwrap_or(0);
        assert!(dropped >= 1, "{}: routed_into_lab {dropped}", node.name);
    }

    // Node A's datapath down and up again leaves node B's alone: its pod,
    // its routes, its datapath. A's pod went with A's links; a new one
    // reaches B's.
    let routes_b = b.routes();
    a.netlab(&["down"]);
    assert_eq!(b.routes(), routes_b);
    let status_b = b.status();
    assert_eq!(status_b.pods.len(), 1, "{status_b:?}");
    assert!(status_b.complete, "{status_b:?}");
    b.ok(&[
        "ip",
        "netns",
        "exec",
        "pod-b",
        "ping",
        "-c",
        "1",
        "-W",
        "5",
        "10.78.0.1",
    ]);
    up(&a, "bridge", &b);
    let pod_a2 = a.pod("pod-a2");
    assert_eq!(seen_by(&b, "pod-b", &a, "pod-a2", &pod_b), pod_a2);

    // `down` takes the routes to the peers along, and the overlay's device.
    for node in [&a, &b] {
        node.netlab(&["down"]);
        assert!(!node.routes().contains("10.7"), "{}", node.routes());
        let left = node.run(&["ip", "link", "show", "nl-vx"]);
        assert!(!left.success(), "{left}");
    }
    for mut node in [a, b] {
        if let Some((holder, _)) = node.holder.take() {
            holder.stop();
        }
    }
}
