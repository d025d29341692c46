//! The Markdown report of a `bench` run: tables of medians (min–max) with
//! ratios to iptables (nft) paired by round, the scaling sweep, and the
//! targets we report against (reported, never asserted).

use std::fmt::Write as _;

use super::{
    results::{Datapath, Metric, Results, TrafficPath},
    stats::{human, paired_ratios, summarize},
};

/// The datapath every ratio is taken against.
pub const REFERENCE: Datapath = Datapath::IptablesNft;

const RATE_METRICS: [Metric; 5] = [
    Metric::Rr,
    Metric::Crr,
    Metric::Stream,
    Metric::Iperf3,
    Metric::Udp,
];

pub fn markdown(results: &Results) -> String {
    let mut out = String::new();
    let meta = &results.meta;
    let rounds = meta.repetitions;
    let _ = writeln!(
        out,
        "netlab bench ({} mode): {rounds} interleaved round(s) after {} warm-up round(s), {} s per run; \
         each cell is the median (min–max) and, after ×, the median of the ratios to {} \
         taken round by round.\n",
        meta.mode,
        meta.warmup_rounds,
        meta.seconds_per_run,
        REFERENCE.label()
    );
    let _ = writeln!(
        out,
        "Machine: {}, {} CPUs, {:.0} GiB, kernel {}. {} {} {} {}\n",
        meta.cpu_model,
        meta.cpus,
        meta.memory_gib,
        meta.kernel,
        meta.pinning,
        meta.br_netfilter,
        meta.offloads,
        meta.time_wait
    );
    for note in &meta.notes {
        let _ = writeln!(out, "{note}\n");
    }
    for skip in &results.skipped {
        let _ = writeln!(out, "Skipped {}: {}\n", skip.datapath.label(), skip.reason);
    }
    let datapaths = results.datapaths();
    let lab: Vec<Datapath> = datapaths
        .iter()
        .copied()
        .filter(|d| *d != Datapath::Direct)
        .collect();
    let base_ports = meta.port_counts.first().copied().unwrap_or(1);

    for path in TrafficPath::LAB {
        let _ = writeln!(
            out,
            "### {} ({} published port(s))\n",
            path.label(),
            base_ports
        );
        header(&mut out, "metric", &datapaths);
        for metric in RATE_METRICS {
            let cells: Vec<String> = datapaths
                .iter()
                .map(|&d| {
                    if d == Datapath::Direct {
                        direct_cell(results, path, metric, base_ports)
                    } else {
                        cell(results, (d, path), (REFERENCE, path), metric, base_ports)
                    }
                })
                .collect();
            if cells.iter().all(|c| c == "–") {
                continue;
            }
            row(
                &mut out,
                &format!("{} ({})", metric.label(), metric.unit()),
                &cells,
            );
        }
        for metric in [Metric::Rr, Metric::Crr, Metric::Udp] {
            let cells: Vec<String> = datapaths
                .iter()
                .map(|&d| {
                    let (series_path, ports) = if d == Datapath::Direct {
                        (TrafficPath::Direct, 0)
                    } else {
                        (path, base_ports)
                    };
                    match summarize(&results.cpu_series(d, series_path, metric, ports)) {
                        Some(s) => format!("{:.1} ({:.1}–{:.1})", s.median, s.min, s.max),
                        None => "–".to_owned(),
                    }
                })
                .collect();
            if cells.iter().all(|c| c == "–") {
                continue;
            }
            row(
                &mut out,
                &format!("CPU µs per {} (machine, /proc/stat)", short(metric)),
                &cells,
            );
        }
        out.push('\n');
    }

    if !lab.is_empty() {
        let _ = writeln!(
            out,
            "### Scaling: {} with N published ports (the used ones installed last)\n",
            TrafficPath::Dnat.label()
        );
        header(&mut out, "metric, N", &lab);
        for metric in [
            Metric::Crr,
            Metric::Rr,
            Metric::Udp,
            Metric::Stream,
            Metric::Install,
            Metric::Add,
            Metric::Rm,
        ] {
            for &ports in &meta.port_counts {
                let cells: Vec<String> = lab
                    .iter()
                    .map(|&d| {
                        cell(
                            results,
                            (d, TrafficPath::Dnat),
                            (REFERENCE, TrafficPath::Dnat),
                            metric,
                            ports,
                        )
                    })
                    .collect();
                if cells.iter().all(|c| c == "–") {
                    continue;
                }
                row(
                    &mut out,
                    &format!("{} ({}), N = {}", short(metric), metric.unit(), ports),
                    &cells,
                );
            }
        }
        out.push('\n');
    }
    out.push_str(&program_costs(results));
    out.push_str(&targets(results));
    out
}

/// Each eBPF program's ns per packet during request/response, per path
/// (the kernel's accounting; medians over the measured rounds).
fn program_costs(results: &Results) -> String {
    let mut out = String::new();
    if results.program_costs.is_empty() {
        return out;
    }
    let ebpf = [Datapath::Bridge, Datapath::Redirect];
    let _ = writeln!(
        out,
        "### Per-program cost, TCP request/response (ns per packet, `run_time_ns / run_cnt` \
         with kernel.bpf_stats_enabled=1; median (min–max) over rounds)\n"
    );
    header(&mut out, "program, path", &ebpf);
    for path in TrafficPath::LAB {
        for program in super::progcost::PROGRAMS {
            let cells: Vec<String> = ebpf
                .iter()
                .map(|&d| {
                    let values: Vec<f64> = results
                        .program_costs
                        .iter()
                        .filter(|c| {
                            !c.warmup && c.datapath == d && c.path == path && c.program == program
                        })
                        .map(|c| c.ns_per_run)
                        .collect();
                    match summarize(&values) {
                        Some(s) => format!("{:.0} ({:.0}–{:.0})", s.median, s.min, s.max),
                        None => "–".to_owned(),
                    }
                })
                .collect();
            if cells.iter().all(|c| c == "–") {
                continue;
            }
            row(&mut out, &format!("`{program}`, {}", path_id(path)), &cells);
        }
    }
    out.push('\n');
    out
}

fn path_id(path: TrafficPath) -> &'static str {
    match path {
        TrafficPath::Dnat => "outside → published port",
        TrafficPath::Masquerade => "red → outside",
        TrafficPath::EastWest => "red → blue",
        TrafficPath::Direct => "direct",
    }
}

fn short(metric: Metric) -> &'static str {
    match metric {
        Metric::Rr => "TCP rr",
        Metric::Crr => "TCP crr",
        Metric::Stream => "TCP bulk",
        Metric::Iperf3 => "iperf3",
        Metric::Udp => "UDP",
        Metric::Install => "up",
        Metric::Add => "add 1",
        Metric::Rm => "rm 1",
    }
}

fn header(out: &mut String, first: &str, datapaths: &[Datapath]) {
    let labels: Vec<&str> = datapaths.iter().map(|d| d.label()).collect();
    let _ = writeln!(out, "| {first} | {} |", labels.join(" | "));
    let _ = writeln!(out, "|---|{}", "---|".repeat(datapaths.len()));
}

fn row(out: &mut String, first: &str, cells: &[String]) {
    let _ = writeln!(out, "| {first} | {} |", cells.join(" | "));
}

/// "median (min–max) ×ratio" of one series against the reference's series.
fn cell(
    results: &Results,
    (datapath, path): (Datapath, TrafficPath),
    (reference, reference_path): (Datapath, TrafficPath),
    metric: Metric,
    ports: u32,
) -> String {
    let series = results.series(datapath, path, metric, ports);
    let values: Vec<f64> = series.iter().map(|(_, v)| *v).collect();
    let Some(s) = summarize(&values) else {
        return "–".to_owned();
    };
    let mut text = format!("{} ({}–{})", human(s.median), human(s.min), human(s.max));
    if datapath != reference {
        let base = results.series(reference, reference_path, metric, ports);
        if let Some(r) = summarize(&paired_ratios(&series, &base)) {
            let _ = write!(text, " ×{}", ratio_text(r.median));
        }
    }
    text
}

/// The direct pair's series (no ports) against the reference on `path`.
fn direct_cell(results: &Results, path: TrafficPath, metric: Metric, base_ports: u32) -> String {
    let series = results.series(Datapath::Direct, TrafficPath::Direct, metric, 0);
    let values: Vec<f64> = series.iter().map(|(_, v)| *v).collect();
    let Some(s) = summarize(&values) else {
        return "–".to_owned();
    };
    let mut text = format!("{} ({}–{})", human(s.median), human(s.min), human(s.max));
    let base = results.series(REFERENCE, path, metric, base_ports);
    if let Some(r) = summarize(&paired_ratios(&series, &base)) {
        let _ = write!(text, " ×{}", ratio_text(r.median));
    }
    text
}

/// A ratio with 3 significant digits (0.00123 stays readable).
pub fn ratio_text(r: f64) -> String {
    if r >= 0.1 || r == 0.0 {
        format!("{r:.2}")
    } else {
        let digits = (2 - r.abs().log10().floor() as i32).max(0) as usize;
        format!("{r:.digits$}")
    }
}

/// Median of the paired ratios a/b.
fn ratio(
    results: &Results,
    a: (Datapath, TrafficPath, u32),
    b: (Datapath, TrafficPath, u32),
    metric: Metric,
) -> Option<f64> {
    let x = results.series(a.0, a.1, metric, a.2);
    let y = results.series(b.0, b.1, metric, b.2);
    summarize(&paired_ratios(&x, &y)).map(|s| s.median)
}

/// The targets, reported against what was measured.
fn targets(results: &Results) -> String {
    let mut out = String::from("### Targets (reported, not asserted)\n\n");
    let datapaths = results.datapaths();
    let base = results.meta.port_counts.first().copied().unwrap_or(1);
    let most = results.meta.port_counts.last().copied().unwrap_or(base);
    let mut any = false;
    for netlab in [Datapath::Redirect, Datapath::Bridge] {
        if !datapaths.contains(&netlab) {
            continue;
        }
        any = true;
        let dnat = TrafficPath::Dnat;
        let fmt = |r: Option<f64>| r.map_or("–".to_owned(), |r| format!("{r:.2}×"));
        let rr = ratio(
            results,
            (netlab, dnat, base),
            (REFERENCE, dnat, base),
            Metric::Rr,
        );
        let crr = ratio(
            results,
            (netlab, dnat, base),
            (REFERENCE, dnat, base),
            Metric::Crr,
        );
        let _ = writeln!(
            out,
            "- {} through the published port: request/response {} iptables (target 1.5×), \
             connection rate {} (target 2×).",
            netlab.label(),
            fmt(rr),
            fmt(crr)
        );
        if datapaths.contains(&Datapath::Direct) {
            let to_direct = |m| {
                ratio(
                    results,
                    (netlab, dnat, base),
                    (Datapath::Direct, TrafficPath::Direct, 0),
                    m,
                )
            };
            let _ = writeln!(
                out,
                "- {} vs the direct veth limit: request/response {}, connection rate {} \
                 (target: within 5%, ≥ 0.95×).",
                netlab.label(),
                fmt(to_direct(Metric::Rr)),
                fmt(to_direct(Metric::Crr))
            );
        }
        if most != base {
            let scale = |m| ratio(results, (netlab, dnat, most), (netlab, dnat, base), m);
            let _ = writeln!(
                out,
                "- {} with {most} published ports vs {base}: request/response {}, connection \
                 rate {} (target: within 3%).",
                netlab.label(),
                fmt(scale(Metric::Rr)),
                fmt(scale(Metric::Crr))
            );
            let add: Vec<f64> = results
                .series(netlab, dnat, Metric::Add, most)
                .iter()
                .map(|(_, v)| *v)
                .collect();
            if let Some(s) = summarize(&add) {
                let _ = writeln!(
                    out,
                    "- {} adding one port with {most} present: {:.0} µs median ({:.0}–{:.0}) \
                     (target: under 100 µs).",
                    netlab.label(),
                    s.median,
                    s.min,
                    s.max
                );
            }
        }
    }
    if !any {
        out.push_str("- no netlab datapath was measured.\n");
    }
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::bench::results::{Meta, Sample, Skipped, Verification};

    pub fn meta() -> Meta {
        Meta {
            mode: "quick".into(),
            started_unix: 0,
            kernel: "6.18".into(),
            cpu_model: "test CPU".into(),
            cpus: 2,
            memory_gib: 24.0,
            command: "cargo xtask bench --quick".into(),
            repetitions: 2,
            warmup_rounds: 1,
            seconds_per_run: 0.5,
            port_counts: vec![1, 1000],
            datapaths: vec![Datapath::IptablesNft, Datapath::Bridge, Datapath::Direct],
            br_netfilter: "br_netfilter on.".into(),
            offloads: "offloads on.".into(),
            pinning: "client CPU 0, server CPU 1.".into(),
            time_wait: "client closes first.".into(),
            flush: "conntrack -F".into(),
            notes: vec![],
        }
    }

    fn sample(
        round: usize,
        datapath: Datapath,
        path: TrafficPath,
        metric: Metric,
        ports: u32,
        value: f64,
    ) -> Sample {
        Sample {
            round,
            warmup: round == 0,
            datapath,
            path,
            metric,
            ports,
            value,
            count: Some(100),
            seconds: Some(0.5),
            cpu_us_per_tx: Some(10.0),
            whole_ms: None,
        }
    }

    /// Two rounds after a warm-up; bridge is exactly 2× iptables in round 1
    /// and 4× in round 2, and the warm-up would be 100× if it counted.
    pub fn results() -> Results {
        let mut samples = Vec::new();
        for (round, factor) in [(0, 100.0), (1, 2.0), (2, 4.0)] {
            for ports in [1, 1000] {
                for metric in [Metric::Rr, Metric::Crr, Metric::Add] {
                    let base = if round == 1 { 1000.0 } else { 2000.0 };
                    samples.push(sample(
                        round,
                        Datapath::IptablesNft,
                        TrafficPath::Dnat,
                        metric,
                        ports,
                        base,
                    ));
                    samples.push(sample(
                        round,
                        Datapath::Bridge,
                        TrafficPath::Dnat,
                        metric,
                        ports,
                        base * factor,
                    ));
                }
            }
            samples.push(sample(
                round,
                Datapath::Direct,
                TrafficPath::Direct,
                Metric::Rr,
                0,
                8000.0,
            ));
        }
        Results {
            meta: meta(),
            skipped: vec![Skipped {
                datapath: Datapath::Redirect,
                reason: "`netlab up --datapath redirect` failed".into(),
            }],
            verifications: vec![Verification {
                round: 1,
                datapath: Datapath::Bridge,
                ports: 1,
                checks: vec!["dnat tcp: server saw 198.18.0.2".into()],
            }],
            samples,
            program_costs: Vec::new(),
        }
    }

    #[test]
    fn cells_are_medians_with_paired_ratios_and_warmup_left_out() {
        let md = markdown(&results());
        // iptables: 1000 and 2000 → median 1500; bridge: 2000 and 8000 → 5000,
        // ratios 2 and 4 → 3.
        assert!(
            md.contains("| 1500 (1000–2000) | 5000 (2000–8000) ×3.00 |"),
            "{md}"
        );
        assert!(md.contains("Skipped netlab redirect"), "{md}");
        assert!(md.contains("TCP crr (conn/s), N = 1000"), "{md}");
        assert!(
            md.contains("netlab bridge through the published port: request/response 3.00×"),
            "{md}"
        );
        // Direct: 8000 vs bridge 2000/8000 → ratios 4 and 1 → 2.5.
        assert!(
            md.contains("vs the direct veth limit: request/response 0.62×"),
            "{md}"
        );
    }

    #[test]
    fn small_ratios_keep_three_digits() {
        assert_eq!(ratio_text(1.234), "1.23");
        assert_eq!(ratio_text(0.001234), "0.00123");
        assert_eq!(ratio_text(0.05), "0.0500");
    }

    #[test]
    fn json_round_trips() {
        let results = results();
        let text = serde_json::to_string(&results).unwrap_or_default();
        let back: Results = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, results);
        assert!(text.contains("\"datapath\":\"iptables-nft\""));
        assert!(text.contains("\"path\":\"east-west\"") || text.contains("\"path\":\"dnat\""));
    }
}
