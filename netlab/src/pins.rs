//! The one place that knows netlab's layout in bpffs (as bpfman's
//! `directories` module): everything a lab pins lives under
//! `/sys/fs/bpf/netlab/<lab>/`, so it outlives `up` and later commands find it.
//!
//! ```text
//! <lab>/maps/<MAP>              maps, pinned by name (the loader reuses them)
//! <lab>/progs/<program>         loaded programs
//! <lab>/links/cgroup/<program>  cgroup sock_addr links (unpinning detaches)
//! ```
//!
//! The TC programs run as `tc` filters, which hold their programs and go
//! with their interfaces: they have no pin.
//!
//! No other module joins a pin path.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use crate::sys::BPFFS;

/// A lab's pins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pins {
    /// `/sys/fs/bpf/netlab`, the parent of every lab's directory.
    root: PathBuf,
    /// `<root>/<lab>`.
    dir: PathBuf,
}

impl Pins {
    /// The pins of lab `lab` in the host's bpffs.
    pub fn of(lab: &str) -> Pins {
        Pins::under(Path::new(BPFFS), lab)
    }

    /// The pins of lab `lab` in the bpffs mounted at `bpffs`.
    pub fn under(bpffs: &Path, lab: &str) -> Pins {
        let root = bpffs.join("netlab");
        Pins {
            dir: root.join(lab),
            root,
        }
    }

    /// The lab's name.
    pub fn lab(&self) -> String {
        self.dir
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The lab's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where maps are pinned by name (aya's default map pin directory).
    pub fn maps(&self) -> PathBuf {
        self.dir.join("maps")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }

    pub fn program(&self, name: &str) -> PathBuf {
        self.dir.join("progs").join(name)
    }

    /// The link of a cgroup sock_addr `program` on the cgroup2 root.
    pub fn cgroup_link(&self, program: &str) -> PathBuf {
        self.dir.join("links").join("cgroup").join(program)
    }

    /// Creates the lab's directories (links' subdirectories come with
    /// [`Pins::create_parent`]).
    pub fn create(&self) -> Result<()> {
        for sub in ["maps", "progs", "links"] {
            let dir = self.dir.join(sub);
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(())
    }

    /// Creates the directory a link pin goes in.
    pub fn create_parent(pin: &Path) -> Result<()> {
        if let Some(parent) = pin.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        Ok(())
    }

    /// Removes every pin of the lab: links detach, programs and maps go with
    /// their last reference. `/sys/fs/bpf/netlab` stays only while another
    /// lab uses it.
    pub fn remove(&self) -> Result<()> {
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", self.dir.display())),
        }
        let _ = fs::remove_dir(&self.root);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let pins = Pins::of("default");
        assert_eq!(pins.lab(), "default");
        assert_eq!(pins.dir(), Path::new("/sys/fs/bpf/netlab/default"));
        assert_eq!(
            pins.map("CONNTRACK"),
            Path::new("/sys/fs/bpf/netlab/default/maps/CONNTRACK")
        );
        assert_eq!(
            pins.program("nat_ingress"),
            Path::new("/sys/fs/bpf/netlab/default/progs/nat_ingress")
        );
        assert_eq!(
            pins.cgroup_link("sock_connect4"),
            Path::new("/sys/fs/bpf/netlab/default/links/cgroup/sock_connect4")
        );
    }
}
