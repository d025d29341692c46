//! NAT end to end (issue 3): published ports (DNAT), masquerade (SNAT),
//! hairpin, the host's own connections, publish at run time, ICMP errors,
//! source-port exhaustion and conntrack states.
//!
//! Each scenario is written once, as a function of the datapath, and
//! [`per_datapath!`] makes one test per datapath of it (`bridge::NAME`,
//! `iptables::NAME`, `redirect::NAME`). Servers and clients are small Python programs run
//! inside the lab's namespaces, each bounded in time; traffic only goes to
//! the lab's own addresses. Tests that rewrite packets turn checksum offload
//! off on every lab veth first, so that a wrong checksum breaks the
//! connection instead of being hidden by the veth.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test fails by panicking, helpers included"
)]

use std::{
    thread,
    time::{Duration, Instant},
};

use netlab_tests::{
    Background, LabStatus, Sandbox,
    default_lab::{self, TCP_ECHO_SERVER, in_ns},
};
use serde_json::Value;

/// The default lab's addresses (netlab/src/topology/default.toml).
const RED: &str = "192.168.15.1";
const BLUE: &str = "192.168.15.2";
const GATEWAY: &str = "192.168.15.5";
const UPLINK: &str = "198.18.0.1";
const OUTSIDE: &str = "198.18.0.2";

/// How long a background server or client may live, whatever happens.
const LIFETIME: Duration = Duration::from_secs(120);

/// How long to wait for a server to listen or for a log line to appear.
const SETTLE: Duration = Duration::from_secs(10);

/// Where the tests write files inside the sandbox.
const SCRATCH: &str = "/run/netlab-tests";

const DEFAULT_TOPOLOGY: &str = netlab::topology::DEFAULT_LAB;

/// UDP echo server: `PORT`. Logs "from HOST:PORT PAYLOAD" per datagram.
const UDP_ECHO_SERVER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, (host, port) = s.recvfrom(65535)
    print(f"from {host}:{port} {data.decode(errors='replace')}", flush=True)
    s.sendto(data, (host, port))
"#;

/// UDP client: `HOST PORT MODE TIMEOUT SOCKET:PAYLOAD...`. Socket N is
/// created on first use, connected (MODE `connect`) or not (`sendto`); each
/// item sends PAYLOAD from socket N and waits for one datagram, printing
/// "N reply PAYLOAD from HOST:PORT", "N timeout" or "N refused".
const UDP_CLIENT: &str = r#"
import socket, sys
host, port, mode, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
sockets = {}
for item in sys.argv[5:]:
    n, payload = item.split(":", 1)
    s = sockets.get(n)
    if s is None:
        s = sockets[n] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(timeout)
        if mode == "connect":
            s.connect((host, port))
    try:
        if mode == "connect":
            s.send(payload.encode())
            data, peer = s.recv(65535), s.getpeername()
        else:
            s.sendto(payload.encode(), (host, port))
            data, peer = s.recvfrom(65535)
        print(f"{n} reply {data.decode(errors='replace')} from {peer[0]}:{peer[1]}", flush=True)
    except socket.timeout:
        print(f"{n} timeout", flush=True)
    except ConnectionRefusedError:
        print(f"{n} refused", flush=True)
"#;

/// One UDP socket held open: `HOST PORT`. Sends each stdin line from the
/// same connected socket and prints "reply LINE" or "timeout LINE".
const UDP_LONG_CLIENT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.connect((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
for line in sys.stdin:
    message = line.strip()
    try:
        s.send(message.encode())
        data = s.recv(65535)
        print(f"reply {data.decode(errors='replace')}", flush=True)
    except (socket.timeout, ConnectionRefusedError):
        print(f"timeout {message}", flush=True)
"#;

/// One TCP echo round trip: `HOST PORT PAYLOAD`. Prints "ok", "refused",
/// "timeout" or "error: ..."; exits 0 only on "ok".
const TCP_ECHO_ONCE: &str = r#"
import socket, sys
host, port, payload = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
try:
    with socket.create_connection((host, port), timeout=3) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    print("ok" if got == payload else f"error: sent {payload!r}, got {got!r}")
    sys.exit(0 if got == payload else 1)
except ConnectionRefusedError:
    print("refused")
except (socket.timeout, TimeoutError):
    print("timeout")
except OSError as e:
    print(f"error: {e!r}")
sys.exit(1)
"#;

/// A TCP connection held open: `HOST PORT`. Prints "connected from PORT",
/// then echoes each stdin line through the connection, printing
/// "echo LINE"; at the end of stdin closes it first and prints "closed".
const TCP_LONG_CLIENT: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print(f"connected from {s.getsockname()[1]}", flush=True)
for line in sys.stdin:
    message = line.strip().encode()
    s.sendall(message)
    got = b""
    while len(got) < len(message):
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    print(f"echo {got.decode(errors='replace')}", flush=True)
s.close()
print("closed", flush=True)
"#;

/// COUNT connections at once: `HOST PORT COUNT`. Each connects, waits until
/// all are connected, sends its own payload (1 to 30 kB, so segments of
/// many sizes), half-closes and requires the echo to be byte-exact.
const TCP_CONCURRENT_CLIENT: &str = r#"
import random, socket, sys, threading
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
barrier = threading.Barrier(count, timeout=30)
results = [None] * count
def run(i):
    payload = f"connection {i}:".encode() + random.Random(i).randbytes(1000 + i * 211 % 29000)
    try:
        with socket.create_connection((host, port), timeout=30) as s:
            barrier.wait()
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            got = bytearray()
            while chunk := s.recv(65536):
                got += chunk
        results[i] = "ok" if got == payload else f"mismatch: sent {len(payload)} bytes, got {len(got)}"
    except Exception as e:
        barrier.abort()
        results[i] = f"error: {e!r}"
threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
for t in threads:
    t.start()
for t in threads:
    t.join(timeout=50)
done = sum(r == "ok" for r in results)
print(f"completed {done}/{count}")
for i, r in enumerate(results):
    if r != "ok":
        print(f"connection {i}: {r}")
sys.exit(0 if done == count else 1)
"#;

/// A sandbox with the default lab up on `datapath`.
fn lab(datapath: &str) -> Sandbox {
    let sb = Sandbox::new().unwrap();
    sb.netlab_ok(&["up", "--datapath", datapath]).unwrap();
    sb
}

fn offload_off(sb: &Sandbox) {
    default_lab::offload_off(sb).unwrap();
}

/// Polls `probe` until it returns Some, for up to `timeout`.
fn wait_until<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

fn python<'a>(netns: &'a str, script: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut argv = vec!["ip", "netns", "exec", netns, "python3", "-u", "-c", script];
    argv.extend_from_slice(args);
    argv
}

/// Starts `script` in `netns` and waits for it to print "ready".
fn start_server(sb: &Sandbox, netns: &str, script: &str, port: u16) -> Background {
    let port = port.to_string();
    let mut server = sb
        .spawn(&python(netns, script, &[&port]), LIFETIME)
        .unwrap();
    server.wait_for("ready", SETTLE).unwrap();
    server
}

/// `python3 -m http.server PORT` in `netns`, serving one page; returns the
/// server and the page's body.
fn http_server(sb: &Sandbox, netns: &str, port: u16) -> (Background, String) {
    let dir = format!("{SCRATCH}/www-{netns}-{port}");
    let body = format!("netlab nat test: served by {netns} on port {port}\n");
    sb.write_file(&format!("{dir}/index.html"), &body).unwrap();
    let port = port.to_string();
    let argv = [
        "ip",
        "netns",
        "exec",
        netns,
        "python3",
        "-u",
        "-m",
        "http.server",
        &port,
        "--bind",
        "0.0.0.0",
        "--directory",
        &dir,
    ];
    let mut server = sb.spawn(&argv, LIFETIME).unwrap();
    server.wait_for("Serving HTTP", SETTLE).unwrap();
    (server, body)
}

/// The client address of each request the HTTP server logged, in order.
fn http_clients(server: &Background) -> Vec<String> {
    server
        .stderr()
        .lines()
        .filter(|line| line.contains("\"GET "))
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Waits until the HTTP server has logged `count` requests; returns their
/// client addresses.
fn wait_http_clients(server: &Background, count: usize) -> Vec<String> {
    wait_until(
        &format!("{count} requests in the server's log"),
        SETTLE,
        || {
            let clients = http_clients(server);
            (clients.len() >= count).then_some(clients)
        },
    )
}

/// The "HOST:PORT" of each "from HOST:PORT" line an echo server logged.
fn echo_sources(server: &Background) -> Vec<String> {
    server
        .stdout()
        .lines()
        .filter_map(|line| line.strip_prefix("from "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn host_of(source: &str) -> &str {
    source.rsplit_once(':').map_or(source, |(host, _)| host)
}

/// `curl URL` from `netns` (bounded to 3 seconds) must succeed and return
/// `body`.
fn fetch(sb: &Sandbox, netns: Option<&str>, url: &str, body: &str) {
    let curl = ["curl", "-sS", "--noproxy", "*", "-m", "3", url];
    let out = sb.ok(&in_ns(netns, &curl)).unwrap();
    assert_eq!(out.stdout, body, "wrong body from {url}: {out}");
}

/// Runs [`UDP_CLIENT`] in `netns`; returns its report lines.
fn udp_client(
    sb: &Sandbox,
    netns: &str,
    to: (&str, u16),
    mode: &str,
    timeout: &str,
    items: &[&str],
) -> Vec<String> {
    let port = to.1.to_string();
    let mut args = vec![to.0, port.as_str(), mode, timeout];
    args.extend_from_slice(items);
    let out = sb.ok(&python(netns, UDP_CLIENT, &args)).unwrap();
    out.stdout.lines().map(str::to_owned).collect()
}

/// One round trip through [`TCP_ECHO_ONCE`]: "ok", "refused", "timeout" or
/// "error: ...".
fn tcp_echo_once(sb: &Sandbox, netns: &str, to: (&str, u16), payload: &str) -> String {
    let port = to.1.to_string();
    let out = sb
        .run(&python(netns, TCP_ECHO_ONCE, &[to.0, &port, payload]))
        .unwrap();
    out.stdout.trim().to_owned()
}

/// `netlab conntrack --json`, one object per flow.
fn conntrack(sb: &Sandbox) -> Vec<Value> {
    let out = sb.netlab_ok(&["conntrack", "--json"]).unwrap();
    out.stdout
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("`netlab conntrack --json` printed {line:?}: {e}"))
        })
        .collect()
}

/// The flow whose original direction is `proto` from `src` to
/// `dst`:`dport` (None: any port).
fn find_flow<'a>(
    flows: &'a [Value],
    proto: &str,
    src: &str,
    dst: &str,
    dport: Option<u16>,
) -> Option<&'a Value> {
    flows.iter().find(|flow| {
        flow["proto"] == proto
            && flow["original"]["src"] == src
            && flow["original"]["dst"] == dst
            && dport.is_none_or(|port| flow["original"]["dport"] == port)
    })
}

/// Whether the lab runs netlab's own NAT, whose conntrack and counters the
/// tests can read; the iptables reference keeps them in the kernel, so
/// there only the traffic is compared.
fn netlab_nat(datapath: &str) -> bool {
    datapath != "iptables"
}

fn nat_counter(status: &LabStatus, name: &str) -> u64 {
    netlab_tests::nat_counter(status, name)
        .unwrap_or_else(|| panic!("status has no NAT counter `{name}`: {:#?}", status.nat))
}

/// 1. A published port from the world: the page arrives intact, and the
///    server sees the real client, not the host.
fn outside_reaches_published_port(datapath: &str) {
    let sb = lab(datapath);
    offload_off(&sb);
    let (server, body) = http_server(&sb, "blue", 80);

    fetch(
        &sb,
        Some("outside"),
        &format!("http://{UPLINK}:8080/"),
        &body,
    );

    assert_eq!(wait_http_clients(&server, 1), [OUTSIDE]);
}

/// 2. Masquerade: the world sees the uplink's address, and conntrack names
///    the flow.
fn red_is_masqueraded_to_outside(datapath: &str) {
    let sb = lab(datapath);
    offload_off(&sb);
    let (server, body) = http_server(&sb, "outside", 8000);

    fetch(&sb, Some("red"), &format!("http://{OUTSIDE}:8000/"), &body);

    assert_eq!(wait_http_clients(&server, 1), [UPLINK]);
    if !netlab_nat(datapath) {
        return;
    }
    let flows = conntrack(&sb);
    let flow = find_flow(&flows, "tcp", RED, OUTSIDE, Some(8000))
        .unwrap_or_else(|| panic!("no red → outside:8000 flow in {flows:#?}"));
    assert_eq!(flow["nat"], "snat", "{flow:#}");
    assert_eq!(flow["reply"]["src"], OUTSIDE, "{flow:#}");
    assert_eq!(flow["reply"]["dst"], UPLINK, "{flow:#}");
    assert_eq!(flow["replied"], true, "{flow:#}");
}

/// 3. UDP request/response through a port published at run time and through
///    masquerade.
fn udp_through_dnat_and_masquerade(datapath: &str) {
    let sb = lab(datapath);
    offload_off(&sb);
    sb.netlab_ok(&["publish", "add", "blue", "5353:53/udp"])
        .unwrap();
    let blue = start_server(&sb, "blue", UDP_ECHO_SERVER, 53);
    let outside = start_server(&sb, "outside", UDP_ECHO_SERVER, 9000);

    let dnat = udp_client(
        &sb,
        "outside",
        (UPLINK, 5353),
        "connect",
        "3",
        &["1:query-through-dnat"],
    );
    assert_eq!(
        dnat,
        [format!("1 reply query-through-dnat from {UPLINK}:5353")]
    );
    let sources = echo_sources(&blue);
    assert_eq!(sources.len(), 1, "blue's server log: {}", blue.stdout());
    assert_eq!(host_of(&sources[0]), OUTSIDE, "{sources:?}");

    let snat = udp_client(
        &sb,
        "red",
        (OUTSIDE, 9000),
        "connect",
        "3",
        &["1:query-through-masquerade"],
    );
    assert_eq!(
        snat,
        [format!(
            "1 reply query-through-masquerade from {OUTSIDE}:9000"
        )]
    );
    let sources = echo_sources(&outside);
    assert_eq!(
        sources.len(),
        1,
        "outside's server log: {}",
        outside.stdout()
    );
    assert_eq!(host_of(&sources[0]), UPLINK, "{sources:?}");
}

/// 4. Ping through masquerade: every echo is answered, and conntrack tracks
///    it as an ICMP flow.
fn ping_is_masqueraded(datapath: &str) {
    let sb = lab(datapath);
    // The echo identifier is rewritten, and the ICMP checksum with it.
    offload_off(&sb);
    sb.ping(Some("red"), OUTSIDE, 5).unwrap();
    if !netlab_nat(datapath) {
        return;
    }

    let flows = conntrack(&sb);
    let flow = find_flow(&flows, "icmp", RED, OUTSIDE, None)
        .unwrap_or_else(|| panic!("no red → outside ICMP flow in {flows:#?}"));
    assert_eq!(flow["nat"], "snat", "{flow:#}");
    assert_eq!(flow["reply"]["dst"], UPLINK, "{flow:#}");
    assert!(
        flow["reply_packets"].as_u64() >= Some(5),
        "5 replies went through: {flow:#}"
    );
}

/// 5. Many connections at once through a published port, checksums
///    unhidden: every byte comes back as sent.
fn concurrent_connections_are_byte_exact(datapath: &str) {
    const CONNECTIONS: &str = "200";
    let sb = lab(datapath);
    offload_off(&sb);
    let server = start_server(&sb, "blue", TCP_ECHO_SERVER, 80);
    let before = netlab_nat(datapath).then(|| sb.status().unwrap());

    let out = sb
        .run(&python(
            "outside",
            TCP_CONCURRENT_CLIENT,
            &[UPLINK, "8080", CONNECTIONS],
        ))
        .unwrap();
    assert!(
        out.success() && out.stdout.contains("completed 200/200"),
        "not every connection came back intact: {out}\nserver stderr:\n{}",
        server.stderr()
    );

    let sources = echo_sources(&server);
    assert_eq!(sources.len(), 200, "server log: {}", server.stdout());
    assert!(sources.iter().all(|s| host_of(s) == OUTSIDE), "{sources:?}");
    if let Some(before) = before {
        let after = sb.status().unwrap();
        let new = nat_counter(&after, "dnat_new") - nat_counter(&before, "dnat_new");
        assert!(new >= 200, "dnat_new rose by {new}: {:#?}", after.nat);
    }
}

/// 6. Hairpin: a lab namespace reaches a published port on the uplink's
///    address, and the backend itself reaches its own port.
fn hairpin_reaches_published_port(datapath: &str) {
    let sb = lab(datapath);
    offload_off(&sb);
    let (server, body) = http_server(&sb, "blue", 80);
    let url = format!("http://{UPLINK}:8080/");

    fetch(&sb, Some("red"), &url, &body);
    assert_eq!(wait_http_clients(&server, 1), [RED]);

    // As Docker does: the backend's own connection is masqueraded to the
    // gateway, or its reply would skip the NAT.
    fetch(&sb, Some("blue"), &url, &body);
    assert_eq!(wait_http_clients(&server, 2), [RED, GATEWAY]);
}

/// 7. The host's own connections to a published port, on the uplink's
///    address and on loopback; UDP replies come from the published address.
fn host_reaches_published_port(datapath: &str) {
    let sb = lab(datapath);
    let (server, body) = http_server(&sb, "blue", 80);

    fetch(&sb, None, &format!("http://{UPLINK}:8080/"), &body);
    fetch(&sb, None, "http://127.0.0.1:8080/", &body);
    assert_eq!(wait_http_clients(&server, 2).len(), 2);

    sb.netlab_ok(&["publish", "add", "blue", "5353:53/udp"])
        .unwrap();
    let _echo = start_server(&sb, "blue", UDP_ECHO_SERVER, 53);
    for mode in ["sendto", "connect"] {
        let payload = format!("1:from-host-{mode}");
        let argv = [
            "python3", "-u", "-c", UDP_CLIENT, UPLINK, "5353", mode, "3", &payload,
        ];
        let out = sb.ok(&argv).unwrap();
        assert_eq!(
            out.stdout.trim(),
            format!("1 reply from-host-{mode} from {UPLINK}:5353"),
            "{out}"
        );
    }
}

/// 8. Publishing at run time: a new port works at once and stops working
///    once removed, an established connection through another port lives
///    on, and conflicting or foreign publications are refused.
fn publish_at_run_time(datapath: &str) {
    let sb = lab(datapath);
    offload_off(&sb);
    let _server = start_server(&sb, "blue", TCP_ECHO_SERVER, 80);

    let mut long = sb
        .spawn(
            &python("outside", TCP_LONG_CLIENT, &[UPLINK, "8080"]),
            LIFETIME,
        )
        .unwrap();
    long.wait_for("connected from", SETTLE).unwrap();
    long.send_line("before").unwrap();
    long.wait_for("echo before", SETTLE).unwrap();

    sb.netlab_ok(&["publish", "add", "blue", "9090:80"])
        .unwrap();
    let listed = sb.netlab_ok(&["publish", "list", "--json"]).unwrap();
    let listed: Value = serde_json::from_str(&listed.stdout).unwrap();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["host_port"] == 9090
                && p["proto"] == "tcp"
                && p["namespace"] == "blue"
                && p["port"] == 80),
        "9090 is not listed: {listed:#}"
    );
    assert_eq!(
        tcp_echo_once(&sb, "outside", (UPLINK, 9090), "through-9090"),
        "ok"
    );
    long.send_line("while-9090-is-published").unwrap();
    long.wait_for("echo while-9090-is-published", SETTLE)
        .unwrap();

    sb.netlab_ok(&["publish", "rm", "9090/tcp"]).unwrap();
    let refused = tcp_echo_once(&sb, "outside", (UPLINK, 9090), "after-rm");
    assert!(
        refused == "refused" || refused == "timeout",
        "a new connection to an unpublished port should fail, got `{refused}`"
    );
    long.send_line("after-9090-is-removed").unwrap();
    long.wait_for("echo after-9090-is-removed", SETTLE).unwrap();
    let finished = long.finish(SETTLE).unwrap();
    assert!(finished.stdout.contains("closed"), "{finished}");

    let twice = sb
        .netlab(&["publish", "add", "red", "8080:80"])
        .unwrap()
        .failed()
        .unwrap();
    assert!(
        twice.stderr.contains("8080/tcp") && twice.stderr.contains("already published"),
        "publishing 8080 twice should say it is taken: {twice}"
    );

    sb.ok(&["ip", "netns", "add", "stranger"]).unwrap();
    let stranger = sb
        .netlab(&["publish", "add", "stranger", "9191:80"])
        .unwrap()
        .failed()
        .unwrap();
    assert!(
        stranger.stderr.contains("stranger") && stranger.stderr.contains("not a namespace"),
        "publishing into a namespace outside the lab should name it and why: {stranger}"
    );
    let listed = sb.netlab_ok(&["publish", "list"]).unwrap();
    assert!(
        !listed.stdout.contains("9090") && !listed.stdout.contains("9191"),
        "{listed}"
    );
    // The established connection's first port still serves new ones.
    assert_eq!(
        tcp_echo_once(&sb, "outside", (UPLINK, 8080), "through-8080"),
        "ok"
    );
}

/// 8b. Removing a published port cuts the flows it opened (issue 21,
///     item 6): a UDP client that keeps sending from one socket, after
///     the port is removed and published to another namespace, reaches
///     the new backend, never the old one (Docker and kube-proxy flush
///     the kernel's conntrack entries of a removed port for this reason).
fn publish_rm_cuts_its_flows(datapath: &str) {
    let sb = lab(datapath);
    offload_off(&sb);
    let blue = start_server(&sb, "blue", UDP_ECHO_SERVER, 53);
    let mut red = start_server(&sb, "red", UDP_ECHO_SERVER, 53);
    sb.netlab_ok(&["publish", "add", "blue", "5353:53/udp"])
        .unwrap();
    let mut client = sb
        .spawn(
            &python("outside", UDP_LONG_CLIENT, &[UPLINK, "5353"]),
            LIFETIME,
        )
        .unwrap();
    client.wait_for("ready", SETTLE).unwrap();
    client.send_line("to-blue").unwrap();
    client.wait_for("reply to-blue", SETTLE).unwrap();

    sb.netlab_ok(&["publish", "rm", "5353/udp"]).unwrap();
    sb.netlab_ok(&["publish", "add", "red", "5353:53/udp"])
        .unwrap();
    client.send_line("to-red").unwrap();
    client.wait_for("reply to-red", SETTLE).unwrap();
    // The server's line is read by a thread of its own: the client may
    // hear the echo before this side has the line.
    let _ = red.wait_for("to-red", SETTLE);
    let blue_log = blue.stdout();
    let red_log = red.stdout();
    assert!(
        !blue_log.contains("to-red"),
        "the old backend still got the flow's datagram after `publish rm`:\n{blue_log}"
    );
    assert!(
        red_log.contains(&format!("from {OUTSIDE}:")) && red_log.contains("to-red"),
        "the new backend did not get the datagram:\n{red_log}"
    );
}

/// 9. ICMP errors about translated flows reach the right socket: a
///    connected UDP socket hears "port unreachable" as ECONNREFUSED.
fn icmp_errors_reach_the_client(datapath: &str) {
    let sb = lab(datapath);
    offload_off(&sb);
    let before = sb.status().unwrap();
    let datapath_is_netlab = netlab_nat(datapath);

    let masqueraded = udp_client(
        &sb,
        "red",
        (OUTSIDE, 9999),
        "connect",
        "3",
        &["1:to-a-closed-port"],
    );
    assert_eq!(masqueraded, ["1 refused"]);

    sb.netlab_ok(&["publish", "add", "blue", "5400:5400/udp"])
        .unwrap();
    let published = udp_client(
        &sb,
        "outside",
        (UPLINK, 5400),
        "connect",
        "3",
        &["1:to-a-closed-backend"],
    );
    assert_eq!(published, ["1 refused"]);
    if !datapath_is_netlab {
        return;
    }

    // The host would refuse an unpublished port itself: make sure this one
    // went to blue and its error came back translated.
    let flows = conntrack(&sb);
    let flow = find_flow(&flows, "udp", OUTSIDE, UPLINK, Some(5400))
        .unwrap_or_else(|| panic!("no outside → published 5400/udp flow in {flows:#?}"));
    assert_eq!(flow["nat"], "dnat", "{flow:#}");
    assert_eq!(flow["reply"]["src"], BLUE, "{flow:#}");
    let after = sb.status().unwrap();
    let translated = nat_counter(&after, "icmp_error_translated")
        - nat_counter(&before, "icmp_error_translated");
    assert!(
        translated >= 2,
        "icmp_error_translated rose by {translated}: {:#?}",
        after.nat
    );
}

/// 10. Two source ports to masquerade with: two flows to the same
///     destination get them, a third is dropped and counted, and the first
///     two keep working.
fn source_ports_run_out(datapath: &str) {
    let sb = Sandbox::new().unwrap();
    let range = r#"port_range = "32768-60999""#;
    assert!(DEFAULT_TOPOLOGY.contains(range));
    let topology = DEFAULT_TOPOLOGY.replace(range, r#"port_range = "40000-40001""#);
    let path = format!("{SCRATCH}/two-ports.toml");
    sb.write_file(&path, &topology).unwrap();
    sb.netlab_ok(&["up", "-f", &path, "--datapath", datapath])
        .unwrap();
    offload_off(&sb);
    let server = start_server(&sb, "outside", UDP_ECHO_SERVER, 9000);

    let report = udp_client(
        &sb,
        "red",
        (OUTSIDE, 9000),
        "connect",
        "1.5",
        &[
            "1:first",
            "2:second",
            "3:third",
            "1:first-again",
            "2:second-again",
        ],
    );
    let from = format!("from {OUTSIDE}:9000");
    assert_eq!(
        report,
        [
            format!("1 reply first {from}"),
            format!("2 reply second {from}"),
            "3 timeout".to_owned(),
            format!("1 reply first-again {from}"),
            format!("2 reply second-again {from}"),
        ]
    );

    let mut sources = echo_sources(&server);
    assert_eq!(sources.len(), 4, "server log: {}", server.stdout());
    sources.sort();
    sources.dedup();
    assert_eq!(
        sources,
        [format!("{UPLINK}:40000"), format!("{UPLINK}:40001")]
    );
    if netlab_nat(datapath) {
        let status = sb.status().unwrap();
        assert!(
            nat_counter(&status, "port_exhausted") >= 1,
            "{:#?}",
            status.nat
        );
    }
}

/// 11. Conntrack follows a TCP connection through a published port:
///     ESTABLISHED with the kernel's 5-day timeout while open, closing
///     states once closed.
fn conntrack_follows_tcp_states(datapath: &str) {
    let sb = lab(datapath);
    offload_off(&sb);
    let _server = start_server(&sb, "blue", TCP_ECHO_SERVER, 80);
    let mut client = sb
        .spawn(
            &python("outside", TCP_LONG_CLIENT, &[UPLINK, "8080"]),
            LIFETIME,
        )
        .unwrap();
    client.wait_for("connected from", SETTLE).unwrap();
    client.send_line("hello").unwrap();
    client.wait_for("echo hello", SETTLE).unwrap();
    let sport: u64 = client
        .stdout()
        .lines()
        .find_map(|line| line.strip_prefix("connected from "))
        .and_then(|port| port.trim().parse().ok())
        .unwrap_or_else(|| panic!("no source port in {:?}", client.stdout()));
    let our_flow = |flows: &[Value]| -> Option<Value> {
        flows
            .iter()
            .find(|f| {
                f["proto"] == "tcp"
                    && f["original"]["src"] == OUTSIDE
                    && f["original"]["sport"] == sport
                    && f["original"]["dport"] == 8080
            })
            .cloned()
    };

    let flows = conntrack(&sb);
    let open = our_flow(&flows).unwrap_or_else(|| panic!("no flow from :{sport} in {flows:#?}"));
    assert_eq!(open["nat"], "dnat", "{open:#}");
    assert_eq!(open["state"], "ESTABLISHED", "{open:#}");
    assert_eq!(open["reply"]["src"], BLUE, "{open:#}");
    assert_eq!(open["reply"]["sport"], 80, "{open:#}");
    let expires = open["expires_in_s"].as_u64().unwrap();
    assert!(
        (431_990..=432_000).contains(&expires),
        "an established flow lives 5 days: {open:#}"
    );

    let closed = client.finish(SETTLE).unwrap();
    assert!(closed.stdout.contains("closed"), "{closed}");
    let closing = wait_until("the flow in a closing state", SETTLE, || {
        our_flow(&conntrack(&sb)).filter(|flow| {
            ["TIME_WAIT", "FIN_WAIT", "CLOSE"]
                .iter()
                .any(|state| flow["state"] == *state)
        })
    });
    let expires = closing["expires_in_s"].as_u64().unwrap();
    assert!(expires <= 120, "{closing:#}");
}

/// One test per datapath for each scenario.
macro_rules! per_datapath {
    ($($scenario:ident),* $(,)?) => {
        mod bridge {
            $(
                #[test]
                #[ignore = "privileged: run through `cargo xtask test`"]
                fn $scenario() {
                    super::$scenario("bridge");
                }
            )*
        }

        mod iptables {
            $(
                #[test]
                #[ignore = "privileged: run through `cargo xtask test`"]
                fn $scenario() {
                    super::$scenario("iptables");
                }
            )*
        }

        mod redirect {
            $(
                #[test]
                #[ignore = "privileged: run through `cargo xtask test`"]
                fn $scenario() {
                    super::$scenario("redirect");
                }
            )*
        }
    };
}

per_datapath!(
    outside_reaches_published_port,
    red_is_masqueraded_to_outside,
    udp_through_dnat_and_masquerade,
    ping_is_masqueraded,
    concurrent_connections_are_byte_exact,
    hairpin_reaches_published_port,
    host_reaches_published_port,
    publish_at_run_time,
    publish_rm_cuts_its_flows,
    icmp_errors_reach_the_client,
    source_ports_run_out,
);

/// 13. The XDP entry (`up --entry xdp`, eBPF datapaths only): published
///     ports still answer the world over TCP and UDP (with `redirect`,
///     established flows are handed to the backend at the XDP entry),
///     routed access into the lab is dropped there, and an `up` back to
///     the TC entry removes the XDP program.
fn xdp_entry(datapath: &str) {
    let sb = Sandbox::new().unwrap();
    sb.netlab_ok(&["up", "--datapath", datapath, "--entry", "xdp"])
        .unwrap();
    let status = sb.status().unwrap();
    let ingress = netlab_tests::status_hook(&status, "nl-uplink", "ingress").unwrap();
    assert_eq!(
        ingress.programs.first().map(String::as_str),
        Some("xdp_uplink (xdp)"),
        "{ingress:?}"
    );
    let (server, body) = http_server(&sb, "blue", 80);
    fetch(
        &sb,
        Some("outside"),
        &format!("http://{UPLINK}:8080/"),
        &body,
    );
    assert_eq!(wait_http_clients(&server, 1), [OUTSIDE]);

    sb.netlab_ok(&["publish", "add", "blue", "5353:53/udp"])
        .unwrap();
    let blue = start_server(&sb, "blue", UDP_ECHO_SERVER, 53);
    let replies = udp_client(
        &sb,
        "outside",
        (UPLINK, 5353),
        "connect",
        "3",
        &["1:first", "1:second", "1:third"],
    );
    assert_eq!(
        replies,
        ["first", "second", "third"].map(|p| format!("1 reply {p} from {UPLINK}:5353")),
        "blue's log: {}",
        blue.stdout()
    );
    if datapath == "redirect" {
        assert!(
            nat_counter(&sb.status().unwrap(), "xdp_redirected") >= 2,
            "established datagrams went through the XDP entry's redirect"
        );
    }

    sb.ok(&[
        "ip",
        "-n",
        "outside",
        "route",
        "add",
        "192.168.15.0/24",
        "via",
        UPLINK,
    ])
    .unwrap();
    let before = nat_counter(&sb.status().unwrap(), "routed_into_lab");
    let routed = udp_client(&sb, "outside", (BLUE, 53), "connect", "1", &["1:routed"]);
    assert_eq!(
        routed,
        ["1 timeout"],
        "routed access into the lab must fail"
    );
    assert!(nat_counter(&sb.status().unwrap(), "routed_into_lab") > before);

    sb.netlab_ok(&["up", "--datapath", datapath]).unwrap();
    let status = sb.status().unwrap();
    let ingress = netlab_tests::status_hook(&status, "nl-uplink", "ingress").unwrap();
    assert!(
        !ingress.programs.iter().any(|p| p.contains("xdp")),
        "{ingress:?}"
    );
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn bridge_xdp_entry() {
    xdp_entry("bridge");
}

#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn redirect_xdp_entry() {
    xdp_entry("redirect");
}

/// 11 reads netlab's own conntrack, so it is for netlab's datapath only (the
/// iptables reference keeps its flows in the kernel's).
#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn bridge_conntrack_follows_tcp_states() {
    conntrack_follows_tcp_states("bridge");
}

/// 12. The bridge datapath is eBPF only: after traffic through every kind of
///     NAT, netfilter holds no rule in the lab's host namespace.
#[test]
#[ignore = "privileged: run through `cargo xtask test`"]
fn bridge_installs_no_netfilter_rule() {
    let sb = lab("bridge");
    let (_server, body) = http_server(&sb, "blue", 80);
    fetch(
        &sb,
        Some("outside"),
        &format!("http://{UPLINK}:8080/"),
        &body,
    );
    fetch(&sb, Some("red"), &format!("http://{UPLINK}:8080/"), &body);
    sb.ping(Some("red"), OUTSIDE, 1).unwrap();

    // nft first: listing through iptables-nft can create empty tables.
    let nft = sb.ok(&["nft", "list", "ruleset"]).unwrap();
    assert_eq!(nft.stdout.trim(), "", "nftables is not empty: {nft}");
    for argv in [
        &["iptables-save", "-t", "nat"][..],
        &["iptables-save"],
        &["iptables-legacy-save"],
    ] {
        let out = sb.ok(argv).unwrap();
        let rules: Vec<&str> = out
            .stdout
            .lines()
            .filter(|line| line.starts_with("-A"))
            .collect();
        assert!(rules.is_empty(), "netfilter has rules: {out}");
    }
}
