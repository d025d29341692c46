//! `cargo xtask bench trace`: what `netlab trace` costs the datapath and
//! `up`, how fast it starts, and how fast its reader decodes events.
//!
//! On the default lab (`bridge` datapath), inside a private namespace:
//! - `up` time (trace_hop is no longer loaded there), and trace_hop's load
//!   time (verifier included) as `netlab -v trace` reports it, for no
//!   filter, `port 1`, and a four-clause filter;
//! - startup: from exec to "tracing lab" with 65,536 entries in netlab's
//!   conntrack map;
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
//! Every load is bounded in time and count.

use std::{collections::BTreeMap, fmt::Write as _, fs, path::Path, process::ExitCode};

use anyhow::{Context, Result, bail};

use super::stats::median_min_max;
use crate::{
    build::{self, Profile},
    process::Cmd,
};

const ROUNDS: usize = 5;
const SECONDS: u32 = 2;

/// A filter of four clauses, for trace_hop's load time.
const BIG_FILTER: &str = "tcp and port 80 or udp and src host 192.168.15.1 and not dst port 53 \
                          or netns red and icmp or net 10.0.0.0/8 and portrange 1000-2000";

fn driver(netlab: &Path, loadgen: &Path, dir: &Path) -> String {
    format!(
        r#"set -e
mount -t tmpfs none /run
mount -t bpf bpf /sys/fs/bpf
ip link set lo up
N={netlab}; L={loadgen}; E="ip netns exec"
ms() {{ echo $(( ($(date +%s%N) - $1) / 1000000 )); }}
for round in $(seq 0 {rounds}); do
  t=$(date +%s%N); $N up >/dev/null; echo "up $round $(ms $t)"
  [ $round -lt {rounds} ] && $N down >/dev/null
done
for round in $(seq 0 {rounds}); do
  for f in all port1 big; do
    case $f in all) expr="" ;; port1) expr="port 1" ;; big) expr="{big}" ;; esac
    v=$($N -v trace --json --duration 0.1 $expr 2>&1 >/dev/null | grep -o 'loaded in [0-9.]*' | tr -dc '0-9.')
    echo "hopload $round $f $v"
  done
done
# 65,536 conntrack entries, then the time to "tracing lab".
python3 -c '
import struct
m="/sys/fs/bpf/netlab/default/maps/CONNTRACK"
for i in range(65536):
    k=struct.pack("<IIHHBBH", 0x0100000a+(i<<8), 0x0200000a, 1000+i%60000, 80, 6, 0, 0)
    print("map update pinned", m, "key hex", k.hex(" "), "value hex", " ".join(["00"]*72))
' > {dir}/ct.batch
bpftool batch file {dir}/ct.batch >/dev/null
echo "conntrack $(bpftool map dump pinned /sys/fs/bpf/netlab/default/maps/CONNTRACK | grep -c '^key')"
for round in $(seq 0 {rounds}); do
  t=$(date +%s%N)
  $N trace --json --duration 0.2 2>&1 >/dev/null | while read -r line; do
    case "$line" in *"tracing lab"*) echo "startup $round $(ms $t)" ;; esac
  done
done
$L flush-map /sys/fs/bpf/netlab/default/maps/CONNTRACK >/dev/null
$N down >/dev/null; $N up >/dev/null
for round in $(seq 0 {rounds}); do
  for form in json human; do
    flag=""; [ $form = json ] && flag=--json
    echo "decode $round $form $($L decode $flag --events 4000000 --cpu 1 2>/dev/null | grep -o '"per_cpu_second":[0-9.e+]*' | cut -d: -f2)"
  done
done
$E blue $L serve --port 9000 --seconds 600 --cpu 1 >/dev/null 2>&1 &
server=$!
sleep 0.5
events() {{ grep -o '[0-9]* events received, [0-9]* events lost' {dir}/trace.err | tr -dc '0-9 
' | awk '{{print $1, $2}}'; }}
for round in $(seq 0 {rounds}); do
  for mode in off nomatch all; do
    tracer=""
    case $mode in
      nomatch) taskset -c 1 $N trace --json --duration {trace_s} port 1 >/dev/null 2>{dir}/trace.err & tracer=$! ;;
      all) taskset -c 1 $N trace --json --duration {trace_s} >/dev/null 2>{dir}/trace.err & tracer=$! ;;
    esac
    [ -n "$tracer" ] && sleep 0.5
    out=$($E red $L run rr --to 192.168.15.2:9000 --seconds {seconds} --max-count 50000000 --cpu 0)
    ev="- -"
    if [ -n "$tracer" ]; then wait $tracer || true; ev=$(events); fi
    echo "rr $round $mode $(echo "$out" | grep -o '"rate":[0-9.e+]*' | cut -d: -f2) $ev"
  done
  taskset -c 1 $N trace --json --duration {trace_s} >/dev/null 2>{dir}/trace.err & tracer=$!
  sleep 0.5
  out=$($E red $L run flood --to 192.168.15.2:9 --seconds {seconds} --max-count 50000000 --cpu 0)
  wait $tracer || true
  echo "flood $round all $(echo "$out" | grep -o '"sent":[0-9]*' | cut -d: -f2) $(events)"
done
# The kernel's own accounting of netlab's programs (NAT, watchers, trace_hop
# through the tail call, fate tracepoints) over request/response, tracing
# off and with a filter that matches nothing: less noisy than the rates.
progns() {{ bpftool -j prog show | python3 -c '
import json, sys
print(sum(p.get("run_time_ns", 0) for p in json.load(sys.stdin)
          if p.get("name", "").startswith(("nat_", "trace_"))))'; }}
stats_was=$(cat /proc/sys/kernel/bpf_stats_enabled)
trap 'echo $stats_was > /proc/sys/kernel/bpf_stats_enabled' EXIT
echo 1 > /proc/sys/kernel/bpf_stats_enabled
for round in $(seq 0 {rounds}); do
  for mode in off nomatch; do
    tracer=""
    if [ $mode = nomatch ]; then
      taskset -c 1 $N trace --json --duration {trace_s} port 1 >/dev/null 2>{dir}/trace.err & tracer=$!
      sleep 0.5
    fi
    before=$(progns)
    out=$($E red $L run rr --to 192.168.15.2:9000 --seconds {seconds} --max-count 50000000 --cpu 0)
    after=$(progns)
    [ -n "$tracer" ] && {{ wait $tracer || true; }}
    echo "progns $round $mode $(echo "$out" | grep -o '"count":[0-9]*' | cut -d: -f2) $(echo "$out" | grep -o '"seconds":[0-9.e+]*' | cut -d: -f2) $((after - before))"
  done
done
echo $stats_was > /proc/sys/kernel/bpf_stats_enabled
trap - EXIT
kill $server 2>/dev/null || true
$N down >/dev/null
"#,
        netlab = netlab.display(),
        loadgen = loadgen.display(),
        dir = dir.display(),
        rounds = ROUNDS,
        seconds = SECONDS,
        trace_s = SECONDS + 1,
        big = BIG_FILTER,
    )
}

pub fn bench_trace(workspace: &Path) -> Result<ExitCode> {
    if !crate::process::is_root()? {
        bail!("bench trace creates namespaces: run it as root");
    }
    let netlab = build::build(workspace, Profile::Release)?;
    let loadgen = super::build_loadgen(workspace, Profile::Release)?;
    let dir = super::output_dir(workspace).join("trace");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    eprintln!(
        "xtask: bench trace: up, trace_hop load and startup times, decode rates, then {ROUNDS} \
         rounds (after a warm-up) of {SECONDS} s per mode and a UDP flood"
    );
    let out = Cmd::new("unshare")
        .args(["--mount", "--net", "--propagation", "private", "bash", "-c"])
        .arg(driver(&netlab, &loadgen, &dir))
        .run_capturing_stdout()
        .context("running the benchmark in a private namespace")?;

    fs::write(dir.join("raw.txt"), &out)?;
    // rr: rate per (round, mode), events per mode; flood: received/lost.
    let mut rates: BTreeMap<(usize, String), f64> = BTreeMap::new();
    let mut events: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut flood: Vec<(f64, f64, f64)> = Vec::new();
    // progns: mode → (transactions, seconds, ns in netlab's programs).
    let mut progns: BTreeMap<String, Vec<(f64, f64, f64)>> = BTreeMap::new();
    // Other figures: (kind, variant) → samples.
    let mut samples: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok());
        let (Some(kind), Some(round)) = (f.first(), num(1)) else {
            continue;
        };
        // Round 0 is the warm-up.
        if round < 1.0 {
            continue;
        }
        let mode = f.get(2).copied().unwrap_or("-").to_owned();
        match *kind {
            "rr" => {
                if let Some(rate) = num(3) {
                    rates.insert((round as usize, mode.clone()), rate);
                }
                if let (Some(received), Some(lost)) = (num(4), num(5)) {
                    events.entry(mode).or_default().push((received, lost));
                }
            }
            "progns" => {
                if let (Some(count), Some(seconds), Some(ns)) = (num(3), num(4), num(5)) {
                    progns
                        .entry(mode.clone())
                        .or_default()
                        .push((count, seconds, ns));
                }
            }
            "flood" => {
                if let (Some(sent), Some(received), Some(lost)) = (num(3), num(4), num(5)) {
                    flood.push((sent, received, lost));
                }
            }
            "up" | "startup" => {
                if let Some(ms) = num(2) {
                    samples
                        .entry(((*kind).to_owned(), String::new()))
                        .or_default()
                        .push(ms);
                }
            }
            "hopload" | "decode" => {
                if let Some(value) = num(3) {
                    samples
                        .entry(((*kind).to_owned(), mode.clone()))
                        .or_default()
                        .push(value);
                }
            }
            _ => {}
        }
    }
    let figure = |kind: &str, variant: &str| {
        median_min_max(
            samples
                .get(&(kind.to_owned(), variant.to_owned()))
                .cloned()
                .unwrap_or_default(),
        )
    };
    let mut table = String::new();
    let (m, lo, hi) = figure("up", "");
    let _ = writeln!(
        table,
        "`netlab up` of the default lab (trace_hop not loaded): {m:.0} ms median ({lo:.0}–{hi:.0})"
    );
    for (variant, label) in [
        ("all", "no filter"),
        ("port1", "`port 1`"),
        ("big", "a four-clause filter"),
    ] {
        let (m, lo, hi) = figure("hopload", variant);
        let _ = writeln!(
            table,
            "trace_hop load at `netlab trace` start, {label}: {m:.1} ms median ({lo:.1}–{hi:.1})"
        );
    }
    let (m, lo, hi) = figure("startup", "");
    let _ = writeln!(
        table,
        "`netlab trace` startup (exec to tracing) with 65,536 conntrack entries: {m:.0} ms median ({lo:.0}–{hi:.0})"
    );
    for form in ["json", "human"] {
        let (m, lo, hi) = figure("decode", form);
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
        let values: Vec<f64> = rates
            .iter()
            .filter(|((_, m), _)| m == mode)
            .map(|(_, v)| *v)
            .collect();
        let ratios: Vec<f64> = rates
            .iter()
            .filter(|((_, m), _)| m == mode)
            .filter_map(|((round, _), v)| Some(v / rates.get(&(*round, "off".to_owned()))?))
            .collect();
        let (m, lo, hi) = median_min_max(values);
        let (r, _, _) = median_min_max(ratios);
        let (received, lost) = events
            .get(mode)
            .map(|v| {
                (
                    median_min_max(v.iter().map(|e| e.0).collect()).0,
                    median_min_max(v.iter().map(|e| e.1).collect()).0,
                )
            })
            .map_or(("-".to_owned(), "-".to_owned()), |(a, b)| {
                (format!("{a:.0}"), format!("{b:.0}"))
            });
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
        let samples = progns.get(mode).cloned().unwrap_or_default();
        let ns = median_min_max(samples.iter().map(|(n, _, ns)| ns / n).collect()).0;
        let share = median_min_max(samples.iter().map(|(_, s, ns)| ns / (s * 1e9)).collect()).0;
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
    let (received, rlo, rhi) = median_min_max(flood.iter().map(|f| per_s(f.1)).collect());
    let (lost, llo, lhi) = median_min_max(flood.iter().map(|f| per_s(f.2)).collect());
    let (sent, _, _) = median_min_max(flood.iter().map(|f| per_s(f.0)).collect());
    let _ = writeln!(
        table,
        "\nUDP flood red → blue (64 datagrams per sendmmsg, to a port nobody listens on), tracing \
         every packet, sender and datapath on CPU 0, reader alone on CPU 1: {received:.0} events \
         received/s ({rlo:.0}–{rhi:.0}), {lost:.0} events/s lost ({llo:.0}–{lhi:.0}), {sent:.0} \
         datagrams/s sent (each makes 4 hop events and a fate)."
    );
    println!("{table}");
    println!(
        "Request/response: client on CPU 0, server and (when tracing) the reader on CPU 1; \
         events are counted over the tracer's whole run ({} s), traffic over {SECONDS} s.",
        SECONDS + 1
    );
    fs::write(dir.join("report.md"), &table)?;
    Ok(ExitCode::SUCCESS)
}
