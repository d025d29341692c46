//! Child processes. One [`Cmd`] is both what xtask prints and what it runs, so
//! every printed line can be pasted into a shell to do the same thing by hand.

use std::{
    env,
    ffi::{OsStr, OsString},
    fmt, fs,
    io::{Read as _, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode, ExitStatus, Stdio},
};

use anyhow::{Context as _, Result, anyhow, bail};

/// A command line with its environment changes, printable as shell.
#[derive(Clone, Debug)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    env_removes: Vec<OsString>,
    current_dir: Option<PathBuf>,
    /// Fed to the child's stdin, followed by a newline.
    stdin: Option<String>,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
            env_removes: Vec::new(),
            current_dir: None,
            stdin: None,
        }
    }

    /// The cargo that runs xtask (`CARGO`, set by `cargo run`), so builds use
    /// the same toolchain as the `cargo xtask` the user typed.
    pub fn cargo() -> Self {
        Self::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
    }

    /// `argv[0]` is the program; `cargo` means [`Cmd::cargo`].
    pub fn from_argv(argv: &[&str]) -> Self {
        match argv {
            ["cargo", args @ ..] => Self::cargo().args(args),
            [program, args @ ..] => Self::new(program).args(args),
            [] => Self::new("true"),
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|arg| arg.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.env_removes.push(key.as_ref().to_owned());
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.current_dir = Some(dir.as_ref().to_owned());
        self
    }

    pub fn stdin(mut self, input: impl Into<String>) -> Self {
        self.stdin = Some(input.into());
        self
    }

    pub fn program(&self) -> &OsStr {
        &self.program
    }

    /// The same command run as root through sudo. `sudo env K=V prog` rather
    /// than `sudo K=V prog`: sudoers may refuse to set variables, never `env`.
    pub fn via_sudo(&self) -> Self {
        let mut args: Vec<OsString> = vec!["env".into()];
        args.extend(self.envs.iter().map(|(key, value)| {
            let mut assignment = key.clone();
            assignment.push("=");
            assignment.push(value);
            assignment
        }));
        args.push(self.program.clone());
        args.extend(self.args.iter().cloned());
        Self {
            program: "sudo".into(),
            args,
            envs: Vec::new(),
            env_removes: Vec::new(),
            current_dir: self.current_dir.clone(),
            stdin: self.stdin.clone(),
        }
    }

    fn command(&self) -> Result<Command> {
        let search_path = search_path();
        let program = which_in(&self.program, &search_path).ok_or_else(|| {
            anyhow!(
                "`{}` not found on PATH ({})",
                self.program.to_string_lossy(),
                search_path.to_string_lossy()
            )
        })?;
        let mut command = Command::new(program);
        command.args(&self.args).env("PATH", &search_path);
        for key in &self.env_removes {
            command.env_remove(key);
        }
        command.envs(self.envs.iter().map(|(key, value)| (key, value)));
        if let Some(dir) = &self.current_dir {
            command.current_dir(dir);
        }
        Ok(command)
    }

    /// Runs with inherited stdout/stderr; returns how it ended.
    pub fn status(&self) -> Result<ExitStatus> {
        let mut command = self.command()?;
        let Some(input) = &self.stdin else {
            return command
                .status()
                .with_context(|| format!("cannot start `{self}`"));
        };
        let mut child = command
            .stdin(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start `{self}`"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(format!("{input}\n").as_bytes())
                .with_context(|| format!("cannot write the input of `{self}`"))?;
        }
        child
            .wait()
            .with_context(|| format!("cannot wait for `{self}`"))
    }

    /// Runs with inherited stdout/stderr; fails unless it exits 0.
    pub fn run(&self) -> Result<()> {
        let status = self.status()?;
        if !status.success() {
            bail!("`{self}` failed ({status})");
        }
        Ok(())
    }

    /// Runs with stdout captured and stderr inherited (cargo's progress and
    /// diagnostics stay visible); fails unless it exits 0.
    pub fn run_capturing_stdout(&self) -> Result<String> {
        let mut child = self
            .command()?
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start `{self}`"))?;
        let mut stdout = String::new();
        if let Some(mut pipe) = child.stdout.take() {
            pipe.read_to_string(&mut stdout)
                .with_context(|| format!("cannot read the output of `{self}`"))?;
        }
        let status = child
            .wait()
            .with_context(|| format!("cannot wait for `{self}`"))?;
        if !status.success() {
            bail!("`{self}` failed ({status})");
        }
        Ok(stdout)
    }

    /// Runs quietly for a check: `Some(stdout)` if it exits 0, `None` if it
    /// fails or cannot start (a missing tool is a failed check, not an error).
    pub fn probe(&self) -> Option<String> {
        let output = self
            .command()
            .ok()?
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(input) = &self.stdin {
            write!(f, "echo {} | ", shell_quote(OsStr::new(input)))?;
        }
        for (key, value) in &self.envs {
            write!(f, "{}={} ", key.to_string_lossy(), shell_quote(value))?;
        }
        write!(f, "{}", shell_quote(&self.program))?;
        for arg in &self.args {
            write!(f, " {}", shell_quote(arg))?;
        }
        Ok(())
    }
}

/// Quotes for bash: bare when safe, `'...'` when printable, `$'...'` when it
/// holds control characters (the 0x1f in `CARGO_ENCODED_RUSTFLAGS`).
pub fn shell_quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let is_safe = |c: char| c.is_ascii_alphanumeric() || "_-./=:,+@%^".contains(c);
    if !word.is_empty() && word.chars().all(is_safe) {
        return word.into_owned();
    }
    if !word.chars().any(char::is_control) {
        return format!("'{}'", word.replace('\'', r"'\''"));
    }
    let mut quoted = String::from("$'");
    for c in word.chars() {
        match c {
            '\\' => quoted.push_str(r"\\"),
            '\'' => quoted.push_str(r"\'"),
            '\n' => quoted.push_str(r"\n"),
            '\t' => quoted.push_str(r"\t"),
            c if c.is_control() => quoted.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => quoted.push(c),
        }
    }
    quoted.push('\'');
    quoted
}

/// `$CARGO_HOME/bin` (default `~/.cargo/bin`): where rustup and
/// `cargo install` put tools such as bpf-linker.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .filter(|home| !home.is_empty())
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .map(|home| home.join("bin"))
}

/// PATH for every child: ours, plus the cargo bin directory if it is missing,
/// so a freshly installed bpf-linker is found by the child cargo.
pub fn search_path() -> OsString {
    let current = env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = env::split_paths(&current).collect();
    if let Some(cargo_bin) = cargo_bin_dir()
        && !dirs.contains(&cargo_bin)
    {
        dirs.push(cargo_bin);
    }
    env::join_paths(dirs).unwrap_or(current)
}

/// The executable `program` resolves to on the children's PATH.
pub fn which(program: impl AsRef<OsStr>) -> Option<PathBuf> {
    which_in(program.as_ref(), &search_path())
}

fn which_in(program: &OsStr, search_path: &OsStr) -> Option<PathBuf> {
    let is_executable = |path: &Path| {
        fs::metadata(path)
            .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    };
    if Path::new(program).components().count() > 1 {
        let path = PathBuf::from(program);
        return is_executable(&path).then_some(path);
    }
    env::split_paths(search_path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

/// Whether xtask runs with effective uid 0.
pub fn is_root() -> Result<bool> {
    let status =
        fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    effective_uid(&status)
        .map(|uid| uid == 0)
        .ok_or_else(|| anyhow!("no `Uid:` line in /proc/self/status"))
}

/// The effective uid from /proc/self/status: `Uid: real effective saved fs`.
fn effective_uid(proc_status: &str) -> Option<u32> {
    proc_status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|uid| uid.parse().ok())
}

/// A child's exit status as ours: its code, or 128 + signal as shells do.
pub fn exit_code(status: ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt as _;
    let code = status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_is_pasteable_into_bash() {
        assert_eq!(shell_quote(OsStr::new("build-std=core")), "build-std=core");
        assert_eq!(shell_quote(OsStr::new("")), "''");
        assert_eq!(shell_quote(OsStr::new("${Status}")), "'${Status}'");
        assert_eq!(shell_quote(OsStr::new("it's")), r"'it'\''s'");
        assert_eq!(shell_quote(OsStr::new("a\x1fb")), r"$'a\x1fb'");
    }

    #[test]
    fn display_shows_stdin_env_and_args() {
        let cmd = Cmd::new("apt-get")
            .args(["install", "-y", "tshark"])
            .env("DEBIAN_FRONTEND", "noninteractive");
        assert_eq!(
            cmd.to_string(),
            "DEBIAN_FRONTEND=noninteractive apt-get install -y tshark"
        );
        assert_eq!(
            cmd.via_sudo().to_string(),
            "sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y tshark"
        );
        let cmd = Cmd::new("debconf-set-selections").stdin("a b/c boolean false");
        assert_eq!(
            cmd.to_string(),
            "echo 'a b/c boolean false' | debconf-set-selections"
        );
    }

    #[test]
    fn effective_uid_is_the_second_field() {
        let status = "Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n";
        assert_eq!(effective_uid(status), Some(0));
        assert_eq!(effective_uid("Name:\tx\n"), None);
    }
}
