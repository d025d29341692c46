//! netlab-loadgen: the load generator of `cargo xtask bench`.
//!
//! One small program for every datapath, so the traffic is the same for all
//! of them: a server (`serve`) and a client per metric (`run rr|crr|stream|
//! udp`), plus `whoami` (the source address the server sees, to verify NAT).
//!
//! Safety: it refuses to run in a namespace with any non-lab address (the
//! host's; IPv6 link-local ones aside), only targets the bench's lab
//! ranges ([`LAB_SUBNETS`], IPv4 and IPv6), and every run is bounded in
//! time and in count; the server exits by itself.
//!
//! The server handles TCP connections on a fixed pool of threads, each
//! accepting and serving one connection after the other: no thread start
//! per connection (which would dominate the connection rate), and enough
//! of them for `crr-par`'s connections in flight. A connection's first
//! byte names the mode:
//! `E` echo (request/response), `C` one 1-byte exchange then wait for the
//! client's close (connection rate; the client closes first, so TIME_WAIT
//! stays in the client's namespace), `S` sink (bulk; answers the byte count),
//! `W` whoami (answers the peer address). UDP datagrams are counted; `R`
//! resets the count, `Q` asks for it, `W` asks the peer address.

use std::{
    fs,
    io::{self, Read as _, Write as _},
    net::{
        IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener,
        TcpStream, UdpSocket,
    },
    path::{Path, PathBuf},
    process::ExitCode,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;

/// No client run lasts longer than this, whatever it is asked.
const MAX_RUN: Duration = Duration::from_secs(60);
/// Nor does a server.
const MAX_SERVE: Duration = Duration::from_secs(4 * 3600);
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Datagram payload of the UDP metric (a small packet).
const UDP_PAYLOAD: usize = 18;
/// `crr-par`'s client threads, each with one connection in flight.
const PARALLEL_CONNECTIONS: usize = 16;
/// The server's TCP threads: room for every `crr-par` connection.
const SERVER_THREADS: usize = 2 * PARALLEL_CONNECTIONS;

#[derive(Parser)]
#[command(
    name = "netlab-loadgen",
    about = "The load generator of `cargo xtask bench`"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve TCP and UDP on BIND:PORT for at most SECONDS, then exit.
    Serve {
        #[arg(long)]
        port: u16,
        /// The address to listen on: 0.0.0.0 (every IPv4 address), or one
        /// IPv6 address of the namespace for the IPv6 paths.
        #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
        bind: IpAddr,
        #[arg(long)]
        seconds: u64,
        /// Pin to this CPU.
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// One client run: at most SECONDS and at most MAX_COUNT transactions
    /// (bytes for `stream`); prints one JSON line.
    Run {
        metric: Metric,
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        seconds: f64,
        #[arg(long)]
        max_count: u64,
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// Print the source address the server at TO sees for this client.
    Whoami {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        udp: bool,
    },
    /// Replay EVENTS trace records (UDP journeys: four hops and a kernel
    /// event each) through `netlab trace`'s decoder and formatter, writing
    /// to a pipe that another thread drains; prints one JSON line with the
    /// events per second of the formatting thread.
    Decode {
        #[arg(long)]
        json: bool,
        #[arg(long)]
        events: u64,
        /// Pin the formatting thread to this CPU (the drain to any other).
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// Load each TC program of netlab's eBPF object OBJECT once, its maps
    /// pinned under DIR (a bpffs directory, removed afterwards), and print
    /// one JSON line per program: the instructions the verifier processed
    /// and how long `BPF_PROG_LOAD` took.
    Verify {
        object: PathBuf,
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Metric {
    /// 1-byte request/response on one TCP connection.
    Rr,
    /// New TCP connection per 1-byte request/response, client closes first.
    Crr,
    /// As `crr`, with [`PARALLEL_CONNECTIONS`] client threads, each with a
    /// connection in flight: the sender's CPU saturates on connections,
    /// not on waiting for the other CPU.
    CrrPar,
    /// Bulk TCP transfer.
    Stream,
    /// Small UDP datagrams, one way, in batches of 64 per `sendmmsg`,
    /// counted by the server: the sender's CPU saturates on the datapath.
    Udp,
    /// Small UDP datagrams, one way, in batches of 64 per `sendmmsg`, to a
    /// port nobody listens on (the receiving kernel drops them: NO_SOCKET):
    /// the cheapest packets a socket can send through the lab, for `bench
    /// trace`'s flood. `count` is what was sent.
    Flood,
}

/// What a client run prints.
#[derive(Serialize)]
struct Outcome {
    metric: Metric,
    /// Transactions (rr, crr), datagrams received (udp) or bytes (stream).
    count: u64,
    /// Datagrams sent (udp only).
    sent: u64,
    seconds: f64,
    /// `count / seconds`.
    rate: f64,
    /// Busy CPU time of the whole machine over the run (all CPUs, /proc/stat).
    cpu_busy_seconds: f64,
}

fn main() -> ExitCode {
    match execute(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("netlab-loadgen: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn execute(command: Command) -> Result<()> {
    refuse_init_netns()?;
    match command {
        Command::Serve {
            port,
            bind,
            seconds,
            cpu,
        } => {
            pin(cpu)?;
            serve(
                SocketAddr::new(bind, port),
                Duration::from_secs(seconds).min(MAX_SERVE),
            )
        }
        Command::Run {
            metric,
            to,
            seconds,
            max_count,
            cpu,
        } => {
            check_target(to)?;
            pin(cpu)?;
            let budget = Duration::try_from_secs_f64(seconds)
                .context("--seconds must be a positive number")?
                .min(MAX_RUN);
            let outcome = run(metric, to, budget, max_count)?;
            println!("{}", serde_json::to_string(&outcome)?);
            Ok(())
        }
        Command::Whoami { to, udp } => {
            check_target(to)?;
            println!(
                "{}",
                if udp {
                    whoami_udp(to)?
                } else {
                    whoami_tcp(to)?
                }
            );
            Ok(())
        }
        Command::Verify { object, dir } => verify(&object, &dir),
        Command::Decode { json, events, cpu } => {
            let (rate, per_cpu_second) = replay(json, events.min(100_000_000), cpu)?;
            println!(
                "{}",
                serde_json::json!({
                    "form": if json { "json" } else { "human" },
                    "events": events,
                    "rate": rate,
                    "per_cpu_second": per_cpu_second,
                })
            );
            Ok(())
        }
    }
}

/// Records as the ring holds them: `journeys` UDP journeys of four hops
/// (red → host → host → blue, as `bench trace`'s flood) and a kernel drop.
fn recorded(journeys: u32) -> Vec<Vec<u8>> {
    use netlab_common::trace::{
        Action, DropEvent, EVENT_HOP, EVENT_KERNEL_DROP, EventHeader, Hook, HopEvent, REASON_NONE,
        SNAP_MAX, TUPLE_IPV4, Tuple,
    };
    fn bytes<T>(value: &T) -> Vec<u8> {
        // SAFETY: reading a plain-data value's bytes.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }
    let mut out = Vec::new();
    let mut ts = 1_000_000_000u64;
    for j in 0..journeys {
        let tuple = Tuple {
            saddr: [u32::from_ne_bytes([192, 168, 15, 1]), 0, 0, 0],
            daddr: [u32::from_ne_bytes([192, 168, 15, 2]), 0, 0, 0],
            sport: (40000 + (j % 20000) as u16).to_be(),
            dport: 9000u16.to_be(),
            proto: 17,
            tcp_flags: 0,
            icmp_type: 0,
            kind: TUPLE_IPV4,
        };
        let header = EventHeader {
            kind: EVENT_HOP,
            hook: 0,
            action: Action::Pass as u8,
            reason: REASON_NONE,
            ifindex: 0,
            ts_ns: 0,
            trace_id: 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(u64::from(j) + 1),
            skb_len: 60,
            cap_len: 0,
            target_ifindex: 0,
            kernel_reason: 0,
            before: tuple,
            after: tuple,
            location: 0,
        };
        for (ifindex, hook) in [
            (4, Hook::Egress),
            (3, Hook::NatIngress),
            (5, Hook::NatEgress),
            (6, Hook::Ingress),
        ] {
            ts += 1000;
            let hop = HopEvent {
                header: EventHeader {
                    ifindex,
                    hook: hook as u8,
                    ts_ns: ts,
                    ..header
                },
                data: [0; SNAP_MAX],
            };
            out.push(bytes(&hop));
        }
        ts += 1000;
        out.push(bytes(&DropEvent {
            header: EventHeader {
                kind: EVENT_KERNEL_DROP,
                hook: Hook::Kernel as u8,
                action: Action::KernelDrop as u8,
                ifindex: 6,
                ts_ns: ts,
                skb_len: 0,
                kernel_reason: 3,
                location: 0,
                ..header
            },
        }));
    }
    out
}

/// `bench trace`'s producer that is never the bottleneck: recorded ring
/// records replayed through the reader's own decode and format path.
fn replay(json: bool, events: u64, cpu: Option<usize>) -> Result<(f64, f64)> {
    use std::os::fd::FromRawFd as _;

    use netlab::trace::output::{Context, TextSink, decode};

    let records = recorded(4096);
    let mut ctx = Context::default();
    for (index, place, name) in [
        (3, "host", "veth-red-br"),
        (4, "red", "veth-red"),
        (5, "host", "veth-blue-br"),
        (6, "blue", "veth-blue"),
    ] {
        ctx.add_iface(index, place, name);
    }
    ctx.kernel_reasons.insert(3, "NO_SOCKET".to_owned());
    ctx.symbols = Some(Vec::new());
    let mut fds = [0; 2];
    // SAFETY: a valid array of two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error()).context("pipe2");
    }
    // SAFETY: fresh fds we own, each wrapped once.
    let (mut reader, mut writer) =
        unsafe { (fs::File::from_raw_fd(fds[0]), fs::File::from_raw_fd(fds[1])) };
    // As `netlab trace` does with its stdout.
    netlab::sys::widen_pipe(std::os::fd::AsFd::as_fd(&writer));
    let drain = thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        total
    });
    pin(cpu)?;
    let mut sink = TextSink::new(json);
    let cpu_started = thread_cpu_seconds();
    let started = Instant::now();
    let mut done = 0u64;
    // Each pass over the records stands for new packets: other trace ids,
    // later times (the human form groups events by trace id).
    let span = records.len() as u64 * 1000;
    let mut pass = 0u64;
    'outer: loop {
        pass += 1;
        for batch in records.chunks(4096) {
            let now = Instant::now();
            for record in batch {
                if let Some(mut event) = decode(record) {
                    event.header.trace_id ^= pass << 40;
                    event.header.ts_ns += pass * span;
                    sink.push(&event, &ctx, now);
                }
                done += 1;
                if sink.buf.len() >= 256 << 10 {
                    writer.write_all(&sink.buf)?;
                    sink.buf.clear();
                }
            }
            sink.end_batch(&ctx, now, Duration::from_millis(100));
            if done >= events {
                break 'outer;
            }
        }
    }
    sink.end_batch(&ctx, Instant::now(), Duration::ZERO);
    writer.write_all(&sink.buf)?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_seconds = thread_cpu_seconds() - cpu_started;
    drop(writer);
    let bytes = drain
        .join()
        .map_err(|_| anyhow::anyhow!("the drain thread panicked"))?;
    eprintln!(
        "netlab-loadgen: {done} events, {bytes} bytes of {} in {elapsed:.3} s \
         ({cpu_seconds:.3} s on the formatting thread's CPU)",
        if json { "JSON" } else { "text" }
    );
    // Per CPU second of the formatting thread (writes to the pipe
    // included): the machine is shared, so wall time counts others' work.
    Ok((done as f64 / elapsed, done as f64 / cpu_seconds))
}

/// The verifier's work on each TC program of the object, one at a time
/// (as `up` loads them, but not in parallel, so each time is its own).
fn verify(object: &Path, dir: &Path) -> Result<()> {
    use aya::{EbpfLoader, programs::SchedClassifier};
    use netlab_common::names;

    let object = fs::read(object).with_context(|| format!("reading {}", object.display()))?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = (|| -> Result<()> {
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(dir)
            .load(&object)
            .context("loading the eBPF object")?;
        for name in [
            names::NAT_INGRESS,
            names::NAT_EGRESS,
            names::NAT_INGRESS_FULL,
            names::NAT_EGRESS_FULL,
            names::NAT6_INGRESS,
            names::NAT6_EGRESS,
            names::TRACE_HOP,
            names::TRACE_INGRESS,
            names::TRACE_EGRESS,
        ] {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .with_context(|| format!("the object has no program {name}"))?
                .try_into()?;
            let started = Instant::now();
            program.load().with_context(|| format!("loading {name}"))?;
            let load_ms = started.elapsed().as_secs_f64() * 1e3;
            let verified = program.info()?.verified_instruction_count();
            println!(
                "{}",
                serde_json::json!({"program": name, "verified_insns": verified, "load_ms": load_ms})
            );
        }
        Ok(())
    })();
    let _ = fs::remove_dir_all(dir);
    result
}

/// CPU time of the calling thread, user and system.
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Load only ever runs inside the namespaces the bench made: every address
/// of this namespace must be loopback, IPv6 link-local or a lab address
/// (the host's namespace has its real interfaces, e.g. eth0 in
/// 192.0.2.0/24).
fn refuse_init_netns() -> Result<()> {
    let addrs = local_addresses()?;
    if let Some(other) = addrs
        .iter()
        .find(|a| !a.is_loopback() && !is_link_local(**a) && !is_lab_address(**a))
    {
        bail!(
            "refusing to run: this network namespace has {other}, which is not a bench lab \
             address; run it through `cargo xtask bench`"
        );
    }
    Ok(())
}

fn local_addresses() -> Result<Vec<IpAddr>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we free below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(io::Error::last_os_error()).context("listing local addresses");
    }
    let mut addrs = Vec::new();
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list getifaddrs returned; an
        // AF_INET ifa_addr points at a sockaddr_in, an AF_INET6 one at a
        // sockaddr_in6.
        unsafe {
            let addr = (*cursor).ifa_addr;
            if !addr.is_null() {
                match i32::from((*addr).sa_family) {
                    libc::AF_INET => {
                        let sin = addr.cast::<libc::sockaddr_in>();
                        addrs.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                            (*sin).sin_addr.s_addr,
                        ))));
                    }
                    libc::AF_INET6 => {
                        let sin6 = addr.cast::<libc::sockaddr_in6>();
                        addrs.push(IpAddr::V6(Ipv6Addr::from((*sin6).sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
            cursor = (*cursor).ifa_next;
        }
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(addrs)
}

/// The bench's lab ranges, and nothing else.
/// The subnets the benches' sandboxes make: the default lab and its world,
/// the bare veth pair, `bench cni`'s pods (netlab's node and the
/// reference plugins') and the reference's uplink, and `bench services`'
/// ClusterIPs.
/// The dual-stack lab's (bench nat's IPv6 paths) and the bare veth pair's
/// IPv6 subnets are the last three.
const LAB_SUBNETS: &str = "192.168.15.0/24, 198.18.0.0/24, 198.19.0.0/23, 10.77.0.0/20, \
     10.88.0.0/20, 10.96.0.0/18, fd00:15::/64, 2001:2::/64, fd00:19::/64";

fn is_lab_address(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(addr) => {
            let [a, b, c, _] = addr.octets();
            matches!(
                (a, b, c),
                (192, 168, 15)
                    | (198, 18, 0)
                    | (198, 19, 0..=1)
                    | (10, 77 | 88, 0..=15)
                    | (10, 96, 0..=63)
            )
        }
        IpAddr::V6(addr) => {
            let s = addr.segments();
            matches!(
                (s[0], s[1], s[2], s[3]),
                (0xfd00, 0x15 | 0x19, 0, 0) | (0x2001, 2, 0, 0)
            )
        }
    }
}

/// fe80::/10: every IPv6 interface has one; nothing routes it.
fn is_link_local(addr: IpAddr) -> bool {
    matches!(addr, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80)
}

fn check_target(to: SocketAddr) -> Result<()> {
    if !is_lab_address(to.ip()) {
        bail!("{to} is not a lab address of the bench ({LAB_SUBNETS})");
    }
    Ok(())
}

fn pin(cpu: Option<usize>) -> Result<()> {
    let Some(cpu) = cpu else { return Ok(()) };
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set, and CPU_SET
    // and sched_setaffinity only read and write within it.
    let result = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    if result != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("pinning to CPU {cpu}"));
    }
    Ok(())
}

/// Busy and total CPU seconds of the machine so far (first line of /proc/stat).
fn cpu_seconds() -> Result<(f64, f64)> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    parse_proc_stat(&stat).context("no `cpu` line in /proc/stat")
}

fn parse_proc_stat(stat: &str) -> Option<(f64, f64)> {
    let fields: Vec<f64> = stat
        .lines()
        .find_map(|line| line.strip_prefix("cpu "))?
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is within user).
    let total: f64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(((total - idle) / ticks, total / ticks))
}

fn serve(at: SocketAddr, lifetime: Duration) -> Result<()> {
    let tcp = TcpListener::bind(at).with_context(|| format!("listening on TCP {at}"))?;
    let udp = UdpSocket::bind(at).with_context(|| format!("binding UDP {at}"))?;
    // The watchdog: the server ends by itself however it is driven.
    thread::spawn(move || {
        thread::sleep(lifetime);
        std::process::exit(0);
    });
    thread::spawn(move || serve_udp(&udp));
    eprintln!("netlab-loadgen: serving TCP and UDP {at}");
    let tcp = std::sync::Arc::new(tcp);
    let workers: Vec<_> = (0..SERVER_THREADS)
        .map(|_| {
            let tcp = std::sync::Arc::clone(&tcp);
            thread::spawn(move || {
                for stream in tcp.incoming() {
                    let Ok(stream) = stream else { continue };
                    if let Err(err) = serve_connection(stream) {
                        eprintln!("netlab-loadgen: connection: {err:#}");
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
    Ok(())
}

fn serve_connection(mut stream: TcpStream) -> Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut mode = [0u8; 1];
    stream.read_exact(&mut mode)?;
    let mut buf = vec![0u8; 256 * 1024];
    match mode[0] {
        b'E' => loop {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            stream.write_all(&buf[..n])?;
        },
        b'C' => {
            stream.write_all(b"c")?;
            // Wait for the client's FIN so it closes first.
            while stream.read(&mut buf)? > 0 {}
            Ok(())
        }
        b'S' => {
            let mut total: u64 = 0;
            loop {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            stream.write_all(&total.to_le_bytes())?;
            Ok(())
        }
        b'W' => {
            let peer = stream.peer_addr()?.ip();
            stream.write_all(format!("{peer}\n").as_bytes())?;
            Ok(())
        }
        other => bail!("unknown mode byte {other:#x}"),
    }
}

fn serve_udp(socket: &UdpSocket) {
    let mut received: u64 = 0;
    let mut buf = [0u8; 2048];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        match &buf[..n] {
            b"R" => {
                let _ = socket.send_to(b"R", peer);
                // A flood follows: count it without sleeping between
                // datagrams, so the sender's CPU pays for the datapath,
                // not for waking this thread up.
                received = count_flood(socket);
            }
            b"Q" => {
                let _ = socket.send_to(&received.to_le_bytes(), peer);
            }
            b"W" => {
                let _ = socket.send_to(format!("{}\n", peer.ip()).as_bytes(), peer);
            }
            _ => received += 1,
        }
    }
}

/// How long a flood's count may spin without a `Q` closing it.
const MAX_SPIN: Duration = Duration::from_secs(120);
/// Datagrams taken per `recvmmsg` while spinning.
const SPIN_BATCH: usize = 64;

/// Counts the datagrams of a flood with non-blocking `recvmmsg` on this
/// (pinned) thread, never sleeping, until the client's `Q` (answered with
/// the count) or [`MAX_SPIN`]. Returns the count, for a late `Q`.
fn count_flood(socket: &UdpSocket) -> u64 {
    use std::os::fd::AsRawFd as _;
    let deadline = Instant::now() + MAX_SPIN;
    let mut received: u64 = 0;
    let mut bufs = vec![[0u8; 64]; SPIN_BATCH];
    // SAFETY: plain-data structs, zeroed, then pointed at live locals.
    let mut iov: [libc::iovec; SPIN_BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut names: [libc::sockaddr_storage; SPIN_BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut msgs: [libc::mmsghdr; SPIN_BATCH] = unsafe { std::mem::zeroed() };
    let mut spins: u32 = 0;
    loop {
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(1024) && Instant::now() >= deadline {
            return received;
        }
        for ((v, m), (b, name)) in iov
            .iter_mut()
            .zip(msgs.iter_mut())
            .zip(bufs.iter_mut().zip(names.iter_mut()))
        {
            v.iov_base = b.as_mut_ptr().cast();
            v.iov_len = b.len();
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
            m.msg_hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
            m.msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        }
        // SAFETY: `msgs` points at SPIN_BATCH valid headers, buffers and
        // names, which outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                msgs.as_mut_ptr(),
                SPIN_BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            std::hint::spin_loop();
            continue;
        }
        for (m, (b, name)) in msgs
            .iter()
            .zip(bufs.iter().zip(names.iter()))
            .take(n as usize)
        {
            let data = &b[..(m.msg_len as usize).min(b.len())];
            let Some(peer) = socket_addr(name) else {
                continue;
            };
            match data {
                b"Q" => {
                    let _ = socket.send_to(&received.to_le_bytes(), peer);
                    return received;
                }
                b"R" => {
                    received = 0;
                    let _ = socket.send_to(b"R", peer);
                }
                b"W" => {
                    let _ = socket.send_to(format!("{}\n", peer.ip()).as_bytes(), peer);
                }
                _ => received += 1,
            }
        }
    }
}

/// The address `recvmmsg` wrote into `name`, for either family.
fn socket_addr(name: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(name.ss_family) {
        libc::AF_INET => {
            // SAFETY: an AF_INET name is a sockaddr_in, which the storage
            // is large and aligned enough to hold.
            let sin =
                unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 =
                unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn connect(to: SocketAddr) -> Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&to, IO_TIMEOUT)
        .with_context(|| format!("connecting to {to}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

fn run(metric: Metric, to: SocketAddr, budget: Duration, max_count: u64) -> Result<Outcome> {
    let (busy_before, _) = cpu_seconds()?;
    let start = Instant::now();
    let deadline = start + budget;
    let mut sent = 0;
    let count = match metric {
        Metric::Rr => {
            let mut stream = connect(to)?;
            stream.write_all(b"E")?;
            let mut byte = [b'x'];
            let mut n = 0;
            while n < max_count && Instant::now() < deadline {
                stream.write_all(&byte)?;
                stream
                    .read_exact(&mut byte)
                    .context("waiting for the response")?;
                n += 1;
            }
            n
        }
        Metric::Crr => connections(to, deadline, max_count)?,
        Metric::CrrPar => {
            let share = max_count.div_ceil(PARALLEL_CONNECTIONS as u64);
            let clients: Vec<_> = (0..PARALLEL_CONNECTIONS)
                .map(|_| thread::spawn(move || connections(to, deadline, share)))
                .collect();
            let mut n = 0;
            for client in clients {
                n += client
                    .join()
                    .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
            }
            n
        }
        Metric::Stream => {
            let mut stream = connect(to)?;
            stream.write_all(b"S")?;
            let chunk = vec![b's'; 128 * 1024];
            let mut written: u64 = 0;
            while written < max_count && Instant::now() < deadline {
                stream.write_all(&chunk)?;
                written += chunk.len() as u64;
            }
            stream.shutdown(Shutdown::Write)?;
            let mut count = [0u8; 8];
            stream
                .read_exact(&mut count)
                .context("waiting for the byte count")?;
            sent = written;
            u64::from_le_bytes(count)
        }
        Metric::Flood => {
            let socket = udp_socket(to)?;
            let sent = flood(&socket, deadline, max_count);
            let seconds = start.elapsed().as_secs_f64();
            let (busy_after, _) = cpu_seconds()?;
            return Ok(Outcome {
                metric,
                count: sent,
                sent,
                seconds,
                rate: sent as f64 / seconds,
                cpu_busy_seconds: busy_after - busy_before,
            });
        }
        Metric::Udp => {
            let socket = udp_socket(to)?;
            udp_ask(&socket, b"R")?;
            let started = Instant::now();
            sent = flood(&socket, deadline, max_count);
            let elapsed = started.elapsed();
            let reply = udp_ask(&socket, b"Q")?;
            let received = u64::from_le_bytes(
                reply
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .context("short reply to the count query")?,
            );
            let (busy_after, _) = cpu_seconds()?;
            let seconds = elapsed.as_secs_f64();
            return Ok(Outcome {
                metric,
                count: received,
                sent,
                seconds,
                rate: received as f64 / seconds,
                cpu_busy_seconds: busy_after - busy_before,
            });
        }
    };
    let seconds = start.elapsed().as_secs_f64();
    let (busy_after, _) = cpu_seconds()?;
    Ok(Outcome {
        metric,
        count,
        sent,
        seconds,
        rate: count as f64 / seconds,
        cpu_busy_seconds: busy_after - busy_before,
    })
}

/// Sequential connections to `to` (connect, 1-byte exchange, close from
/// this side), until `deadline` or `max_count`; how many completed.
fn connections(to: SocketAddr, deadline: Instant, max_count: u64) -> Result<u64> {
    let mut n = 0;
    let mut byte = [0u8];
    while n < max_count && Instant::now() < deadline {
        let mut stream = connect(to).with_context(|| format!("connection {}", n + 1))?;
        stream.write_all(b"C")?;
        stream
            .read_exact(&mut byte)
            .context("waiting for the response")?;
        // Dropping closes: the client sends the first FIN.
        drop(stream);
        n += 1;
    }
    Ok(n)
}

/// Sends datagrams of [`UDP_PAYLOAD`] bytes on the connected `socket`,
/// [`FLOOD_BATCH`] per `sendmmsg`, until `deadline` or `max_count`; returns
/// how many the kernel took.
fn flood(socket: &UdpSocket, deadline: Instant, max_count: u64) -> u64 {
    use std::os::fd::AsRawFd as _;
    const FLOOD_BATCH: usize = 64;
    let payload = [b'f'; UDP_PAYLOAD];
    // SAFETY: plain-data structs, zeroed, then pointed at live locals.
    let mut iov: [libc::iovec; FLOOD_BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut msgs: [libc::mmsghdr; FLOOD_BATCH] = unsafe { std::mem::zeroed() };
    for (v, m) in iov.iter_mut().zip(msgs.iter_mut()) {
        v.iov_base = payload.as_ptr() as *mut libc::c_void;
        v.iov_len = payload.len();
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    let mut sent = 0u64;
    while sent < max_count && Instant::now() < deadline {
        // SAFETY: `msgs` points at FLOOD_BATCH valid headers and iovecs,
        // which outlive the call; the socket is connected.
        let n = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                msgs.as_mut_ptr(),
                FLOOD_BATCH as libc::c_uint,
                0,
            )
        };
        // A full queue (ENOBUFS) is a lost batch, as on the wire.
        if n > 0 {
            sent += n as u64;
        }
    }
    sent
}

fn udp_socket(to: SocketAddr) -> Result<UdpSocket> {
    let any: IpAddr = if to.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let socket = UdpSocket::bind((any, 0))?;
    socket.connect(to).with_context(|| format!("UDP to {to}"))?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    Ok(socket)
}

/// A control datagram with its answer, retried: UDP may lose either.
fn udp_ask(socket: &UdpSocket, question: &[u8]) -> Result<Vec<u8>> {
    let mut buf = [0u8; 64];
    for _ in 0..25 {
        socket.send(question)?;
        if let Ok(n) = socket.recv(&mut buf) {
            return Ok(buf[..n].to_vec());
        }
    }
    bail!(
        "no answer from the UDP server to `{}` in 5 s",
        String::from_utf8_lossy(question)
    )
}

fn whoami_tcp(to: SocketAddr) -> Result<String> {
    let mut stream = connect(to)?;
    stream.write_all(b"W")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer.trim().to_owned())
}

fn whoami_udp(to: SocketAddr) -> Result<String> {
    let socket = udp_socket(to)?;
    let answer = udp_ask(&socket, b"W")?;
    Ok(String::from_utf8_lossy(&answer).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn v6(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    #[test]
    fn only_lab_ranges_are_targets() {
        assert!(is_lab_address(v4(198, 18, 0, 1)));
        assert!(is_lab_address(v4(192, 168, 15, 2)));
        assert!(is_lab_address(v4(198, 19, 0, 2)));
        assert!(!is_lab_address(v4(192, 0, 2, 1)));
        assert!(!is_lab_address(v4(127, 0, 0, 1)));
        assert!(!is_lab_address(v4(192, 168, 1, 1)));
        // bench cni's pods and the reference's uplink; nothing around them.
        assert!(is_lab_address(v4(10, 77, 15, 250)));
        assert!(is_lab_address(v4(10, 88, 0, 2)));
        assert!(is_lab_address(v4(198, 19, 1, 2)));
        assert!(!is_lab_address(v4(10, 77, 16, 1)));
        assert!(!is_lab_address(v4(10, 0, 0, 1)));
        assert!(!is_lab_address(v4(198, 19, 2, 1)));
        // The dual-stack lab's IPv6 subnets and the bare pair's.
        assert!(is_lab_address(v6("fd00:15::2")));
        assert!(is_lab_address(v6("2001:2::1")));
        assert!(is_lab_address(v6("fd00:19::2")));
        assert!(!is_lab_address(v6("fd00:16::2")));
        assert!(!is_lab_address(v6("2001:2:0:1::1")));
        assert!(!is_lab_address(v6("2001:db8::1")));
        assert!(!is_lab_address(v6("::1")));
        assert!(is_link_local(v6("fe80::1")));
        assert!(!is_link_local(v6("fd00:15::1")));
        assert!(!is_link_local(v4(169, 254, 0, 1)));
    }

    #[test]
    fn proc_stat_busy_excludes_idle_and_iowait() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n";
        let (busy, total) = parse_proc_stat(stat).unwrap_or_default();
        assert!((total / busy - 1000.0 / 150.0).abs() < 1e-9);
    }
}
