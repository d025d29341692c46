//! The Python helpers the conformance harness runs inside namespaces (stdlib
//! only). Every one is bounded by the sandbox's `timeout` and its own
//! socket timeouts.

/// Capture: `IFACE`. Prints "ready", then "PKTTYPE HEX" per frame the
/// interface received (the harness reads IPv4 and IPv6) (outgoing frames are skipped). Each stdin line is
/// echoed back once everything received before it was printed: a mark that
/// splits the capture into steps. Ends at the end of stdin.
pub const CAPTURE: &str = r#"
import os, select, socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind((sys.argv[1], 0x0003))
out = sys.stdout
def drain():
    while True:
        try:
            data, addr = s.recvfrom(70000, socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
        if addr[2] != socket.PACKET_OUTGOING:
            out.write(f"{addr[2]} {data.hex()}\n")
    out.flush()
print("ready", flush=True)
pending = b""
while True:
    ready, _, _ = select.select([s, 0], [], [])
    if s in ready:
        drain()
    if 0 in ready:
        chunk = os.read(0, 4096)
        drain()
        if not chunk:
            break
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            out.write(line.decode() + "\n")
        out.flush()
"#;

/// Frame sender: `IFACE`. Prints "ready"; then per stdin line "send DSTMAC
/// HEX" sends an Ethernet frame from IFACE's address carrying the IP packet
/// HEX (IPv4 or IPv6, by its version), and "sync N" prints "synced N".
pub const SEND_FRAMES: &str = r#"
import socket, sys
ifname = sys.argv[1]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
s.bind((ifname, 0))
with open(f"/sys/class/net/{ifname}/address") as f:
    src = bytes.fromhex(f.read().strip().replace(":", ""))
print("ready", flush=True)
for line in sys.stdin:
    parts = line.split()
    if not parts:
        continue
    if parts[0] == "send":
        packet = bytes.fromhex(parts[2])
        ethertype = b"\x86\xdd" if packet and packet[0] >> 4 == 6 else b"\x08\x00"
        frame = bytes.fromhex(parts[1].replace(":", "")) + src + ethertype + packet
        try:
            s.send(frame)
        except OSError as e:
            print(f"error {e!r}", flush=True)
    elif parts[0] == "sync":
        print(f"synced {parts[1]}", flush=True)
"#;

/// UDP echo server: `PORT [REPLY_SIZE [BIND]]` (REPLY_SIZE `-`: echo;
/// BIND: 0.0.0.0 unless given, `::` serves IPv6). Prints "ready", then
/// "from HOST:PORT LEN" per datagram; answers with the datagram, or with
/// REPLY_SIZE bytes. An answer that cannot be sent (a datagram from a
/// source there is no route back to, as a spoofed one) is reported as
/// "unanswered HOST:PORT ERROR" and the server goes on: one bad datagram
/// must not turn every later one into a port unreachable.
pub const UDP_SERVER: &str = r#"
import socket, sys
bind = sys.argv[3] if len(sys.argv) > 3 else "0.0.0.0"
s = socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((bind, int(sys.argv[1])))
size = int(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2] != "-" else None
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(65535)
    host, port = peer[0], peer[1]
    print(f"from {host}:{port} {len(data)}", flush=True)
    try:
        s.sendto(data if size is None else bytes(i % 251 for i in range(size)), peer)
    except OSError as e:
        print(f"unanswered {host}:{port} {e!r}", flush=True)
"#;

/// UDP client: `HOST PORT SIZE [BIND_PORT]` (HOST of either family).
/// Sends SIZE bytes from a connected socket and prints "reply LEN",
/// "timeout" or "refused".
pub const UDP_CLIENT: &str = r#"
import socket, sys
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
v6 = ":" in host
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
if len(sys.argv) > 4:
    s.bind(("::" if v6 else "0.0.0.0", int(sys.argv[4])))
s.settimeout(2)
s.connect((host, port))
try:
    s.send(bytes(i % 253 for i in range(size)))
    print(f"reply {len(s.recv(65535))}")
except socket.timeout:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
"#;

/// Threaded TCP echo server: `PORT` (shared with the NAT suite).
pub use crate::default_lab::TCP_ECHO_SERVER as TCP_SERVER;

/// One TCP echo round trip: `HOST PORT PAYLOAD [BIND_ADDR BIND_PORT]`
/// (HOST of either family). Prints "ok from PORT", "refused", "timeout" or
/// "error: ..." (also when the bind fails).
pub const TCP_ONCE: &str = r#"
import socket, sys
host, port, payload = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(3)
try:
    if len(sys.argv) > 5:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((sys.argv[4], int(sys.argv[5])))
    s.connect((host, port))
    local = s.getsockname()[1]
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    got = b""
    while chunk := s.recv(65536):
        got += chunk
    print(f"ok from {local}" if got == payload else f"error: sent {payload!r}, got {got!r}")
except ConnectionRefusedError:
    print("refused")
except (socket.timeout, TimeoutError):
    print("timeout")
except OSError as e:
    print(f"error: {e!r}")
"#;

/// A TCP connection held open: `HOST PORT`. Prints "connected from PORT",
/// then echoes each stdin line through it, printing "echo LINE" (or
/// "failed ..."); closes at the end of stdin.
pub const TCP_HOLD: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
print(f"connected from {s.getsockname()[1]}", flush=True)
for line in sys.stdin:
    message = line.strip().encode()
    try:
        s.sendall(message)
        got = b""
        while len(got) < len(message):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        print(f"echo {got.decode(errors='replace')}", flush=True)
    except OSError as e:
        print(f"failed {e!r}", flush=True)
s.close()
"#;
