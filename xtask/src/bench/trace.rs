//! `cargo xtask bench trace`: what `netlab trace` costs the datapath and
//! `up`, how fast it starts, and how fast its reader decodes events.
//!
//! On the default lab (`bridge` datapath), inside a private namespace:
//! - `up` time (trace_hop is no longer loaded there), and trace_hop's load
//!   time (verifier included) as `netlab trace --notices-json` reports it,
//!   for no filter, `port 1`, and a four-clause filter;
//! - startup: from exec to the session's `started` notice with 65,536
//!   entries in netlab's conntrack map;
//! - decode and format: recorded ring records replayed through the
//!   reader's own path into a drained pipe (`netlab-loadgen decode`), per
//!   CPU second of the formatting thread, JSON and human;
//! - TCP request/response rate red → blue with tracing off, on with a filter
//!   nothing matches (`port 1`), and on for every packet, interleaved by
//!   round, ratios to "off" taken round by round; then, with the kernel's
//!   program accounting on, the time netlab's programs take per
//!   transaction, off and with the filter that matches nothing;
//! - a UDP flood red → blue with tracing on for every packet: datagrams
//!   sent 64 per `sendmmsg` to a port nobody listens on (blue's kernel
//!   drops them, NO_SOCKET: four hops and a fate each), the sender and the
//!   whole datapath on CPU 0, the reader alone on CPU 1; events received
//!   and lost (exact: the kernel counts every failed reservation).
//!
//! Every load is bounded in time and count. The driver is this module's
//! [`run_sandboxed`], run by `xtask bench-trace-sandboxed` in a private
//! mount and network namespace; it reads netlab's typed output only
//! (`trace::Notice`, the load generator's JSON) and the pinned maps
//! through netlab's own types.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, ChildStderr, Command, ExitCode, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use netlab::{
    datapath::{self, ebpf::maps},
    pins::Pins,
    trace::{Notice, Started, Summary},
};
use netlab_common::{
    names,
    nat::{CtEntry, FlowKey, IPPROTO_TCP},
};
use serde::{Deserialize, Serialize};

use super::{progcost::StatsOn, sandbox, stats::median_min_max};
use crate::{
    build::{self, Profile},
    process::Cmd,
};

const ROUNDS: usize = 5;
const SECONDS: u32 = 2;
/// The lab (netlab's default).
const LAB: &str = "default";
/// Entries put in netlab's conntrack before the startup is timed.
const CONNTRACK_FILL: u32 = 65_536;

/// A filter of four clauses, for trace_hop's load time.
const BIG_FILTER: &str = "tcp and port 80 or udp and src host 192.168.15.1 and not dst port 53 \
                          or netns red and icmp or net 10.0.0.0/8 and portrange 1000-2000";

/// What the sandboxed driver needs.
#[derive(Serialize, Deserialize)]
pub struct Plan {
    netlab: PathBuf,
    loadgen: PathBuf,
    dir: PathBuf,
}

/// One request/response run: its rate, and (while tracing) the session's
/// events received and lost.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RrSample {
    round: usize,
    mode: String,
    rate: f64,
    events: Option<(u64, u64)>,
}

/// A UDP flood traced on every packet.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct FloodSample {
    sent: u64,
    received: u64,
    lost: u64,
}

/// Time in netlab's programs over one request/response run.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ProgSample {
    mode: String,
    transactions: u64,
    seconds: f64,
    ns: u64,
}

/// Every figure the driver measured (round 0, the warm-up, left out),
/// written as samples.json.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Samples {
    up_ms: Vec<f64>,
    hop_load_ms: BTreeMap<String, Vec<f64>>,
    conntrack_filled: usize,
    startup_ms: Vec<f64>,
    decode_per_cpu_s: BTreeMap<String, Vec<f64>>,
    rr: Vec<RrSample>,
    flood: Vec<FloodSample>,
    progns: Vec<ProgSample>,
}

/// What a load generator's client run prints (the fields read here).
#[derive(Deserialize)]
struct RunOutcome {
    count: u64,
    #[serde(default)]
    sent: u64,
    seconds: f64,
    rate: f64,
}

/// What `netlab-loadgen decode` prints.
#[derive(Deserialize)]
struct DecodeOutcome {
    per_cpu_second: f64,
}

pub fn bench_trace(workspace: &Path) -> Result<ExitCode> {
    if !crate::process::is_root()? {
        bail!("bench trace creates namespaces: run it as root");
    }
    crate::toolchain::ensure(&[crate::toolchain::BENCH_TOOLS])?;
    let netlab = build::build(workspace, Profile::Release)?;
    let loadgen = super::build_loadgen(workspace, Profile::Release)?;
    let dir = super::output_dir(workspace).join("trace");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    eprintln!(
        "xtask: bench trace: up, trace_hop load and startup times, decode rates, then {ROUNDS} \
         rounds (after a warm-up) of {SECONDS} s per mode and a UDP flood"
    );
    let plan = Plan {
        netlab,
        loadgen,
        dir: dir.clone(),
    };
    let plan_file = dir.join("plan.json");
    fs::write(&plan_file, serde_json::to_string_pretty(&plan)?)
        .with_context(|| format!("writing {}", plan_file.display()))?;
    let samples_file = dir.join("samples.json");
    let _ = fs::remove_file(&samples_file);
    let me = std::env::current_exe().context("locating xtask's own binary")?;
    Cmd::new("unshare")
        .args(["--mount", "--net", "--propagation", "private"])
        .arg(me)
        .arg("bench-trace-sandboxed")
        .arg(&plan_file)
        .run()
        .context("running the benchmark in a private namespace")?;
    let text = fs::read_to_string(&samples_file)
        .with_context(|| format!("reading {}", samples_file.display()))?;
    let samples: Samples = serde_json::from_str(&text).context("parsing the samples")?;
    let table = report(&samples);
    println!("{table}");
    println!(
        "Request/response: client on CPU 0, server and (when tracing) the reader on CPU 1; \
         events are counted over the tracer's whole run ({} s), traffic over {SECONDS} s.",
        SECONDS + 1
    );
    fs::write(dir.join("report.md"), &table)?;
    Ok(ExitCode::SUCCESS)
}

/// Inside the sandbox: measures, and writes samples.json (also after a
/// failure, with what was measured).
pub fn run_sandboxed(plan_file: &Path) -> Result<ExitCode> {
    sandbox::measure_into(plan_file, |plan: &Plan| plan.dir.clone(), measure)
}

fn measure(plan: &Plan, samples: &mut Samples) -> Result<()> {
    let netlab = |args: &[&str]| sandbox::output(Command::new(&plan.netlab).args(args));
    for round in 0..=ROUNDS {
        let start = Instant::now();
        netlab(&["up"])?;
        if round > 0 {
            samples.up_ms.push(ms(start.elapsed()));
        }
        if round < ROUNDS {
            netlab(&["down"])?;
        }
    }
    for round in 0..=ROUNDS {
        for (variant, filter) in [("all", ""), ("port1", "port 1"), ("big", BIG_FILTER)] {
            let mut tracer = Tracer::start(plan, "0.1", filter, None)?;
            let started = tracer.started()?;
            tracer.finish()?;
            if round > 0 {
                samples
                    .hop_load_ms
                    .entry(variant.to_owned())
                    .or_default()
                    .push(started.hop_load_us as f64 / 1e3);
            }
        }
    }
    samples.conntrack_filled = fill_conntrack(CONNTRACK_FILL)?;
    for round in 0..=ROUNDS {
        let start = Instant::now();
        let mut tracer = Tracer::start(plan, "0.2", "", None)?;
        tracer.started()?;
        let elapsed = start.elapsed();
        tracer.finish()?;
        if round > 0 {
            samples.startup_ms.push(ms(elapsed));
        }
    }
    datapath::flush_flows(LAB)?;
    netlab(&["down"])?;
    netlab(&["up"])?;
    for round in 0..=ROUNDS {
        for form in ["json", "human"] {
            let mut cmd = Command::new(&plan.loadgen);
            cmd.arg("decode");
            if form == "json" {
                cmd.arg("--json");
            }
            cmd.args(["--events", "4000000", "--cpu", "1"]);
            let outcome: DecodeOutcome = serde_json::from_str(&sandbox::output(&mut cmd)?)
                .context("reading `netlab-loadgen decode`")?;
            if round > 0 {
                samples
                    .decode_per_cpu_s
                    .entry(form.to_owned())
                    .or_default()
                    .push(outcome.per_cpu_second);
            }
        }
    }
    let server = Server::start(plan)?;
    for round in 0..=ROUNDS {
        for (mode, filter) in [
            ("off", None),
            ("nomatch", Some("port 1")),
            ("all", Some("")),
        ] {
            let tracer = traced(plan, filter)?;
            let outcome = run_client(plan, "rr", 9000)?;
            let events = finish(tracer)?;
            if round > 0 {
                samples.rr.push(RrSample {
                    round,
                    mode: mode.to_owned(),
                    rate: outcome.rate,
                    events,
                });
            }
        }
        // Nobody listens on port 9: blue's kernel drops every datagram.
        let tracer = traced(plan, Some(""))?;
        let outcome = run_client(plan, "flood", 9)?;
        let (received, lost) = finish(tracer)?.unwrap_or_default();
        if round > 0 {
            samples.flood.push(FloodSample {
                sent: outcome.sent,
                received,
                lost,
            });
        }
    }
    // The kernel's own accounting of netlab's programs (NAT, watchers,
    // trace_hop through the tail call, fate tracepoints) over
    // request/response, tracing off and with a filter that matches
    // nothing: less noisy than the rates.
    let stats = StatsOn::new()?;
    for round in 0..=ROUNDS {
        for (mode, filter) in [("off", None), ("nomatch", Some("port 1"))] {
            let tracer = traced(plan, filter)?;
            let before = netlab_program_ns()?;
            let outcome = run_client(plan, "rr", 9000)?;
            let after = netlab_program_ns()?;
            finish(tracer)?;
            if round > 0 {
                samples.progns.push(ProgSample {
                    mode: mode.to_owned(),
                    transactions: outcome.count,
                    seconds: outcome.seconds,
                    ns: after.saturating_sub(before),
                });
            }
        }
    }
    drop(stats);
    drop(server);
    netlab(&["down"])?;
    Ok(())
}

fn ms(elapsed: Duration) -> f64 {
    elapsed.as_secs_f64() * 1e3
}

/// Fills netlab's assured conntrack table with `n` flows (as many as it
/// takes); how many entries it then holds.
fn fill_conntrack(n: u32) -> Result<usize> {
    let pins = Pins::of(LAB);
    let mut table = maps::conntrack_table::<FlowKey, CtEntry>(&pins, names::CONNTRACK)?;
    for i in 0..n {
        let key = FlowKey {
            saddr: u32::from(Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8)).to_be(),
            daddr: u32::from(Ipv4Addr::new(10, 0, 0, 2)).to_be(),
            sport: (1000 + (i % 60_000) as u16).to_be(),
            dport: 80_u16.to_be(),
            proto: IPPROTO_TCP,
            ..FlowKey::default()
        };
        if table.insert(key, CtEntry::default(), 0).is_err() {
            break;
        }
    }
    Ok(table.keys().count())
}

/// Run time of netlab's programs (NAT and tracing), summed, from the
/// kernel's accounting.
fn netlab_program_ns() -> Result<u64> {
    let mut ns = 0;
    for program in aya::programs::loaded_programs() {
        let program = program.context("listing the loaded BPF programs")?;
        let name = program.name_as_str().unwrap_or_default();
        if name.starts_with("nat_") || name.starts_with("trace_") {
            ns += program.run_time().as_nanos() as u64;
        }
    }
    Ok(ns)
}

/// A client run of the load generator from red to blue.
fn run_client(plan: &Plan, metric: &str, port: u16) -> Result<RunOutcome> {
    let to = format!("192.168.15.2:{port}");
    let seconds = SECONDS.to_string();
    let out = sandbox::output(
        Command::new("ip")
            .args(["netns", "exec", "red"])
            .arg(&plan.loadgen)
            .args([
                "run",
                metric,
                "--to",
                &to,
                "--seconds",
                &seconds,
                "--max-count",
                "50000000",
                "--cpu",
                "0",
            ]),
    )?;
    serde_json::from_str(&out).with_context(|| format!("reading `netlab-loadgen run {metric}`"))
}

/// A trace session over a run: `None` for none, else its filter (`""`:
/// every packet), started and ready before the run.
fn traced(plan: &Plan, filter: Option<&str>) -> Result<Option<Tracer>> {
    let Some(filter) = filter else {
        return Ok(None);
    };
    let duration = (SECONDS + 1).to_string();
    let mut tracer = Tracer::start(plan, &duration, filter, Some(1))?;
    tracer.started()?;
    Ok(Some(tracer))
}

/// Events received and lost by a session [`traced`] started.
fn finish(tracer: Option<Tracer>) -> Result<Option<(u64, u64)>> {
    tracer
        .map(|t| t.finish().map(|s| (s.events, s.lost)))
        .transpose()
}

/// `netlab trace --json --notices-json`, its events thrown away, its
/// notices read.
struct Tracer {
    child: Child,
    notices: BufReader<ChildStderr>,
}

impl Tracer {
    fn start(plan: &Plan, duration: &str, filter: &str, cpu: Option<usize>) -> Result<Tracer> {
        let mut cmd = match cpu {
            Some(cpu) => {
                let mut cmd = Command::new("taskset");
                cmd.args(["-c", &cpu.to_string()]).arg(&plan.netlab);
                cmd
            }
            None => Command::new(&plan.netlab),
        };
        cmd.args(["trace", "--json", "--notices-json", "--duration", duration])
            .args(filter.split_whitespace())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("starting `netlab trace`")?;
        let stderr = child.stderr.take().context("no stderr of `netlab trace`")?;
        Ok(Tracer {
            child,
            notices: BufReader::new(stderr),
        })
    }

    /// The next notice; `None` at the end of stderr. Other lines (logs)
    /// are skipped.
    fn next(&mut self) -> Result<Option<Notice>> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.notices.read_line(&mut line)? == 0 {
                return Ok(None);
            }
            if let Ok(notice) = serde_json::from_str::<Notice>(line.trim()) {
                return Ok(Some(notice));
            }
        }
    }

    /// Waits until the session traces.
    fn started(&mut self) -> Result<Started> {
        match self.next()? {
            Some(Notice::Started(started)) => Ok(started),
            other => bail!("`netlab trace` did not start: {other:?}"),
        }
    }

    /// Waits for the session's end and its summary.
    fn finish(mut self) -> Result<Summary> {
        let mut summary = None;
        while let Some(notice) = self.next()? {
            if let Notice::Summary(s) = notice {
                summary = Some(s);
            }
        }
        let status = self.child.wait()?;
        match summary {
            Some(summary) if status.success() => Ok(summary),
            _ => bail!("`netlab trace` ended with {status} and no summary"),
        }
    }
}

/// The load generator's server in blue, stopped when dropped.
struct Server(Child);

impl Server {
    fn start(plan: &Plan) -> Result<Server> {
        let child = Command::new("ip")
            .args(["netns", "exec", "blue"])
            .arg(&plan.loadgen)
            .args(["serve", "--port", "9000", "--seconds", "600", "--cpu", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the load generator's server in blue")?;
        thread::sleep(Duration::from_millis(500));
        Ok(Server(child))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The report: every figure's median and spread.
fn report(samples: &Samples) -> String {
    let of = |map: &BTreeMap<String, Vec<f64>>, key: &str| {
        median_min_max(map.get(key).cloned().unwrap_or_default())
    };
    let mut table = String::new();
    let (m, lo, hi) = median_min_max(samples.up_ms.clone());
    let _ = writeln!(
        table,
        "`netlab up` of the default lab (trace_hop not loaded): {m:.0} ms median ({lo:.0}–{hi:.0})"
    );
    for (variant, label) in [
        ("all", "no filter"),
        ("port1", "`port 1`"),
        ("big", "a four-clause filter"),
    ] {
        let (m, lo, hi) = of(&samples.hop_load_ms, variant);
        let _ = writeln!(
            table,
            "trace_hop load at `netlab trace` start, {label}: {m:.1} ms median ({lo:.1}–{hi:.1})"
        );
    }
    let (m, lo, hi) = median_min_max(samples.startup_ms.clone());
    let _ = writeln!(
        table,
        "`netlab trace` startup (exec to tracing) with {} conntrack entries: {m:.0} ms median ({lo:.0}–{hi:.0})",
        samples.conntrack_filled
    );
    for form in ["json", "human"] {
        let (m, lo, hi) = of(&samples.decode_per_cpu_s, form);
        let _ = writeln!(
            table,
            "decode + format, {form} to a pipe: {:.2} M events per CPU second, median ({:.2}–{:.2})",
            m / 1e6,
            lo / 1e6,
            hi / 1e6
        );
    }
    table.push_str(
        "\n| tracing | TCP request/response per s, median (min–max) | ratio to off (paired) | events received | events lost |\n|---|---|---|---|---|\n",
    );
    for mode in ["off", "nomatch", "all"] {
        let runs: Vec<&RrSample> = samples.rr.iter().filter(|r| r.mode == mode).collect();
        let off = |round: usize| {
            samples
                .rr
                .iter()
                .find(|r| r.round == round && r.mode == "off")
                .map(|r| r.rate)
        };
        let values: Vec<f64> = runs.iter().map(|r| r.rate).collect();
        let ratios: Vec<f64> = runs
            .iter()
            .filter_map(|r| Some(r.rate / off(r.round)?))
            .collect();
        let (m, lo, hi) = median_min_max(values);
        let (r, _, _) = median_min_max(ratios);
        let events: Vec<(u64, u64)> = runs.iter().filter_map(|r| r.events).collect();
        let (received, lost) = if events.is_empty() {
            ("-".to_owned(), "-".to_owned())
        } else {
            (
                format!(
                    "{:.0}",
                    median_min_max(events.iter().map(|e| e.0 as f64).collect()).0
                ),
                format!(
                    "{:.0}",
                    median_min_max(events.iter().map(|e| e.1 as f64).collect()).0
                ),
            )
        };
        let label = match mode {
            "off" => "off",
            "nomatch" => "on, filter matches nothing (`port 1`)",
            _ => "on, every packet",
        };
        let _ = writeln!(
            table,
            "| {label} | {m:.0} ({lo:.0}–{hi:.0}) | {r:.3} | {received} | {lost} |"
        );
    }
    // Per transaction: ns in netlab's programs, and their share of the
    // transaction's time.
    let per_transaction = |mode: &str| {
        let runs: Vec<&ProgSample> = samples.progns.iter().filter(|p| p.mode == mode).collect();
        let ns = median_min_max(
            runs.iter()
                .map(|p| p.ns as f64 / p.transactions.max(1) as f64)
                .collect(),
        )
        .0;
        let share = median_min_max(
            runs.iter()
                .map(|p| p.ns as f64 / (p.seconds * 1e9))
                .collect(),
        )
        .0;
        (ns, share)
    };
    let (off_ns, off_share) = per_transaction("off");
    let (nomatch_ns, nomatch_share) = per_transaction("nomatch");
    let _ = writeln!(
        table,
        "\nKernel time in netlab's programs per request/response transaction (bpf_stats, median \
         of {ROUNDS} pairs): tracing off {off_ns:.0} ns ({:.2}% of the transaction), a filter \
         that matches nothing (`port 1`) {nomatch_ns:.0} ns ({:.2}%): tracing costs {:.0} ns, \
         {:.2}% of a transaction.",
        off_share * 100.0,
        nomatch_share * 100.0,
        nomatch_ns - off_ns,
        (nomatch_share - off_share) * 100.0
    );
    let per_s = |v: f64| v / f64::from(SECONDS);
    let flood = &samples.flood;
    let (received, rlo, rhi) =
        median_min_max(flood.iter().map(|f| per_s(f.received as f64)).collect());
    let (lost, llo, lhi) = median_min_max(flood.iter().map(|f| per_s(f.lost as f64)).collect());
    let (sent, _, _) = median_min_max(flood.iter().map(|f| per_s(f.sent as f64)).collect());
    let _ = writeln!(
        table,
        "\nUDP flood red → blue (64 datagrams per sendmmsg, to a port nobody listens on), tracing \
         every packet, sender and datapath on CPU 0, reader alone on CPU 1: {received:.0} events \
         received/s ({rlo:.0}–{rhi:.0}), {lost:.0} events/s lost ({llo:.0}–{lhi:.0}), {sent:.0} \
         datagrams/s sent (each makes 4 hop events and a fate)."
    );
    table
}
