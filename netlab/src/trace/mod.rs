//! `netlab trace`: live per-packet events from the datapath's ring buffer.
//!
//! The programs are loaded and attached by `up` (the TC hooks always carry
//! the trace calls; the `skb:kfree_skb`/`skb:consume_skb` tracepoints are
//! attached and pinned by [`install`]). Tracing itself is a switch in the
//! pinned `TRACE_CONFIG` map: this command writes the filter, turns the
//! switch on, reads the ring buffer until stopped, and turns it off again,
//! without reloading anything. `netlab trace --off` turns it off after a
//! reader was killed.
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
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{Array, HashMap, Map, MapData, PerCpuArray, ProgramArray, RingBuf},
    programs::{SchedClassifier, TracePoint, links::FdLink},
};
use netlab_common::{
    names,
    trace::{DEFAULT_RING_BYTES, SNAP_MAX, TRACE_STAT_LOST, TraceConfig},
};

use crate::{datapath::pin_dir, state::LabState, status};

/// Overrides the ring buffer size (bytes) when `up` loads the datapath.
pub const RING_BYTES_ENV: &str = "NETLAB_TRACE_RING_BYTES";

/// The tracepoint programs: (program, category, event).
pub const TRACEPOINTS: [(&str, &str, &str); 2] = [
    (names::TRACE_KFREE_SKB, "skb", "kfree_skb"),
    (names::TRACE_CONSUME_SKB, "skb", "consume_skb"),
];

const TRACEFS: &str = "/sys/kernel/tracing";

/// The ring buffer size for the next load: [`RING_BYTES_ENV`] or the default.
pub fn ring_bytes() -> Result<u32> {
    let Some(value) = std::env::var_os(RING_BYTES_ENV) else {
        return Ok(DEFAULT_RING_BYTES);
    };
    let value = value.to_string_lossy();
    // SAFETY: sysconf has no preconditions.
    let page = u32::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    match value.parse::<u32>() {
        Ok(bytes) if bytes.is_power_of_two() && bytes >= page => Ok(bytes),
        _ => bail!(
            "{RING_BYTES_ENV}={value}: the ring buffer size must be a power of two of at least \
             the page size ({page} bytes)"
        ),
    }
}

fn prog_pin(lab: &str, name: &str) -> PathBuf {
    pin_dir(lab).join("progs").join(name)
}

fn link_pin(lab: &str, name: &str) -> PathBuf {
    pin_dir(lab).join("links").join("trace").join(name)
}

fn map_pin(lab: &str, name: &str) -> PathBuf {
    pin_dir(lab).join("maps").join(name)
}

/// Whether the tracepoint programs are loaded and attached.
pub fn installed(lab: &str) -> bool {
    prog_pin(lab, names::TRACE_HOP).exists()
        && TRACEPOINTS
            .iter()
            .all(|(name, _, _)| prog_pin(lab, name).exists() && link_pin(lab, name).exists())
}

/// Mounts tracefs on /sys/kernel/tracing when it is not there (a fresh
/// mount namespace, a minimal host): tracepoints are found through it.
fn ensure_tracefs() -> Result<()> {
    if Path::new(TRACEFS).join("events").is_dir() {
        return Ok(());
    }
    crate::netns::mount(c"tracefs", Path::new(TRACEFS), c"tracefs", 0)
        .with_context(|| format!("mounting tracefs on {TRACEFS}"))?;
    log::info!("mounted tracefs on {TRACEFS}");
    Ok(())
}

/// Loads and pins `trace_hop` and puts it in the `TRACE_PROGS` slot the
/// TC programs tail-call, then loads, pins and attaches the tracepoint
/// programs (called by the datapath loader with a freshly loaded object).
/// Kernel drops are an extra: when the tracepoints cannot be attached, `up`
/// goes on and says so.
pub fn install(ebpf: &mut Ebpf, lab: &str) -> Result<()> {
    let hop_pin = prog_pin(lab, names::TRACE_HOP);
    let hop_fd = if hop_pin.exists() {
        SchedClassifier::from_pin(&hop_pin)
            .with_context(|| format!("opening pinned program {}", hop_pin.display()))?
            .fd()?
            .try_clone()?
    } else {
        let Some(program) = ebpf.program_mut(names::TRACE_HOP) else {
            bail!("the eBPF object has no program {}", names::TRACE_HOP);
        };
        let program: &mut SchedClassifier = program.try_into()?;
        program
            .load()
            .with_context(|| format!("loading program {} (verifier)", names::TRACE_HOP))?;
        program
            .pin(&hop_pin)
            .with_context(|| format!("pinning {}", hop_pin.display()))?;
        program.fd()?.try_clone()?
    };
    let Some(slots) = ebpf.map_mut(names::TRACE_PROGS) else {
        bail!("the eBPF object has no map {}", names::TRACE_PROGS);
    };
    let mut slots: ProgramArray<&mut MapData> = ProgramArray::try_from(slots)?;
    slots
        .set(0, &hop_fd, 0)
        .with_context(|| format!("installing {} in {}", names::TRACE_HOP, names::TRACE_PROGS))?;
    for (name, category, event) in TRACEPOINTS {
        let pin = prog_pin(lab, name);
        let link = link_pin(lab, name);
        let Some(program) = ebpf.program_mut(name) else {
            bail!("the eBPF object has no program {name}");
        };
        let program: &mut TracePoint = program.try_into()?;
        if !pin.exists() {
            program
                .load()
                .with_context(|| format!("loading program {name} (verifier)"))?;
            program
                .pin(&pin)
                .with_context(|| format!("pinning {}", pin.display()))?;
        }
        if link.exists() {
            continue;
        }
        let attached = ensure_tracefs().and_then(|()| {
            let id = program
                .attach(category, event)
                .with_context(|| format!("attaching {name} to {category}:{event}"))?;
            let fd_link: FdLink = program.take_link(id)?.try_into()?;
            if let Some(parent) = link.parent() {
                fs::create_dir_all(parent)?;
            }
            fd_link
                .pin(&link)
                .with_context(|| format!("pinning {}", link.display()))?;
            Ok(())
        });
        if let Err(err) = attached {
            log::warn!("`netlab trace` will not show kernel drops: {err:#}");
        }
    }
    Ok(())
}

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
}

/// What a finished trace saw.
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    pub events: u64,
    pub lost: u64,
    pub malformed: u64,
    pub packets_written: u64,
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

/// Where the kfree_skb record keeps `reason` on this kernel.
fn kfree_reason_offset() -> Option<u32> {
    let format = fs::read_to_string(Path::new(TRACEFS).join("events/skb/kfree_skb/format")).ok()?;
    let line = format.lines().find(|l| l.contains(" reason;"))?;
    let offset = line.split("offset:").nth(1)?.split(';').next()?;
    offset.trim().parse().ok()
}

fn kfree_protocol_offset() -> Option<u32> {
    let format = fs::read_to_string(Path::new(TRACEFS).join("events/skb/kfree_skb/format")).ok()?;
    let line = format.lines().find(|l| l.contains(" protocol;"))?;
    let offset = line.split("offset:").nth(1)?.split(';').next()?;
    offset.trim().parse().ok()
}

fn open_map(lab: &str, name: &str) -> Result<MapData> {
    let pin = map_pin(lab, name);
    MapData::from_pin(&pin).with_context(|| {
        format!(
            "opening {} (is the lab up, and was it brought up by a netlab with tracing?)",
            pin.display()
        )
    })
}

fn config_map(lab: &str) -> Result<Array<MapData, TraceConfig>> {
    Ok(Array::try_from(Map::Array(open_map(
        lab,
        names::TRACE_CONFIG,
    )?))?)
}

/// Turns tracing off (`netlab trace --off`).
pub fn switch_off(lab: &str) -> Result<()> {
    let mut config = config_map(lab)?;
    let mut value = config.get(&0, 0)?;
    value.enabled = 0;
    config.set(0, value, 0)?;
    Ok(())
}

/// Turns tracing on while alive; off when dropped, whatever happened.
struct Switch {
    config: Array<MapData, TraceConfig>,
    value: TraceConfig,
    on: bool,
}

impl Switch {
    fn on(mut config: Array<MapData, TraceConfig>, value: TraceConfig) -> Result<Switch> {
        config.set(0, value, 0).context("enabling tracing")?;
        Ok(Switch {
            config,
            value,
            on: true,
        })
    }

    fn off(&mut self) -> Result<()> {
        if !self.on {
            return Ok(());
        }
        let off = TraceConfig {
            enabled: 0,
            ..self.value
        };
        self.config
            .set(0, off, 0)
            .context("switching tracing off; run `netlab trace --off`")?;
        self.on = false;
        Ok(())
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        if let Err(err) = self.off() {
            eprintln!("netlab trace: {err:#}");
        }
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

/// CLOCK_REALTIME − CLOCK_MONOTONIC (the programs' clock), in ns.
fn realtime_offset_ns() -> i128 {
    let now = |clock| {
        // SAFETY: clock_gettime fills the zeroed struct.
        let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointer to a local.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
    };
    now(libc::CLOCK_REALTIME) - now(libc::CLOCK_MONOTONIC)
}

fn lost_total(stats: &PerCpuArray<MapData, u64>) -> u64 {
    stats
        .get(&TRACE_STAT_LOST, 0)
        .map(|per_cpu| per_cpu.iter().sum())
        .unwrap_or(0)
}

/// How long a journey must be quiet before the human output prints it.
const QUIET: Duration = Duration::from_millis(100);

enum Sink {
    Human(output::Grouper),
    Json,
    Pcapng {
        writer: pcapng::PcapngWriter<BufWriter<fs::File>>,
        ids: BTreeMap<u32, u32>,
        hops: BTreeMap<u64, u32>,
        snaplen: u32,
    },
}

/// Runs `netlab trace` until a signal, `--count` events or `--duration`.
pub fn run(options: &Options) -> Result<Summary> {
    let lab = crate::state::resolve_lab(options.lab.as_deref())?;
    let record = LabState::load(&lab)?.with_context(|| format!("lab `{lab}` is not up"))?;
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
    let lab_status = status::collect(&record)?;
    let mut names = filter::Names::default();
    names.netns.insert("host".to_owned(), 0);
    for (i, ns) in record.namespaces.iter().enumerate() {
        names.netns.insert(ns.clone(), i as u32 + 1);
    }
    let mut ctx = output::Context {
        realtime_offset_ns: realtime_offset_ns(),
        color: !options.json
            && io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none(),
        ..output::Context::default()
    };
    let mut places: BTreeMap<u32, u32> = BTreeMap::new();
    for place in &lab_status.places {
        let place_id = names.netns.get(&place.place).copied().unwrap_or(0);
        for link in &place.links {
            let Some(index) = link.index else { continue };
            names
                .ifaces
                .insert((place.place.clone(), link.name.clone()), index);
            ctx.ifaces
                .insert(index, (place.place.clone(), link.name.clone()));
            if link.name != "lo" {
                places.insert(index, place_id);
            }
        }
    }
    let expr = build_filter(options)?;
    let compiled = filter::compile(expr.as_ref(), &names)?;
    if let Ok(btf) = fs::read(btf::VMLINUX) {
        ctx.kernel_reasons = btf::enum_values(&btf, "skb_drop_reason", "SKB_DROP_REASON_");
    }

    // The datapath's maps.
    let mut filter_map: Array<MapData, netlab_common::trace::Filter> =
        Array::try_from(Map::Array(open_map(&lab, names::TRACE_FILTER)?))?;
    filter_map.set(0, compiled, 0)?;
    let mut iface_map: HashMap<MapData, u32, u32> =
        HashMap::try_from(Map::HashMap(open_map(&lab, names::TRACE_IFACES)?))?;
    for (ifindex, place) in &places {
        iface_map.insert(ifindex, place, 0)?;
    }
    let stats: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(open_map(&lab, names::TRACE_STATS)?))?;
    let mut ring = RingBuf::try_from(Map::RingBuf(open_map(&lab, names::TRACE_EVENTS)?))?;
    if !installed(&lab) {
        eprintln!(
            "netlab trace: the kernel-drop tracepoints are not attached (see `netlab up -v`); \
             drops by the kernel will not show"
        );
    }

    let mut sink = match &options.pcapng {
        Some(path) => {
            let file =
                fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
            let mut writer = pcapng::PcapngWriter::new(BufWriter::new(file))?;
            let mut ids = BTreeMap::new();
            for (index, (place, iface)) in &ctx.ifaces {
                if iface == "lo" {
                    continue;
                }
                let id = writer.interface(
                    &format!("{place}/{iface}"),
                    &format!("netlab lab {lab}, ifindex {index}"),
                    SNAP_MAX as u32,
                )?;
                ids.insert(*index, id);
            }
            Sink::Pcapng {
                writer,
                ids,
                hops: BTreeMap::new(),
                snaplen: options.snaplen,
            }
        }
        None if options.json => Sink::Json,
        None => Sink::Human(output::Grouper::default()),
    };

    catch_signals();
    let lost_at_start = lost_total(&stats);
    let config = TraceConfig {
        enabled: 1,
        sample_every: sample,
        snaplen: options.snaplen,
        kfree_protocol_off: kfree_protocol_offset().unwrap_or(32),
        kfree_reason_off: kfree_reason_offset().unwrap_or(36),
        _pad: 0,
    };
    let mut switch = Switch::on(config_map(&lab)?, config)?;
    eprintln!(
        "netlab trace: tracing lab {lab}{}; Ctrl-C to stop",
        match &expr {
            Some(_) => format!(" (filter: {})", filter_text(options)),
            None => String::new(),
        }
    );

    let started = Instant::now();
    let mut summary = Summary::default();
    let mut reported_lost = 0;
    let stdout = io::stdout();
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
            // SAFETY: one valid pollfd; EINTR (a signal) just loops.
            unsafe { libc::poll(&mut pfd, 1, 100) };
        }
        let now = Instant::now();
        while let Some(item) = ring.next() {
            match output::decode(&item) {
                Some(event) => {
                    summary.events += 1;
                    emit(&mut sink, &mut out, event, &mut ctx, now)?;
                }
                None => summary.malformed += 1,
            }
            if options.count.is_some_and(|c| summary.events >= c) {
                break;
            }
        }
        let lost = lost_total(&stats).saturating_sub(lost_at_start);
        if lost > reported_lost {
            let new = lost - reported_lost;
            reported_lost = lost;
            match &sink {
                Sink::Json => writeln!(out, "{}", output::lost_json(new, lost))?,
                Sink::Human(_) => writeln!(
                    out,
                    "!! {new} events lost (ring buffer full; {lost} in total)"
                )?,
                Sink::Pcapng { .. } => {
                    eprintln!("netlab trace: {new} events lost (ring buffer full; {lost} in total)")
                }
            }
        }
        if let Sink::Human(grouper) = &mut sink {
            let quiet = if stopping { Duration::ZERO } else { QUIET };
            for journey in grouper.take_quiet(now, quiet) {
                write!(out, "{}", output::render_journey(&journey, &ctx))?;
            }
        }
        out.flush()?;
        if stopping {
            break;
        }
    }
    switch.off()?;
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

fn emit(
    sink: &mut Sink,
    out: &mut impl Write,
    event: output::Event,
    ctx: &mut output::Context,
    now: Instant,
) -> Result<()> {
    if !event.is_hop() && ctx.symbols.is_none() {
        ctx.symbols = Some(output::load_symbols());
    }
    match sink {
        Sink::Human(grouper) => grouper.push(event, now),
        Sink::Json => writeln!(out, "{}", output::event_json(&event, ctx))?,
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
                output::action_text(&event, ctx)
            );
            writer.packet(id, ctx.epoch_ns(h.ts_ns), &event.data, h.skb_len, &comment)?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
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
