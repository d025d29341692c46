//! `cargo xtask bench trace`: what `netlab trace` costs the datapath, and
//! how fast its reader decodes events (issue 5's benchmark).
//!
//! On the default lab (`bridge` datapath), inside a private namespace:
//! - TCP request/response rate red → blue with tracing off, on with a filter
//!   nothing matches (`port 1`), and on for every packet, interleaved by
//!   round, ratios to "off" taken round by round;
//! - a UDP flood red → blue with tracing on for every packet and the reader
//!   on its own CPU: events decoded per second and events lost.
//!
//! The machine has two CPUs: the client runs on CPU 0, the server on CPU 1,
//! and the reader (when tracing is on) shares CPU 1 with the server, which
//! the report says. Every load is bounded in time and count.

use std::{collections::BTreeMap, fmt::Write as _, fs, path::Path, process::ExitCode};

use anyhow::{Context, Result, bail};

use super::stats::median_min_max;
use crate::{
    build::{self, Profile},
    process::Cmd,
};

const ROUNDS: usize = 5;
const SECONDS: u32 = 2;

fn driver(netlab: &Path, loadgen: &Path, dir: &Path) -> String {
    format!(
        r#"set -e
mount -t tmpfs none /run
mount -t bpf bpf /sys/fs/bpf
ip link set lo up
N={netlab}; L={loadgen}; E="ip netns exec"
$N up >/dev/null
$E blue $L serve --port 9000 --seconds 600 --cpu 1 >/dev/null 2>&1 &
server=$!
sleep 0.5
events() {{ grep -o '[0-9]* events received, [0-9]* events lost' {dir}/trace.err | tr -dc '0-9 \n' | awk '{{print $1, $2}}'; }}
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
  out=$($E red $L run udp --to 192.168.15.2:9000 --seconds {seconds} --max-count 50000000 --cpu 0)
  wait $tracer || true
  echo "flood $round all $(echo "$out" | grep -o '"sent":[0-9]*' | cut -d: -f2) $(events)"
done
kill $server 2>/dev/null || true
$N down >/dev/null
"#,
        netlab = netlab.display(),
        loadgen = loadgen.display(),
        dir = dir.display(),
        rounds = ROUNDS,
        seconds = SECONDS,
        trace_s = SECONDS + 1,
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
        "xtask: bench trace: {ROUNDS} rounds (after a warm-up) of {SECONDS} s per mode, then a UDP flood"
    );
    let out = Cmd::new("unshare")
        .args(["--mount", "--net", "--propagation", "private", "bash", "-c"])
        .arg(driver(&netlab, &loadgen, &dir))
        .run_capturing_stdout()
        .context("running the benchmark in a private namespace")?;

    // rr: rate per (round, mode), events per mode; flood: received/lost.
    let mut rates: BTreeMap<(usize, String), f64> = BTreeMap::new();
    let mut events: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut flood: Vec<(f64, f64, f64)> = Vec::new();
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
            "flood" => {
                if let (Some(sent), Some(received), Some(lost)) = (num(3), num(4), num(5)) {
                    flood.push((sent, received, lost));
                }
            }
            _ => {}
        }
    }
    let mut table = String::from(
        "| tracing | TCP request/response per s, median (min–max) | ratio to off (paired) | events received | events lost |\n|---|---|---|---|---|\n",
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
    let per_s = |v: f64| v / f64::from(SECONDS);
    let (received, rlo, rhi) = median_min_max(flood.iter().map(|f| per_s(f.1)).collect());
    let (lost, _, _) = median_min_max(flood.iter().map(|f| per_s(f.2)).collect());
    let (sent, _, _) = median_min_max(flood.iter().map(|f| per_s(f.0)).collect());
    let _ = writeln!(
        table,
        "\nUDP flood red → blue, tracing every packet, reader on CPU 1: {received:.0} events decoded/s \
         ({rlo:.0}–{rhi:.0}), {lost:.0} events/s lost, {sent:.0} datagrams/s sent (each makes 4 hop events)."
    );
    println!("{table}");
    println!(
        "Client on CPU 0, server and (when tracing) the reader on CPU 1; events are counted over \
         the tracer's whole run ({} s), traffic over {SECONDS} s.",
        SECONDS + 1
    );
    fs::write(dir.join("report.md"), &table)?;
    Ok(ExitCode::SUCCESS)
}
