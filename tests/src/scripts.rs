//! Small Python programs the suites run inside the labs' namespaces,
//! each bounded in time.

/// A backend on port 8000, TCP and UDP: a TCP client first gets `NAME
/// CLIENT_ADDRESS\n`, then its lines echoed; a UDP datagram gets `NAME
/// CLIENT_ADDRESS`. `NAME` is argv[1].
pub const WHOAMI_SERVER: &str = r#"
import socket, sys, threading
name = sys.argv[1]
def tcp():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 8000))
    s.listen(128)
    while True:
        c, a = s.accept()
        def serve(c=c, a=a):
            c.settimeout(60)
            c.sendall(f"{name} {a[0]}\n".encode())
            try:
                while data := c.recv(65536):
                    c.sendall(data)
            except OSError:
                pass
            c.close()
        threading.Thread(target=serve, daemon=True).start()
def udp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("0.0.0.0", 8000))
    while True:
        data, a = u.recvfrom(2048)
        u.sendto(f"{name} {a[0]}".encode(), a)
threading.Thread(target=tcp, daemon=True).start()
threading.Thread(target=udp, daemon=True).start()
print("ready", flush=True)
threading.Event().wait(110)
"#;

/// `HOST PORT COUNT PROTO`: COUNT connections (or datagrams, each from a
/// socket of its own), one line each: the first line the server sent, or
/// `error ...`. The sockets stay open until the last answer, so each
/// request is a flow of its own (its own source port).
pub const ASK_MANY: &str = r#"
import socket, sys
host, port, count, proto = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
held = []
for _ in range(count):
    try:
        if proto == "tcp":
            s = socket.create_connection((host, port), timeout=3)
            line = s.makefile().readline().strip()
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(3)
            s.sendto(b"who", (host, port))
            line = s.recv(2048).decode()
            # Exactly one answer per datagram.
            s.settimeout(0.2)
            try:
                extra = s.recv(2048)
                line += " and a second answer " + extra.decode()
            except socket.timeout:
                pass
        print(line, flush=True)
        # Held open to the end, so no two requests share a source port
        # (a reused one would be the same flow, already load-balanced).
        held.append(s)
    except OSError as e:
        print(f"error {e}", flush=True)
for s in held:
    s.close()
"#;
