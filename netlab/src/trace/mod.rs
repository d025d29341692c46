//! `netlab trace`: live per-packet events from the session's ring buffer.
//!
//! `up` attaches the NAT programs, which carry a tail call into the
//! `TRACE_PROGS` slot, empty until somebody traces. This command loads
//! `trace_hop`, the watching programs for the veth ends without a NAT
//! program, and the fate probes, all with the filter compiled in
//! ([`tracing::start`]),
//! puts `trace_hop` in the slot and the watchers on their hooks, turns the
//! switch in the pinned `TRACE_CONFIG` map on, reads the ring buffer until
//! stopped, then turns the switch off and removes what it loaded. `netlab
//! trace --off` (and the next `netlab trace`, and `down`) clean up after a
//! reader that was killed.
//!
//! The reader allocates nothing per event: records are decoded in place
//! and formatted into one reused buffer that is written out in large
//! batches.
//!
//! - [`filter`]: the tcpdump-like expression and its compilation;
//! - [`output`]: decoding, human and JSON forms;
//! - [`pcapng`]: the capture file writer;
//! - [`btf`]: the kernel's drop reason names.

pub mod btf;
pub mod filter;
pub mod output;
pub mod pcapng;

use std::{
    collections::BTreeMap,
    fs,
    io::{self, BufWriter, IsTerminal as _, Write},
    os::fd::{AsFd as _, AsRawFd as _},
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use netlab_common::trace::{READER_POLL_MS, SNAP_MAX, TraceConfig, wakeup_bytes};
use serde::{Deserialize, Serialize};

use crate::{
    datapath::{
        EarlyLoader,
        tracing::{self, Switch},
    },
    netlink,
    pins::Pins,
    state::{self, LabState},
    sys,
};

/// Raw options of `netlab trace`, from the command line.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub lab: Option<String>,
    /// Expression words, joined.
    pub expression: String,
    pub netns: Vec<String>,
    pub ifaces: Vec<String>,
    pub json: bool,
    pub pcapng: Option<PathBuf>,
    /// `1/N`.
    pub sample: Option<String>,
    pub snaplen: u32,
    pub count: Option<u64>,
    pub duration: Option<Duration>,
    /// Say when tracing starts, and what the session saw, as [`Notice`]
    /// JSON lines on stderr instead of sentences (for programs: the bench).
    pub notices_json: bool,
}

/// What a finished trace saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub events: u64,
    pub lost: u64,
    pub malformed: u64,
    pub packets_written: u64,
}

/// A session that has started tracing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    pub lab: String,
    /// The filter, as given; `None` traces every packet.
    pub filter: Option<String>,
    /// trace_hop's load time, the verifier's work included (µs).
    pub hop_load_us: u64,
    /// Why kernel drops and deliveries will not show, if they will not.
    pub fates_missing: Option<String>,
}

/// What `netlab trace --notices-json` says on stderr, one JSON object per
/// line: the contract the bench reads (the sentences are for people, and
/// may change).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "notice", rename_all = "snake_case")]
pub enum Notice {
    Started(Started),
    Summary(Summary),
}

impl Notice {
    /// The notice as one JSON line.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

fn parse_sample(text: &str) -> Result<u32> {
    let n = text.strip_prefix("1/").unwrap_or(text);
    match n.parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => bail!("--sample {text}: expected 1/N with N ≥ 1 (e.g. 1/100)"),
    }
}

/// The user's filter: the expression and the `--netns`/`--iface` flags,
/// all of which must hold.
fn build_filter(options: &Options) -> Result<Option<filter::Expr>> {
    use filter::{Expr, Primitive};
    let mut terms: Vec<Expr> = filter::parse(&options.expression)?.into_iter().collect();
    // Several namespaces: any of them.
    let any_netns = options
        .netns
        .iter()
        .map(|ns| Expr::Prim(Primitive::Netns(ns.clone())))
        .reduce(|a, b| Expr::Or(Box::new(a), Box::new(b)));
    terms.extend(any_netns);
    terms.extend(
        options
            .ifaces
            .iter()
            .map(|iface| Expr::Prim(Primitive::Iface(iface.clone()))),
    );
    Ok(terms.into_iter().reduce(Expr::and))
}

/// Turns tracing off, empties the `trace_hop` slot and removes the
/// watching programs' filters (`netlab trace --off`, after a reader was
/// killed).
pub fn switch_off(lab: &str) -> Result<()> {
    // A live session is not torn down under its reader.
    let _session = state::TraceLock::acquire(lab)?;
    let pins = Pins::of(lab);
    tracing::switch_off(&pins)?;
    // Without its record the lab's interfaces are unknown: their filters
    // go with them at `down`.
    match LabState::load(lab)? {
        Some(record) => tracing::stop(&pins, &tracing::watch(&record.topology()?)),
        None => tracing::stop(&pins, &tracing::Watch::none()),
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn catch_signals() {
    let handler = on_signal as extern "C" fn(libc::c_int);
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe {
            libc::signal(signal, handler as libc::sighandler_t);
        }
    }
}

/// How long a journey must be quiet before the human output prints it.
const QUIET: Duration = Duration::from_millis(100);

/// Formatted output is written when this much has gathered (and at the end
/// of every drained batch).
const WRITE_BATCH: usize = 256 << 10;

enum Sink {
    Text(output::TextSink),
    Pcapng {
        writer: pcapng::PcapngWriter<BufWriter<fs::File>>,
        ids: BTreeMap<u32, u32>,
        hops: BTreeMap<u64, u32>,
        snaplen: u32,
    },
}

/// Runs `netlab trace` until a signal, `--count` events or `--duration`.
pub fn run(options: &Options) -> Result<Summary> {
    // Its BTF parse runs beside the netlink dump and the filter's compiling.
    let early = EarlyLoader::start();
    let lab = state::resolve_lab(options.lab.as_deref())?;
    // Checked before anything changes.
    let ring_bytes = tracing::ring_bytes()?;
    let _session = state::TraceLock::acquire(&lab)?;
    let pins = Pins::of(&lab);
    let record = LabState::require(&lab)?;
    let sample = match &options.sample {
        Some(text) => parse_sample(text)?,
        None => 1,
    };
    if options.snaplen as usize > SNAP_MAX {
        bail!(
            "--snaplen {}: events carry at most {SNAP_MAX} bytes of packet",
            options.snaplen
        );
    }

    // Names: the lab's interfaces and namespaces, as they are now.
    let topo = record.topology()?;
    let lab_ifaces = netlink::lab_indexes(&topo)?;
    let mut names = filter::Names::default();
    names.netns.insert("host".to_owned(), 0);
    for (i, ns) in record.namespaces.iter().enumerate() {
        names.netns.insert(ns.clone(), i as u32 + 1);
    }
    let mut ctx = output::Context::default();
    ctx.realtime_offset_ns = sys::realtime_offset_ns();
    ctx.color =
        !options.json && io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let mut places: BTreeMap<u32, u32> = BTreeMap::new();
    for (place, links) in &lab_ifaces {
        let place = place.to_string();
        let place_id = names.netns.get(&place).copied().unwrap_or(0);
        for (name, index) in links {
            names.ifaces.insert((place.clone(), name.clone()), *index);
            ctx.add_iface(*index, &place, name);
            if name != "lo" {
                places.insert(*index, place_id);
            }
        }
    }
    // Pods' host ends (CNI): on the host, where their programs run.
    for pod in record.pods.iter().filter(|p| p.host_ifindex != 0) {
        let (index, name) = (pod.host_ifindex, &pod.host_veth);
        names
            .ifaces
            .insert(("host".to_owned(), name.clone()), index);
        ctx.add_iface(index, "host", name);
        places.insert(index, 0);
    }
    let expr = build_filter(options)?;
    let compiled = filter::compile(expr.as_ref(), &names)?;

    // The datapath's maps.
    tracing::set_places(&pins, &places)?;
    let stats = tracing::Counts::open(&pins)?;
    // No journey of this session is live yet (see TRACE_LIVE).
    tracing::reset_journeys(&pins)?;
    // A killed reader may have left tracing on: start from a clean slot.
    let watch = tracing::watch(&topo);
    tracing::stop(&pins, &watch)?;
    let mut session = tracing::start(&pins, &compiled, &watch, ring_bytes, early)?;
    let mut ring = session.take_events()?;
    log::info!(
        "{} loaded in {:.1} ms (verifier included)",
        netlab_common::names::TRACE_HOP,
        session.hop_load.as_secs_f64() * 1e3
    );
    if let (Some(why), false) = (&session.fates_missing, options.notices_json) {
        eprintln!("netlab trace: kernel drops and deliveries will not show: {why}");
    }

    let mut sink = match &options.pcapng {
        Some(path) => {
            let file =
                fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
            let mut writer = pcapng::PcapngWriter::new(BufWriter::new(file))?;
            let mut ids = BTreeMap::new();
            for (index, names) in ctx.ifaces() {
                if names.name == "lo" {
                    continue;
                }
                let id = writer.interface(
                    &format!("{}/{}", names.place, names.name),
                    &format!("netlab lab {lab}, ifindex {index}"),
                    SNAP_MAX as u32,
                )?;
                ids.insert(index, id);
            }
            Sink::Pcapng {
                writer,
                ids,
                hops: BTreeMap::new(),
                snaplen: options.snaplen,
            }
        }
        None => Sink::Text(output::TextSink::new(options.json)),
    };

    catch_signals();
    let lost_at_start = stats.lost();
    let config = TraceConfig {
        enabled: 1,
        sample_every: sample,
        // Only pcapng shows packet bytes: the text forms take header-only
        // records (no copy, three times as many fit in the ring).
        snaplen: if options.pcapng.is_some() {
            options.snaplen
        } else {
            0
        },
        kfree_protocol_off: sys::tracepoint_field_offset("skb", "kfree_skb", "protocol")
            .unwrap_or(32),
        kfree_reason_off: sys::tracepoint_field_offset("skb", "kfree_skb", "reason").unwrap_or(36),
        skb_cloned_bit: fs::read(btf::VMLINUX)
            .ok()
            .and_then(|btf| btf::member_bit_offset(&btf, "sk_buff", "cloned"))
            .unwrap_or(0),
        wakeup_bytes: wakeup_bytes(ring_bytes),
        _pad: 0,
    };
    let mut switch = Switch::on(&pins, config)?;
    if options.notices_json {
        let started = Started {
            lab: lab.clone(),
            filter: expr.as_ref().map(|_| filter_text(options)),
            hop_load_us: u64::try_from(session.hop_load.as_micros()).unwrap_or(u64::MAX),
            fates_missing: session.fates_missing.clone(),
        };
        eprintln!("{}", Notice::Started(started).to_line());
    } else {
        eprintln!(
            "netlab trace: tracing lab {lab}{}; Ctrl-C to stop",
            match &expr {
                Some(_) => format!(" (filter: {})", filter_text(options)),
                None => String::new(),
            }
        );
    }

    let started = Instant::now();
    let mut summary = Summary::default();
    let mut reported_lost = 0;
    let stdout = io::stdout();
    if let Some(bytes) = sys::widen_pipe(stdout.as_fd()) {
        log::debug!("stdout is a pipe of {bytes} bytes");
    }
    let mut out = stdout.lock();
    let fd = ring.as_raw_fd();
    let mut stopping = false;
    loop {
        let done = STOP.load(Ordering::Relaxed)
            || options.duration.is_some_and(|d| started.elapsed() >= d)
            || options.count.is_some_and(|c| summary.events >= c);
        if done && !stopping {
            // Switch off first, then drain what is already in the ring.
            stopping = true;
            switch.off()?;
        }
        if !stopping {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // The kernel wakes the reader only once a batch has gathered
            // (TraceConfig::wakeup_bytes); a quiet ring is looked at every
            // READER_POLL_MS. SAFETY: one valid pollfd; EINTR (a signal)
            // just loops.
            unsafe { libc::poll(&mut pfd, 1, READER_POLL_MS as libc::c_int) };
        }
        let now = Instant::now();
        while let Some(item) = ring.next() {
            match output::decode(&item) {
                Some(event) => {
                    summary.events += 1;
                    emit(&mut sink, &event, &mut ctx, now)?;
                }
                None => summary.malformed += 1,
            }
            drop(item);
            if let Sink::Text(text) = &mut sink
                && text.buf.len() >= WRITE_BATCH
            {
                out.write_all(&text.buf)?;
                text.buf.clear();
            }
            if options.count.is_some_and(|c| summary.events >= c) {
                break;
            }
        }
        let lost = stats.lost().saturating_sub(lost_at_start);
        if lost > reported_lost {
            let new = lost - reported_lost;
            reported_lost = lost;
            match &mut sink {
                Sink::Text(text) => text.lost(new, lost),
                Sink::Pcapng { .. } => {
                    eprintln!("netlab trace: {new} events lost (ring buffer full; {lost} in total)")
                }
            }
        }
        if let Sink::Text(text) = &mut sink {
            let quiet = if stopping { Duration::ZERO } else { QUIET };
            text.end_batch(&ctx, now, quiet);
            if !text.buf.is_empty() {
                out.write_all(&text.buf)?;
                text.buf.clear();
            }
        }
        out.flush()?;
        if stopping {
            break;
        }
    }
    switch.off()?;
    drop(session);
    summary.lost = reported_lost;
    if let Sink::Pcapng { mut writer, .. } = sink {
        writer.flush()?;
        summary.packets_written = writer.packets();
    }
    Ok(summary)
}

fn filter_text(options: &Options) -> String {
    let mut parts = Vec::new();
    if !options.expression.trim().is_empty() {
        parts.push(options.expression.trim().to_owned());
    }
    if !options.netns.is_empty() {
        let any: Vec<String> = options
            .netns
            .iter()
            .map(|ns| format!("netns {ns}"))
            .collect();
        parts.push(if any.len() == 1 {
            any.join("")
        } else {
            format!("({})", any.join(" or "))
        });
    }
    for iface in &options.ifaces {
        parts.push(format!("iface {iface}"));
    }
    parts.join(" and ")
}

/// Names for kernel events, read on the first one (startup stays fast).
fn load_kernel_names(ctx: &mut output::Context) {
    if ctx.symbols.is_some() {
        return;
    }
    ctx.symbols = Some(output::load_symbols());
    if let Ok(btf) = fs::read(btf::VMLINUX) {
        ctx.kernel_reasons = btf::enum_values(&btf, "skb_drop_reason", "SKB_DROP_REASON_");
    }
}

fn emit(
    sink: &mut Sink,
    event: &output::Event,
    ctx: &mut output::Context,
    now: Instant,
) -> Result<()> {
    if !event.is_hop() {
        load_kernel_names(ctx);
    }
    match sink {
        Sink::Text(text) => text.push(event, ctx, now),
        Sink::Pcapng {
            writer,
            ids,
            hops,
            snaplen,
        } => {
            let h = event.header;
            let hop = hops.entry(h.trace_id).or_insert(0);
            *hop += 1;
            if !event.is_hop() {
                // Kernel drops carry no packet: they show in the comment
                // of nothing; the human and JSON forms have them.
                return Ok(());
            }
            let id = match ids.get(&h.ifindex) {
                Some(id) => *id,
                None => {
                    let id = writer.interface(&ctx.iface_name(h.ifindex), "", *snaplen)?;
                    ids.insert(h.ifindex, id);
                    id
                }
            };
            let hook = netlab_common::trace::Hook::from_u8(h.hook)
                .map_or("?", netlab_common::trace::Hook::direction);
            let comment = format!(
                "trace {} hop {} {} {hook}: {}",
                output::trace_id(h.trace_id),
                hop,
                ctx.iface_name(h.ifindex),
                output::action_text(event, ctx)
            );
            writer.packet(id, ctx.epoch_ns(h.ts_ns), event.data, h.skb_len, &comment)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_rates() {
        assert_eq!(parse_sample("1/100").unwrap(), 100);
        assert_eq!(parse_sample("1/1").unwrap(), 1);
        assert_eq!(parse_sample("7").unwrap(), 7);
        assert!(parse_sample("1/0").is_err());
        assert!(parse_sample("2/3").is_err());
    }

    #[test]
    fn flags_join_the_expression() {
        let options = Options {
            expression: "icmp".into(),
            netns: vec!["red".into(), "blue".into()],
            ifaces: vec!["veth-red".into()],
            ..Options::default()
        };
        let expr = build_filter(&options).unwrap().unwrap();
        let text = format!("{expr:?}");
        assert!(text.contains("Netns(\"red\")") && text.contains("Iface(\"veth-red\")"));
        assert_eq!(
            filter_text(&options),
            "icmp and (netns red or netns blue) and iface veth-red"
        );
    }
}
