//! Harness for netlab's privileged integration tests.
//!
//! Every test drives netlab inside its own [`Sandbox`]: a private mount and
//! network namespace kept alive by a holder process. Inside it, `/run`
//! (hence `/run/netns` and `/run/netlab`) is a fresh tmpfs and `/sys/fs/bpf`
//! a fresh bpffs, so the default lab's names (`red`, `v-net-0`, ...) never
//! meet a user's lab or another test's. Cleanup does not depend on the test
//! passing: when the holder, the last process of the mount namespace, dies,
//! the kernel takes the namespaces, links and pins with it.
//!
//! Commands reach the sandbox through `nsenter -t HOLDER -m -n`, and every
//! command runs under a deadline, so a hung `ip` or `netlab` fails the test
//! instead of hanging it.

use std::{
    collections::BTreeMap,
    env, fmt, fs,
    io::{self, BufRead as _, BufReader, Read, Write as _},
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

pub mod default_lab;
pub mod exposition;
pub mod frames;
pub mod scripts;

use anyhow::{Context as _, Result, anyhow, bail, ensure};
pub use netlab::status::{HookStatus, LabStatus, LinkStatus};
use serde_json::Value;

pub mod conformance;

/// Where `cargo xtask test` puts the netlab binary it built with the eBPF
/// object embedded.
pub const NETLAB_BIN_ENV: &str = "NETLAB_BIN";

/// netlab's crash hook: `up` aborts right after its N-th kernel change.
pub const FAULT_ENV: &str = "NETLAB_FAULT_AFTER_STEPS";

/// Generous for a 2-core CI machine running two labs at once; `up` takes
/// about half a second.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the holder gets to set the sandbox up and say "ready".
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long to wait for a finished command's output pipes to close. Only a
/// descendant that left the process group can keep them open that long.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs as the holder inside the new namespaces. It ends in `cat` reading
/// the pipe the test holds: if the test process dies without dropping its
/// [`Sandbox`] (SIGKILL, abort), the pipe closes and the holder goes too.
const HOLDER_SCRIPT: &str = "set -e
mount -t tmpfs -o mode=0755 netlab-sandbox /run
mount -t bpf bpf /sys/fs/bpf
ip link set lo up
echo ready
exec cat >/dev/null";

static SANDBOX_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The netlab binary under test: `$NETLAB_BIN`, else the workspace's
/// `target/debug/netlab`.
pub fn netlab_bin() -> Result<PathBuf> {
    let (path, origin) = match env::var_os(NETLAB_BIN_ENV) {
        Some(path) => (PathBuf::from(path), format!("${NETLAB_BIN_ENV}")),
        None => {
            let target = match env::var_os("CARGO_TARGET_DIR") {
                Some(dir) => PathBuf::from(dir),
                None => workspace_root().join("target"),
            };
            (
                target.join("debug").join("netlab"),
                format!("the default (set ${NETLAB_BIN_ENV} to override)"),
            )
        }
    };
    // Commands run through `nsenter -m`, which leaves the working directory
    // at the sandbox's root: only an absolute path survives.
    fs::canonicalize(&path).with_context(|| {
        format!(
            "netlab binary {} from {origin} does not exist; build it with its eBPF object \
             (`cargo xtask build`) or run the tests through `cargo xtask test`",
            path.display()
        )
    })
}

fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map_or_else(|| manifest_dir.to_path_buf(), Path::to_path_buf)
}

/// Privileged tests must fail, not pass vacuously, when run without root.
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    ensure!(
        euid == 0,
        "this privileged test needs root (it creates namespaces, links and eBPF programs) but \
         runs as uid {euid}; run it through `cargo xtask test`, or as root with \
         `cargo test -p netlab-tests -- --include-ignored`"
    );
    Ok(())
}

/// A private mount + network namespace, alive as long as this guard.
pub struct Sandbox {
    label: String,
    netlab: PathBuf,
    holder: Child,
    /// The holder's stdin: closing it ends the holder.
    keepalive: Option<ChildStdin>,
}

impl Sandbox {
    pub fn new() -> Result<Self> {
        require_root()?;
        let netlab = netlab_bin()?;
        let label = format!(
            "sandbox-{}-{}",
            std::process::id(),
            SANDBOX_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut holder = Command::new("unshare")
            .args(["--mount", "--net", "--propagation", "private", "--"])
            .args(["sh", "-c", HOLDER_SCRIPT])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("{label}: cannot start `unshare` (util-linux)"))?;
        let keepalive = holder.stdin.take();
        let stdout = holder.stdout.take();
        let stderr = holder.stderr.take();

        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let read = match stdout {
                Some(out) => BufReader::new(out).read_line(&mut line).map(|_| line),
                None => Err(io::Error::other("no stdout pipe")),
            };
            let _ = tx.send(read);
        });
        let answer = rx.recv_timeout(READY_TIMEOUT);
        if let Ok(Ok(line)) = &answer {
            if line.trim() == "ready" {
                let sandbox = Self {
                    label,
                    netlab,
                    holder,
                    keepalive,
                };
                // The holder's stderr stays quiet from here on; a thread
                // drains it so a stray message cannot block the holder.
                if let Some(err) = stderr {
                    thread::spawn(move || drain(err));
                }
                return Ok(sandbox);
            }
        }
        // Never became ready: kill it (by pid) and report why.
        let _ = holder.kill();
        let status = holder.wait();
        let stderr = stderr.map(drain).unwrap_or_default();
        let got = match answer {
            Ok(Ok(line)) if line.is_empty() => "its output ended".to_owned(),
            Ok(Ok(line)) => format!("it printed {line:?}"),
            Ok(Err(e)) => format!("reading its output failed: {e}"),
            Err(_) => format!("nothing within {READY_TIMEOUT:?}"),
        };
        bail!(
            "{label}: the sandbox holder did not get ready ({got}; exit: {}).\nstderr:\n{}",
            status.map_or_else(|e| e.to_string(), describe_status),
            stderr.trim_end()
        )
    }

    /// A unique name for messages: `sandbox-<test pid>-<counter>`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The holder's pid, for `nsenter -t`.
    pub fn pid(&self) -> u32 {
        self.holder.id()
    }

    pub fn netlab_path(&self) -> &Path {
        &self.netlab
    }

    /// `argv` as a command that runs inside the sandbox.
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.pid().to_string(), "-m", "-n", "--"])
            .args(argv);
        cmd
    }

    /// Runs `argv` inside the sandbox, bounded by [`COMMAND_TIMEOUT`]. A
    /// failing command is an `Ok`: see [`Output::ok`].
    pub fn run(&self, argv: &[&str]) -> Result<Output> {
        self.run_command(self.command(argv), &argv.join(" "))
    }

    /// [`Self::run`], then requires exit status 0.
    pub fn ok(&self, argv: &[&str]) -> Result<Output> {
        self.run(argv)?.ok()
    }

    /// `netlab ARGS...` inside the sandbox.
    pub fn netlab(&self, args: &[&str]) -> Result<Output> {
        self.netlab_env(&[], args)
    }

    /// `netlab ARGS...` with extra environment variables. Any
    /// `NETLAB_FAULT_AFTER_STEPS` of the test's own environment is dropped.
    pub fn netlab_env(&self, vars: &[(&str, &str)], args: &[&str]) -> Result<Output> {
        let netlab = self.netlab.to_string_lossy().into_owned();
        let mut argv = vec![netlab.as_str()];
        argv.extend_from_slice(args);
        let mut cmd = self.command(&argv);
        cmd.env_remove(FAULT_ENV);
        let mut shown = String::new();
        for (key, value) in vars {
            cmd.env(key, value);
            shown.push_str(&format!("{key}={value} "));
        }
        shown.push_str("netlab ");
        shown.push_str(&args.join(" "));
        self.run_command(cmd, &shown)
    }

    /// `netlab ARGS...`, required to exit 0.
    pub fn netlab_ok(&self, args: &[&str]) -> Result<Output> {
        self.netlab(args)?.ok()
    }

    /// netlab as a CNI plugin, as a runtime runs it: `vars` (`CNI_COMMAND`,
    /// `CNI_CONTAINERID`, ...) in its environment, `config` on stdin, no
    /// arguments. Any `NETLAB_FAULT_AFTER_STEPS` of the test's own
    /// environment is dropped.
    pub fn cni(&self, vars: &[(&str, &str)], config: &str) -> Result<Output> {
        let netlab = self.netlab.to_string_lossy().into_owned();
        let mut cmd = self.command(&[&netlab]);
        cmd.env_remove(FAULT_ENV);
        for var in [
            "CNI_COMMAND",
            "CNI_CONTAINERID",
            "CNI_NETNS",
            "CNI_IFNAME",
            "CNI_ARGS",
            "CNI_PATH",
        ] {
            cmd.env_remove(var);
        }
        let mut shown = String::new();
        for (key, value) in vars {
            cmd.env(key, value);
            shown.push_str(&format!("{key}={value} "));
        }
        shown.push_str("netlab (CNI)");
        run_with_input(cmd, &shown, COMMAND_TIMEOUT, Some(config.as_bytes()))
            .with_context(|| format!("in {}", self.label))
    }

    /// Packets counted by the `counter` rules of a test-owned nftables
    /// chain in the sandbox (`nft -j list chain FAMILY TABLE CHAIN`).
    pub fn nft_counted(&self, family: &str, table: &str, chain: &str) -> Result<u64> {
        let out = self.ok(&["nft", "-j", "list", "chain", family, table, chain])?;
        let listing: Value = serde_json::from_str(&out.stdout)
            .with_context(|| format!("nft printed {:?}", out.stdout))?;
        Ok(listing["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| item["rule"]["expr"].as_array())
            .flatten()
            .filter_map(|expr| expr["counter"]["packets"].as_u64())
            .sum())
    }

    /// `netlab status --json`, read back into netlab's own type.
    pub fn status(&self) -> Result<LabStatus> {
        let out = self.netlab_ok(&["status", "--json"])?;
        serde_json::from_str(&out.stdout).with_context(|| {
            format!(
                "{}: `netlab status --json` printed no lab status:\n{out}",
                self.label
            )
        })
    }

    fn run_command(&self, cmd: Command, shown: &str) -> Result<Output> {
        run_with_timeout(cmd, shown, COMMAND_TIMEOUT).with_context(|| format!("in {}", self.label))
    }

    /// `path` (absolute, as seen inside the sandbox) from the test process:
    /// through the holder's root, so it lands in the sandbox's own mounts.
    pub fn path_via_holder(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.pid())).join(path.trim_start_matches('/'))
    }

    /// Writes a file inside the sandbox (e.g. under its private `/run`).
    pub fn write_file(&self, path: &str, contents: &str) -> Result<()> {
        let real = self.path_via_holder(path);
        if let Some(dir) = real.parent() {
            fs::create_dir_all(dir)
                .with_context(|| format!("{}: cannot create {}", self.label, dir.display()))?;
        }
        fs::write(&real, contents)
            .with_context(|| format!("{}: cannot write {path} ({})", self.label, real.display()))
    }

    /// Whether `path` exists inside the sandbox (a dangling symlink counts).
    pub fn exists(&self, path: &str) -> Result<bool> {
        match fs::symlink_metadata(self.path_via_holder(path)) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(anyhow!(e).context(format!("{}: cannot stat {path}", self.label))),
        }
    }

    /// Requires that `up` left no trace of `lab`: no state record, no pins.
    pub fn assert_no_lab_traces(&self, lab: &str) -> Result<()> {
        for path in [
            format!("/run/netlab/{lab}.json"),
            format!("/sys/fs/bpf/netlab/{lab}"),
        ] {
            ensure!(!self.exists(&path)?, "{}: {path} still exists", self.label);
        }
        Ok(())
    }

    /// Pings `to` from `netns` (None: the sandbox's root namespace), `count`
    /// times, each waiting at most a second; all must answer.
    pub fn ping(&self, netns: Option<&str>, to: &str, count: u32) -> Result<Output> {
        let count = count.to_string();
        let mut argv = Vec::new();
        if let Some(netns) = netns {
            argv.extend(["ip", "netns", "exec", netns]);
        }
        argv.extend(["ping", "-n", "-q", "-c", &count, "-i", "0.2", "-W", "1", to]);
        let out = self.ok(&argv)?;
        let wanted = format!("{count} received");
        ensure!(
            out.stdout.contains(&wanted),
            "{}: not every ping was answered (wanted `{wanted}`):\n{out}",
            self.label
        );
        Ok(out)
    }

    /// For a failed test: what the sandbox looks like, printed to stderr.
    fn dump(&self) {
        let mut report = format!("---- {} at the failure ----\n", self.label);
        for argv in [
            vec!["ip", "netns", "list"],
            vec!["ip", "-br", "link"],
            vec!["ip", "-br", "addr"],
            vec!["ip", "route"],
        ] {
            match run_with_timeout(self.command(&argv), &argv.join(" "), Duration::from_secs(5)) {
                Ok(out) => report.push_str(&format!("$ {}\n{}", argv.join(" "), out.stdout)),
                Err(e) => report.push_str(&format!("$ {}\n{e:#}\n", argv.join(" "))),
            }
        }
        match self.netlab(&["status"]) {
            Ok(out) => report.push_str(&format!("$ netlab status\n{}{}", out.stdout, out.stderr)),
            Err(e) => report.push_str(&format!("$ netlab status\n{e:#}\n")),
        }
        eprintln!("{report}");
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if thread::panicking() {
            self.dump();
        }
        drop(self.keepalive.take());
        // By pid, and reaped: once the holder is gone, nothing is left in the
        // mount namespace (every command the test ran was waited for), so
        // the kernel tears down the namespaces, links and bpffs pins.
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

impl fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (holder pid {})", self.label, self.pid())
    }
}

/// What a finished command did.
#[derive(Debug)]
pub struct Output {
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// The signal that killed the command, if one did.
    pub fn signal(&self) -> Option<i32> {
        self.status.signal()
    }

    /// Itself if it exited 0, else an error that shows its output.
    pub fn ok(self) -> Result<Self> {
        if self.success() {
            Ok(self)
        } else {
            Err(anyhow!("command failed: {self}"))
        }
    }

    /// Itself if it did not exit 0, else an error that shows its output.
    pub fn failed(self) -> Result<Self> {
        if self.success() {
            Err(anyhow!("command succeeded but should have failed: {self}"))
        } else {
            Ok(self)
        }
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "`{}` {} after {} ms",
            self.command,
            describe_status(self.status),
            self.elapsed.as_millis()
        )?;
        writeln!(f, "--- stdout ---\n{}", self.stdout.trim_end())?;
        write!(f, "--- stderr ---\n{}", self.stderr.trim_end())
    }
}

fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// Runs `cmd` with piped output, in its own process group so that a
/// deadline kills its descendants too.
pub fn run_with_timeout(cmd: Command, shown: &str, timeout: Duration) -> Result<Output> {
    run_with_input(cmd, shown, timeout, None)
}

/// [`run_with_timeout`], with `input` on the command's stdin (closed once
/// written; no input: stdin is `/dev/null`).
pub fn run_with_input(
    mut cmd: Command,
    shown: &str,
    timeout: Duration,
    input: Option<&[u8]>,
) -> Result<Output> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        let input = input.to_vec();
        // A writer of its own: a command that does not read cannot block
        // the test.
        thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
    }
    let stdout = collect(child.stdout.take());
    let stderr = collect(child.stderr.take());
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for `{shown}`"))?
        {
            break status;
        }
        if start.elapsed() >= timeout {
            timed_out = true;
            kill_process_group(&child);
            break child
                .wait()
                .with_context(|| format!("waiting for `{shown}` after killing it"))?;
        }
        thread::sleep(Duration::from_millis(5));
    };
    let elapsed = start.elapsed();
    let output = Output {
        command: shown.to_owned(),
        status,
        stdout: finish(stdout),
        stderr: finish(stderr),
        elapsed,
    };
    ensure!(
        !timed_out,
        "`{shown}` did not finish within {timeout:?}; killed it. What it printed:\n{output}"
    );
    Ok(output)
}

fn kill_process_group(child: &Child) {
    if let Ok(pgid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill has no memory-safety preconditions; the group is the
        // one `process_group(0)` made for this child, led by its pid.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

type Collector = mpsc::Receiver<String>;

fn collect<R: Read + Send + 'static>(pipe: Option<R>) -> Collector {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(pipe.map(drain).unwrap_or_default());
    });
    rx
}

fn finish(collector: Collector) -> String {
    collector
        .recv_timeout(DRAIN_TIMEOUT)
        .unwrap_or_else(|_| "<output still open: a descendant kept the pipe>".to_owned())
}

fn drain<R: Read>(mut pipe: R) -> String {
    let mut bytes = Vec::new();
    let _ = pipe.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// How closely two [`NetState`]s must match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detail {
    /// Links by name and kind, addresses without interface indexes, routes
    /// in full. For "is it as it was before the lab" and "is it the same lab":
    /// a recreated link still matches.
    Identity,
    /// `ip -o link` lines as printed (index, flags, MAC, peers): for "nothing
    /// was touched", e.g. by a second `up`.
    Full,
}

/// The network as `ip` shows it, in the sandbox's root namespace and every
/// named namespace. IPv4 only: the labs are IPv4, and IPv6 link-local
/// addresses change state (tentative → valid) on their own after a link
/// comes up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetState {
    /// Sorted lines, each prefixed with its place.
    pub lines: Vec<String>,
}

impl NetState {
    pub fn capture(sb: &Sandbox, detail: Detail) -> Result<Self> {
        let mut lines = Vec::new();
        let netns_list = sb.ok(&["ip", "netns", "list"])?.stdout;
        let names = netns_names(&netns_list);
        match detail {
            Detail::Identity => lines.extend(names.iter().map(|n| format!("netns {n}"))),
            Detail::Full => lines.extend(netns_list.lines().map(|l| format!("netns {l}"))),
        }
        let mut places: Vec<Option<&str>> = vec![None];
        places.extend(names.iter().map(|n| Some(n.as_str())));
        for place in places {
            let prefix = match place {
                None => "[host]".to_owned(),
                Some(name) => format!("[{name}]"),
            };
            let ip = |args: &[&str]| -> Result<String> {
                let mut argv = vec!["ip"];
                if let Some(name) = place {
                    argv.extend(["-n", name]);
                }
                argv.extend_from_slice(args);
                Ok(sb.ok(&argv)?.stdout)
            };
            let links = match detail {
                Detail::Identity => link_identities(&ip(&["-j", "-d", "link", "show"])?)?,
                Detail::Full => ip(&["-o", "link", "show"])?
                    .lines()
                    .map(str::to_owned)
                    .collect(),
            };
            lines.extend(links.into_iter().map(|l| format!("{prefix} link {l}")));
            for line in ip(&["-4", "-o", "addr", "show"])?.lines() {
                let line = match detail {
                    // "7: nl-uplink inet ...": a recreated link has a new index.
                    Detail::Identity => line.split_once(": ").map_or(line, |(_, rest)| rest),
                    Detail::Full => line,
                };
                lines.push(format!("{prefix} addr {}", line.trim_end()));
            }
            for line in ip(&["-4", "route", "show", "table", "all"])?.lines() {
                lines.push(format!("{prefix} route {}", line.trim_end()));
            }
        }
        lines.sort();
        Ok(Self { lines })
    }

    /// Ok if equal; else an error listing the lines each side has alone.
    pub fn same_as(&self, before: &Self, what: &str) -> Result<()> {
        if self == before {
            return Ok(());
        }
        let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
        for line in &before.lines {
            *counts.entry(line).or_default() -= 1;
        }
        for line in &self.lines {
            *counts.entry(line).or_default() += 1;
        }
        let mut diff = String::new();
        for (line, count) in counts {
            let sign = if count < 0 { '-' } else { '+' };
            for _ in 0..count.unsigned_abs() {
                diff.push_str(&format!("  {sign} {line}\n"));
            }
        }
        bail!("{what}: the network changed (- before only, + now only):\n{diff}")
    }
}

/// Names from `ip netns list` ("red (id: 0)" → "red").
pub fn netns_names(listing: &str) -> Vec<String> {
    let mut names: Vec<String> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    names.sort();
    names
}

/// "NAME kind=KIND" per link of `ip -j -d link show`.
pub fn link_identities(json: &str) -> Result<Vec<String>> {
    let links: Value = serde_json::from_str(json).context("`ip -j link` printed no JSON")?;
    let links = links.as_array().context("`ip -j link` printed no array")?;
    links
        .iter()
        .map(|link| {
            let name = link["ifname"]
                .as_str()
                .with_context(|| format!("a link without ifname: {link}"))?;
            let kind = link["linkinfo"]["info_kind"].as_str().unwrap_or("-");
            Ok(format!("{name} kind={kind}"))
        })
        .collect()
}

/// Every link of `netlab status`, with the place it is in.
pub fn status_links(status: &LabStatus) -> Vec<(&str, &LinkStatus)> {
    status
        .places
        .iter()
        .flat_map(|place| place.links.iter().map(|link| (place.place.as_str(), link)))
        .collect()
}

/// The entry of `hook` ("ingress" | "egress") on link `link`.
pub fn status_hook<'a>(status: &'a LabStatus, link: &str, hook: &str) -> Result<&'a HookStatus> {
    let (_, entry) = status_links(status)
        .into_iter()
        .find(|(_, l)| l.name == link)
        .with_context(|| format!("status shows no link `{link}`: {status:#?}"))?;
    entry
        .hooks
        .iter()
        .find(|h| h.hook == hook)
        .with_context(|| format!("status shows no {hook} hook on `{link}`: {entry:#?}"))
}

/// The packet counter of `hook` on `link`.
pub fn packets(status: &LabStatus, link: &str, hook: &str) -> Result<u64> {
    Ok(status_hook(status, link, hook)?.packets)
}

/// A NAT counter of the eBPF datapath (see `netlab_common::nat::Stat`).
pub fn nat_counter(status: &LabStatus, name: &str) -> Option<u64> {
    status.nat.as_ref()?.counters.get(name).copied()
}

/// A process left running inside a [`Sandbox`]: a server, or a client that
/// holds a connection open while the test does something else.
///
/// Bounded twice: `timeout -s KILL` ends it after its lifetime even if the
/// test process dies without dropping the guard (a background process would
/// otherwise keep the sandbox's mount namespace alive), and dropping the
/// guard kills its whole process group. Its output is collected as it comes,
/// so a test can wait for a "ready" line or a log entry.
pub struct Background {
    shown: String,
    label: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: SharedOutput,
    stderr: SharedOutput,
    readers: Vec<thread::JoinHandle<()>>,
    start: Instant,
}

impl Sandbox {
    /// Starts `argv` inside the sandbox in the background, with its stdin on
    /// a pipe (see [`Background::send_line`]); it is killed after `lifetime`
    /// whatever happens.
    pub fn spawn(&self, argv: &[&str], lifetime: Duration) -> Result<Background> {
        let seconds = lifetime.as_secs().max(1).to_string();
        let mut bounded = vec!["timeout", "-s", "KILL", seconds.as_str()];
        bounded.extend_from_slice(argv);
        let shown = argv.join(" ");
        let mut cmd = self.command(&bounded);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("{}: cannot start `{shown}`", self.label))?;
        let stdin = child.stdin.take();
        let stdout = SharedOutput::default();
        let stderr = SharedOutput::default();
        let mut readers = Vec::new();
        if let Some(pipe) = child.stdout.take() {
            readers.push(accumulate(pipe, SharedOutput::clone(&stdout)));
        }
        if let Some(pipe) = child.stderr.take() {
            readers.push(accumulate(pipe, SharedOutput::clone(&stderr)));
        }
        Ok(Background {
            shown,
            label: self.label.clone(),
            child,
            stdin,
            stdout,
            stderr,
            readers,
            start: Instant::now(),
        })
    }
}

impl Background {
    /// What it printed to stdout so far.
    pub fn stdout(&self) -> String {
        text_of(&self.stdout)
    }

    /// What it printed to stderr so far.
    pub fn stderr(&self) -> String {
        text_of(&self.stderr)
    }

    /// Waits until `netlab trace --notices-json` says it is tracing: its
    /// typed `started` notice on stderr (the contract; the sentences for
    /// people may change).
    pub fn wait_for_trace_start(&mut self, timeout: Duration) -> Result<()> {
        self.wait_for("\"notice\":\"started\"", timeout)?;
        let started = self.stderr().lines().any(|line| {
            matches!(
                serde_json::from_str(line),
                Ok(netlab::trace::Notice::Started(_))
            )
        });
        if !started {
            bail!("no `started` notice parses in:\n{}", self.stderr());
        }
        Ok(())
    }

    /// Waits until its stdout or stderr contains `needle`. Fails, showing
    /// the output, if the process ends first or `timeout` passes.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if self.stdout().contains(needle) || self.stderr().contains(needle) {
                return Ok(());
            }
            let exited = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for `{}`", self.shown))?;
            if let Some(status) = exited {
                // Whatever it printed last may still be in the pipes.
                thread::sleep(Duration::from_millis(50));
                if self.stdout().contains(needle) || self.stderr().contains(needle) {
                    return Ok(());
                }
                bail!(
                    "{}: `{}` {} before printing {needle:?}\n{}",
                    self.label,
                    self.shown,
                    describe_status(status),
                    self.printed()
                );
            }
            if start.elapsed() >= timeout {
                bail!(
                    "{}: `{}` did not print {needle:?} within {timeout:?}\n{}",
                    self.label,
                    self.shown,
                    self.printed()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Writes `line` and a newline to its stdin.
    pub fn send_line(&mut self, line: &str) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .with_context(|| format!("{}: stdin of `{}` is closed", self.label, self.shown))?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .with_context(|| format!("{}: cannot write to `{}`", self.label, self.shown))
    }

    /// Closes its stdin and waits up to `timeout` for it to exit on its own
    /// (killing its group after that). Fails if it had to be killed.
    pub fn finish(mut self, timeout: Duration) -> Result<Output> {
        drop(self.stdin.take());
        let start = Instant::now();
        loop {
            let exited = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for `{}`", self.shown))?;
            if exited.is_some() {
                return Ok(self.collect());
            }
            if start.elapsed() >= timeout {
                let output = self.stop();
                bail!("did not finish within {timeout:?}; killed it: {output}");
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills its process group and returns what it printed.
    pub fn stop(mut self) -> Output {
        self.kill();
        self.collect()
    }

    fn kill(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            kill_process_group(&self.child);
        }
        let _ = self.child.wait();
    }

    /// Waits for it (it must have exited or been killed) and its readers.
    fn collect(&mut self) -> Output {
        let status = self
            .child
            .wait()
            .unwrap_or_else(|_| ExitStatus::from_raw(0x7f00));
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        for reader in self.readers.drain(..) {
            while !reader.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
        }
        Output {
            command: format!("{} (background, in {})", self.shown, self.label),
            status,
            stdout: self.stdout(),
            stderr: self.stderr(),
            elapsed: self.start.elapsed(),
        }
    }

    fn printed(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout().trim_end(),
            self.stderr().trim_end()
        )
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.kill();
    }
}

impl fmt::Debug for Background {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` in {} (pid {})",
            self.shown,
            self.label,
            self.child.id()
        )
    }
}

/// Output of a [`Background`] process, filled as it comes.
type SharedOutput = std::sync::Arc<std::sync::Mutex<Vec<u8>>>;

fn text_of(output: &SharedOutput) -> String {
    output
        .lock()
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// Appends everything `pipe` yields to `into`, as it comes.
fn accumulate<R: Read + Send + 'static>(mut pipe: R, into: SharedOutput) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut chunk = [0_u8; 4096];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    if let Ok(mut bytes) = into.lock() {
                        bytes.extend_from_slice(&chunk[..n]);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_names_drop_ids_and_sort() {
        assert_eq!(
            netns_names("outside (id: 2)\nblue (id: 1)\nred\n"),
            ["blue", "outside", "red"]
        );
        assert!(netns_names("").is_empty());
    }

    #[test]
    fn link_identities_name_kinds() {
        let json = r#"[{"ifindex":1,"ifname":"lo"},
            {"ifindex":2,"ifname":"v-net-0","linkinfo":{"info_kind":"bridge"}}]"#;
        assert_eq!(
            link_identities(json).unwrap(),
            ["lo kind=-", "v-net-0 kind=bridge"]
        );
        assert!(link_identities("not json").is_err());
    }

    #[test]
    fn same_as_lists_both_sides() {
        let before = NetState {
            lines: vec!["a".into(), "b".into()],
        };
        let now = NetState {
            lines: vec!["b".into(), "b".into(), "c".into()],
        };
        assert!(before.same_as(&before.clone(), "x").is_ok());
        let message = format!("{:#}", now.same_as(&before, "after down").unwrap_err());
        assert!(message.contains("after down"), "{message}");
        assert!(message.contains("- a\n"), "{message}");
        assert!(message.contains("+ b\n"), "{message}");
        assert!(message.contains("+ c\n"), "{message}");
    }

    #[test]
    fn reads_counters_from_status() {
        let status: LabStatus = serde_json::from_str(
            r#"{"lab":"default","datapath":"bridge","origin":"<default lab>","complete":true,
            "namespaces":["red"],"nat":null,"places":[{"place":"red","present":true,"routes":[],
            "links":[{"name":"veth-red","index":2,"kind":"veth","up":true,"master":null,
            "addresses":[],"hooks":[
                {"hook":"ingress","programs":[],"packets":3,"bytes":9},
                {"hook":"egress","programs":["trace_egress"],"packets":4,"bytes":8}]}]}]}"#,
        )
        .unwrap();
        assert_eq!(packets(&status, "veth-red", "ingress").unwrap(), 3);
        assert_eq!(packets(&status, "veth-red", "egress").unwrap(), 4);
        assert!(packets(&status, "veth-blue", "egress").is_err());
    }

    #[test]
    fn timeout_kills_the_whole_group() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 30 & sleep 30"]);
        let start = Instant::now();
        let err = run_with_timeout(cmd, "sleepers", Duration::from_millis(200)).unwrap_err();
        assert!(format!("{err:#}").contains("did not finish"), "{err:#}");
        // The background sleep held the pipes too: killing the group freed them.
        assert!(start.elapsed() < Duration::from_secs(4));
    }

    #[test]
    fn failure_messages_carry_the_output() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let out = run_with_timeout(cmd, "sh -c ...", COMMAND_TIMEOUT).unwrap();
        assert_eq!(out.code(), Some(3));
        let message = format!("{:#}", out.ok().unwrap_err());
        assert!(message.contains("exited with 3"), "{message}");
        assert!(
            message.contains("out") && message.contains("err"),
            "{message}"
        );
    }
}
