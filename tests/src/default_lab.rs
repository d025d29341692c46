//! What the tests know of the default lab (netlab/src/topology/default.toml)
//! and the helpers every suite that drives it shares.

use anyhow::{Result, ensure};

use crate::Sandbox;

/// Every veth of the default lab, with the namespace it is in (None: the
/// sandbox's root namespace, the lab's host).
pub const VETHS: [(Option<&str>, &str); 6] = [
    (None, "nl-uplink"),
    (None, "veth-red-br"),
    (None, "veth-blue-br"),
    (Some("red"), "veth-red"),
    (Some("blue"), "veth-blue"),
    (Some("outside"), "veth-outside"),
];

/// `netlab up --dual-stack`'s lab with its IPv6 subnet bridged, as the
/// eBPF datapaths need (taken out of nat.masquerade: they translate no
/// IPv6 yet), and the world routing that subnet to the host, as a
/// careless upstream would: the host still must not forward it.
pub fn dual_stack_bridged() -> String {
    /// The IPv6 subnet in the dual-stack lab's nat.masquerade.
    const MASQUERADE6: &str = r#", "fd00:15::/64"]"#;
    const CARELESS_UPSTREAM: &str = r#"
[[route]]
netns = "outside"
to = "fd00:15::/64"
via = "2001:2::1"
"#;
    let lab = netlab::topology::DEFAULT_LAB_DUAL_STACK;
    assert_eq!(
        lab.matches(MASQUERADE6).count(),
        1,
        "the dual-stack lab masquerades its IPv6 subnet once"
    );
    lab.replace(MASQUERADE6, "]") + CARELESS_UPSTREAM
}

/// `argv` inside namespace `netns` (None: the sandbox's root namespace).
pub fn in_ns<'a>(netns: Option<&'a str>, argv: &[&'a str]) -> Vec<&'a str> {
    let mut full = Vec::new();
    if let Some(netns) = netns {
        full.extend(["ip", "netns", "exec", netns]);
    }
    full.extend_from_slice(argv);
    full
}

/// Turns tx and rx checksum offload off on every veth of the lab, both ends,
/// and checks that it is off: with it on, a veth hides a wrong L4 checksum.
pub fn offload_off(sb: &Sandbox) -> Result<()> {
    for (netns, veth) in VETHS {
        sb.ok(&in_ns(
            netns,
            &["ethtool", "-K", veth, "tx", "off", "rx", "off"],
        ))?;
        let features = sb.ok(&in_ns(netns, &["ethtool", "-k", veth]))?;
        for feature in ["rx-checksumming: off", "tx-checksumming: off"] {
            ensure!(
                features.stdout.contains(feature),
                "{veth}: wanted `{feature}`: {features}"
            );
        }
    }
    Ok(())
}

/// Threaded TCP echo server: `PORT [BIND]` (BIND: 0.0.0.0 unless given;
/// `::` serves IPv6). Prints "ready", then "from HOST:PORT" per connection.
pub const TCP_ECHO_SERVER: &str = r#"
import socket, socketserver, sys, threading
bind = sys.argv[2] if len(sys.argv) > 2 else "0.0.0.0"
log = threading.Lock()
class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.settimeout(60)
        with log:
            print(f"from {self.client_address[0]}:{self.client_address[1]}", flush=True)
        while data := self.request.recv(65536):
            self.request.sendall(data)
class Server(socketserver.ThreadingTCPServer):
    address_family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 1024
server = Server((bind, int(sys.argv[1])), Echo)
print("ready", flush=True)
server.serve_forever()
"#;
