//! `netlab metrics`: the lab's counters for Prometheus.
//!
//! Each scrape reads the datapath afresh ([`collect`] gives a
//! [`Snapshot`]) and encodes it with `prometheus-client` in the OpenMetrics
//! text format, so nothing is cached between scrapes and the encoding is
//! unit-tested on made-up snapshots without privileges. A client that does
//! not ask for OpenMetrics (curl, `promtool check metrics`) gets the
//! classic text format, the same samples ([`to_classic`]).
//!
//! The HTTP side is deliberately small: one endpoint, answered one
//! connection at a time on a plain `TcpListener` with read and write
//! deadlines, as a scrape target needs nothing more. It listens on loopback
//! unless told otherwise.
//!
//! Metrics (all carry `lab`; counters end in `_total`):
//!
//! | name | type | labels |
//! |---|---|---|
//! | `netlab_lab_up` | gauge | |
//! | `netlab_lab_info` | gauge (1) | `datapath` |
//! | `netlab_iface_packets_total`, `netlab_iface_bytes_total` | counter | `netns`, `iface`, `hook` |
//! | `netlab_nat_events_total` | counter | `reason` |
//! | `netlab_conntrack_entries`, `netlab_conntrack_entries_limit` | gauge | |
//! | `netlab_published_ports` | gauge | |
//! | `netlab_published_port_info` | gauge (1) | `netns`, `proto`, `host_port`, `port` |
//! | `netlab_redirect_decisions_total` | counter | `netns`, `iface`, `reason` |
//! | `netlab_trace_events_total`, `netlab_trace_events_lost_total` | counter | |
//!
//! `netns` is `host` for the namespace netlab runs in.

use std::{
    collections::BTreeMap,
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, Result};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use crate::{
    datapath::{Running, tracing},
    netlink::{self, Counter, LinkCounters},
    pins::Pins,
    state::LabState,
    topology::{Datapath, Iface, Place, PublishedPort},
};

/// Loopback, on a port of its own (node_exporter has 9100).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9478";

/// The exposition's `Content-Type` for a client that asks for OpenMetrics
/// (Prometheus does).
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The classic Prometheus text format, for everyone else (curl, promtool).
pub const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long one client may take to send its request or read the answer.
const CLIENT_DEADLINE: Duration = Duration::from_secs(5);

/// The largest request head read; a scrape's is a few hundred bytes.
const MAX_REQUEST: usize = 8192;

/// One scrape's worth of a lab.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub lab: String,
    /// `None` when the lab is not up: only `netlab_lab_up 0` is exported.
    pub datapath: Option<Datapath>,
    pub ifaces: BTreeMap<Iface, LinkCounters>,
    /// NAT counters by reason (eBPF datapaths).
    pub nat: Vec<(&'static str, u64)>,
    /// Conntrack entries in use and the tables' capacity (eBPF datapaths).
    pub conntrack: Option<(usize, u32)>,
    pub published: Vec<PublishedPort>,
    /// (host-side interface, reason) → packets, for a datapath that makes
    /// forwarding decisions (`redirect`); `None` for the others.
    pub redirect: Option<BTreeMap<(Iface, &'static str), u64>>,
    /// Trace events put on the ring, and lost to a full ring.
    pub trace: Option<(u64, u64)>,
}

/// Reads the lab's counters now. A part of the datapath that is missing
/// (the iptables datapath has no NAT maps) leaves its metrics out.
pub fn collect(lab: &str) -> Result<Snapshot> {
    let Some(record) = LabState::load(lab)? else {
        return Ok(Snapshot {
            lab: lab.to_owned(),
            ..Snapshot::default()
        });
    };
    let topo = record.topology()?;
    let pins = Pins::of(lab);
    let indexes = netlink::lab_indexes(&topo)?;
    let ifaces = netlink::lab_counters(&topo).unwrap_or_default();
    let running = Running::new(&topo, record.iptables);
    let report = running.nat_report();
    let redirect = running.redirects().map(|stats| {
        let host = indexes.get(&Place::Host).cloned().unwrap_or_default();
        let mut by_iface = BTreeMap::new();
        for (name, index) in host {
            for reason in netlab_common::nat::REDIRECT_REASONS {
                if let Some(n) = stats.get(&(index, reason.name())) {
                    let iface = Iface {
                        place: Place::Host,
                        name: name.clone(),
                    };
                    by_iface.insert((iface, reason.name()), *n);
                }
            }
        }
        by_iface
    });
    let trace = tracing::Counts::open(&pins)
        .ok()
        .map(|stats| (stats.emitted(), stats.lost()));
    Ok(Snapshot {
        lab: lab.to_owned(),
        datapath: Some(record.datapath),
        ifaces,
        nat: report.counters,
        conntrack: report.conntrack,
        published: record.published,
        redirect,
        trace,
    })
}

type Labels = Vec<(&'static str, String)>;

impl Snapshot {
    fn labels(&self, more: &[(&'static str, String)]) -> Labels {
        let mut labels = vec![("lab", self.lab.clone())];
        labels.extend_from_slice(more);
        labels
    }

    /// The exposition, as served at `/metrics`.
    pub fn encode(&self) -> Result<String> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.clone()));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .context("encoding the metrics")?;
        Ok(text)
    }
}

fn iface_labels(iface: &Iface) -> [(&'static str, String); 2] {
    [
        ("netns", iface.place.to_string()),
        ("iface", iface.name.clone()),
    ]
}

/// One family: its samples as (labels, value).
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(value: u64) -> ConstCounter<u64> {
    ConstCounter::new(value)
}

fn gauge(value: i64) -> ConstGauge<i64> {
    ConstGauge::new(value)
}

fn to_i64(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut encoder;
        family(
            e,
            "netlab_lab_up",
            "Whether the lab is up (its record exists).",
            MetricType::Gauge,
            [(self.labels(&[]), gauge(i64::from(self.datapath.is_some())))],
        )?;
        let Some(datapath) = self.datapath else {
            return Ok(());
        };
        family(
            e,
            "netlab_lab_info",
            "The lab's datapath (always 1).",
            MetricType::Gauge,
            [(self.labels(&[("datapath", datapath.to_string())]), gauge(1))],
        )?;
        for (name, help, pick) in [
            (
                "netlab_iface_packets",
                "Packets a lab interface received (hook ingress) or sent (hook egress), \
                 as the kernel counts them.",
                (|c: &Counter| c.packets) as fn(&_) -> u64,
            ),
            (
                "netlab_iface_bytes",
                "Bytes a lab interface received (hook ingress) or sent (hook egress), \
                 as the kernel counts them.",
                |c: &Counter| c.bytes,
            ),
        ] {
            family(
                e,
                name,
                help,
                MetricType::Counter,
                self.ifaces.iter().flat_map(|(iface, c)| {
                    [("ingress", &c.ingress), ("egress", &c.egress)].map(|(hook, c)| {
                        let [netns, name] = iface_labels(iface);
                        (
                            self.labels(&[netns, name, ("hook", hook.to_owned())]),
                            counter(pick(c)),
                        )
                    })
                }),
            )?;
        }
        if !self.nat.is_empty() {
            family(
                e,
                "netlab_nat_events",
                "What the eBPF NAT did or refused, by reason (see netlab_common::nat::Stat).",
                MetricType::Counter,
                self.nat.iter().map(|(reason, n)| {
                    (
                        self.labels(&[("reason", (*reason).to_owned())]),
                        counter(*n),
                    )
                }),
            )?;
        }
        if let Some((used, capacity)) = self.conntrack {
            family(
                e,
                "netlab_conntrack_entries",
                "Entries in netlab's conntrack tables (two per flow).",
                MetricType::Gauge,
                [(self.labels(&[]), gauge(to_i64(used)))],
            )?;
            family(
                e,
                "netlab_conntrack_entries_limit",
                "Capacity of netlab's conntrack tables (entries).",
                MetricType::Gauge,
                [(self.labels(&[]), gauge(to_i64(capacity)))],
            )?;
        }
        family(
            e,
            "netlab_published_ports",
            "Published ports in force.",
            MetricType::Gauge,
            [(self.labels(&[]), gauge(to_i64(self.published.len())))],
        )?;
        family(
            e,
            "netlab_published_port_info",
            "A published port: host_port/proto forwards to port in netns (always 1).",
            MetricType::Gauge,
            self.published.iter().map(|p| {
                (
                    self.labels(&[
                        ("netns", p.namespace.clone()),
                        ("proto", p.proto.to_string()),
                        ("host_port", p.host_port.to_string()),
                        ("port", p.port.to_string()),
                    ]),
                    gauge(1),
                )
            }),
        )?;
        if let Some(redirect) = &self.redirect {
            family(
                e,
                "netlab_redirect_decisions",
                "Packets the redirect datapath forwarded itself or left to the stack, by reason.",
                MetricType::Counter,
                redirect.iter().map(|((iface, reason), n)| {
                    let [netns, name] = iface_labels(iface);
                    (
                        self.labels(&[netns, name, ("reason", (*reason).to_owned())]),
                        counter(*n),
                    )
                }),
            )?;
        }
        if let Some((emitted, lost)) = self.trace {
            family(
                e,
                "netlab_trace_events",
                "Trace events put on the ring buffer (while `netlab trace` runs).",
                MetricType::Counter,
                [(self.labels(&[]), counter(emitted))],
            )?;
            family(
                e,
                "netlab_trace_events_lost",
                "Trace events lost to a full ring buffer.",
                MetricType::Counter,
                [(self.labels(&[]), counter(lost))],
            )?;
        }
        Ok(())
    }
}

/// Serves `/metrics` for `lab` on `listen` until the process is stopped.
pub fn serve(lab: &str, listen: SocketAddr) -> Result<()> {
    let listener =
        TcpListener::bind(listen).with_context(|| format!("listening on {listen} for metrics"))?;
    let bound = listener.local_addr()?;
    if !bound.ip().is_loopback() {
        log::warn!("metrics are served beyond this machine, on {bound}");
    }
    eprintln!("netlab metrics: serving lab {lab} on http://{bound}/metrics");
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                log::warn!("accepting a metrics client: {e}");
                continue;
            }
        };
        if let Err(e) = answer(lab, stream) {
            log::warn!("answering a metrics client: {e:#}");
        }
    }
    Ok(())
}

/// Reads one request and answers it; the connection is then closed.
fn answer(lab: &str, mut stream: TcpStream) -> Result<()> {
    stream.set_read_timeout(Some(CLIENT_DEADLINE))?;
    stream.set_write_timeout(Some(CLIENT_DEADLINE))?;
    let head = read_head(&mut stream)?;
    let (status, content_type, body) = match route(&head) {
        Route::Metrics => match collect(lab).and_then(|snapshot| snapshot.encode()) {
            Ok(text) if wants_openmetrics(&head) => ("200 OK", OPENMETRICS, text),
            Ok(text) => ("200 OK", CLASSIC, to_classic(&text)),
            Err(e) => (
                "500 Internal Server Error",
                "text/plain; charset=utf-8",
                format!("netlab: reading lab {lab}: {e:#}\n"),
            ),
        },
        Route::Index => (
            "200 OK",
            "text/plain; charset=utf-8",
            format!("netlab metrics for lab {lab}: GET /metrics\n"),
        ),
        Route::NotFound => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found; the metrics are at /metrics\n".to_owned(),
        ),
        Route::BadMethod => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes())?;
    stream.flush()?;
    Ok(())
}

fn read_head(stream: &mut TcpStream) -> Result<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_REQUEST {
            return Err(io::Error::other("request head over 8 KiB").into());
        }
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// Whether the request's `Accept` header names OpenMetrics.
fn wants_openmetrics(head: &str) -> bool {
    head.lines().any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("accept")
                && value.contains("application/openmetrics-text")
        })
    })
}

/// The classic text format (0.0.4) from OpenMetrics text: a counter
/// family's HELP and TYPE name its samples (`x_total`, not `x`), and there
/// is no `# EOF` or `# UNIT`. The samples are the same.
pub fn to_classic(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::new();
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| Some((p, line.strip_prefix(p)?)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(&name) {
                    "_total"
                } else {
                    ""
                };
                out.push_str(&format!("{prefix}{name}{suffix} {tail}"));
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    Index,
    NotFound,
    BadMethod,
}

/// What a request line asks for (`GET /metrics?x HTTP/1.1`).
fn route(head: &str) -> Route {
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    if method != "GET" && method != "HEAD" {
        return Route::BadMethod;
    }
    match target.split('?').next().unwrap_or("") {
        "/metrics" => Route::Metrics,
        "/" => Route::Index,
        _ => Route::NotFound,
    }
}

#[cfg(test)]
mod tests {

    use crate::netlink::{Counter, LinkCounters};

    use super::*;
    use crate::topology::Proto;

    fn snapshot() -> Snapshot {
        let red = Iface {
            place: Place::Netns("red".into()),
            name: "veth-red".into(),
        };
        let uplink = Iface {
            place: Place::Host,
            name: "nl-uplink".into(),
        };
        let mut ifaces = BTreeMap::new();
        ifaces.insert(
            red,
            LinkCounters {
                ingress: Counter {
                    packets: 3,
                    bytes: 300,
                },
                egress: Counter {
                    packets: 4,
                    bytes: 400,
                },
            },
        );
        let mut redirect = BTreeMap::new();
        redirect.insert((uplink, "redirect_uplink"), 9);
        Snapshot {
            lab: "default".into(),
            datapath: Some(Datapath::Redirect),
            ifaces,
            nat: vec![("dnat_new", 10), ("snat_new", 2)],
            conntrack: Some((4, 65536)),
            published: vec![PublishedPort {
                host_port: 8080,
                proto: Proto::Tcp,
                namespace: "blue".into(),
                port: 80,
                addr: None,
            }],
            redirect: Some(redirect),
            trace: Some((5, 1)),
        }
    }

    #[test]
    fn every_family_with_conventional_names_and_labels() {
        let text = snapshot().encode().unwrap();
        for line in [
            "netlab_lab_up{lab=\"default\"} 1",
            "netlab_lab_info{lab=\"default\",datapath=\"redirect\"} 1",
            "netlab_iface_packets_total{lab=\"default\",netns=\"red\",iface=\"veth-red\",hook=\"ingress\"} 3",
            "netlab_iface_packets_total{lab=\"default\",netns=\"red\",iface=\"veth-red\",hook=\"egress\"} 4",
            "netlab_iface_bytes_total{lab=\"default\",netns=\"red\",iface=\"veth-red\",hook=\"egress\"} 400",
            "netlab_nat_events_total{lab=\"default\",reason=\"snat_new\"} 2",
            "netlab_conntrack_entries{lab=\"default\"} 4",
            "netlab_conntrack_entries_limit{lab=\"default\"} 65536",
            "netlab_published_ports{lab=\"default\"} 1",
            "netlab_published_port_info{lab=\"default\",netns=\"blue\",proto=\"tcp\",host_port=\"8080\",port=\"80\"} 1",
            "netlab_redirect_decisions_total{lab=\"default\",netns=\"host\",iface=\"nl-uplink\",reason=\"redirect_uplink\"} 9",
            "netlab_trace_events_total{lab=\"default\"} 5",
            "netlab_trace_events_lost_total{lab=\"default\"} 1",
            "# TYPE netlab_iface_packets counter",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in:\n{text}"
            );
        }
    }

    #[test]
    fn a_lab_that_is_down_says_so_and_nothing_else() {
        let text = Snapshot {
            lab: "gone".into(),
            ..Snapshot::default()
        }
        .encode()
        .unwrap();
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(samples, ["netlab_lab_up{lab=\"gone\"} 0"], "{text}");
    }

    #[test]
    fn classic_format_names_counters_by_their_samples() {
        let classic = to_classic(&snapshot().encode().unwrap());
        assert!(classic.contains("# TYPE netlab_iface_packets_total counter\n"));
        assert!(classic.contains("# HELP netlab_iface_packets_total Packets a lab interface"));
        assert!(classic.contains("# TYPE netlab_lab_up gauge\n"));
        assert!(!classic.contains("# EOF"));
        assert_eq!(
            classic.lines().filter(|l| !l.starts_with('#')).count(),
            snapshot()
                .encode()
                .unwrap()
                .lines()
                .filter(|l| !l.starts_with('#'))
                .count()
        );
        assert!(wants_openmetrics(
            "GET /metrics HTTP/1.1\r\naccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n"
        ));
        assert!(!wants_openmetrics(
            "GET /metrics HTTP/1.1\r\nAccept: */*\r\n"
        ));
    }

    #[test]
    fn requests_are_routed() {
        assert_eq!(
            route("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics
        );
        assert_eq!(route("GET /metrics?name[]=x HTTP/1.1\r\n"), Route::Metrics);
        assert_eq!(route("GET / HTTP/1.0\r\n"), Route::Index);
        assert_eq!(route("GET /other HTTP/1.1\r\n"), Route::NotFound);
        assert_eq!(route("POST /metrics HTTP/1.1\r\n"), Route::BadMethod);
        assert_eq!(route(""), Route::BadMethod);
    }
}
