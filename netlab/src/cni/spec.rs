//! The CNI specification's side of the plugin (pure): the environment,
//! the network configuration on stdin, the results and errors on stdout,
//! each as the versions runtimes send want them. Field names follow the
//! specification (`cniVersion`, `runtimeConfig`, `prevResult`, ...).

use std::{net::Ipv4Addr, path::PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The versions this plugin speaks. containerd 1.6 and podman 4.3 send
/// 0.4.0 or 1.0.0; 1.1.0 adds STATUS and GC.
pub const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A result's shape: before 1.0.0, each IP says its version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// 0.3.0, 0.3.1, 0.4.0.
    Pre1,
    /// 1.0.0, 1.1.0.
    V1,
}

impl Version {
    pub fn parse(text: &str) -> Result<Version, CniError> {
        match text {
            "0.3.0" | "0.3.1" | "0.4.0" => Ok(Version::Pre1),
            "1.0.0" | "1.1.0" => Ok(Version::V1),
            other => Err(CniError::new(
                1,
                format!(
                    "cniVersion {other:?} is not supported (supported: {})",
                    SUPPORTED.join(", ")
                ),
            )),
        }
    }
}

/// `CNI_COMMAND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

/// The environment a runtime calls the plugin with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    pub container_id: Option<String>,
    /// `None` when empty (a DEL may come without it).
    pub netns: Option<PathBuf>,
    pub ifname: Option<String>,
    /// `CNI_ARGS`: `K=V;K=V`, kept as pairs (none are needed here).
    pub args: Vec<(String, String)>,
    /// `CNI_PATH`: where delegated plugins (IPAM) are found.
    pub path: Vec<PathBuf>,
}

impl Env {
    /// Reads the environment through `get` (the process environment, or a
    /// table in tests).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let command = match get("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("STATUS") => Command::Status,
            Some("GC") => Command::Gc,
            Some("VERSION") => Command::Version,
            other => {
                return Err(CniError::env(
                    "CNI_COMMAND",
                    format!("{other:?} is not ADD, DEL, CHECK, STATUS, GC or VERSION"),
                ));
            }
        };
        let non_empty = |name: &str| get(name).filter(|v| !v.is_empty());
        let args = non_empty("CNI_ARGS")
            .map(|args| {
                args.split(';')
                    .filter_map(|pair| pair.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let path = non_empty("CNI_PATH")
            .map(|p| p.split(':').map(PathBuf::from).collect())
            .unwrap_or_default();
        Ok(Env {
            command,
            container_id: non_empty("CNI_CONTAINERID"),
            netns: non_empty("CNI_NETNS").map(PathBuf::from),
            ifname: non_empty("CNI_IFNAME"),
            args,
            path,
        })
    }

    /// The container and interface an attachment command names, checked as
    /// the specification says (a container id of `[A-Za-z0-9][A-Za-z0-9_.-]*`,
    /// an interface name Linux accepts).
    pub fn attachment(&self) -> Result<(&str, &str), CniError> {
        let id = self
            .container_id
            .as_deref()
            .ok_or_else(|| CniError::env("CNI_CONTAINERID", "is missing".to_owned()))?;
        let valid_id = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid_id {
            return Err(CniError::env(
                "CNI_CONTAINERID",
                format!("{id:?} is not [A-Za-z0-9][A-Za-z0-9_.-]*"),
            ));
        }
        let ifname = self
            .ifname
            .as_deref()
            .ok_or_else(|| CniError::env("CNI_IFNAME", "is missing".to_owned()))?;
        let valid_if = !ifname.is_empty()
            && ifname.len() <= 15
            && ifname != "."
            && ifname != ".."
            && !ifname.contains(['/', ':'])
            && !ifname.chars().any(char::is_whitespace);
        if !valid_if {
            return Err(CniError::env(
                "CNI_IFNAME",
                format!("{ifname:?} is not an interface name Linux accepts"),
            ));
        }
        Ok((id, ifname))
    }

    /// `CNI_NETNS`, which ADD and CHECK need.
    pub fn netns(&self) -> Result<&PathBuf, CniError> {
        self.netns
            .as_ref()
            .ok_or_else(|| CniError::env("CNI_NETNS", "is missing".to_owned()))
    }
}

/// The network configuration a runtime gives on stdin (a conflist's
/// plugin entry, with `name` and `cniVersion` filled in). Unknown keys
/// are kept aside: runtimes add their own.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// The netlab lab the pods go into; the network's `name` when absent.
    pub lab: Option<String>,
    /// Delegated IPAM (`{"type": "host-local", ...}`); netlab's own
    /// allocator when absent.
    pub ipam: Option<Value>,
    pub dns: Option<Dns>,
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    pub prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<GcAttachment>>,
    #[serde(rename = "cni.dev/attachments")]
    pub attachments: Option<Vec<GcAttachment>>,
}

impl NetConf {
    /// Reads a configuration: bad JSON is code 6, a missing key code 7.
    pub fn parse(text: &str) -> Result<NetConf, CniError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| CniError::new(6, format!("the network configuration is not JSON: {e}")))?;
        serde_json::from_value(value)
            .map_err(|e| CniError::new(7, format!("the network configuration: {e}")))
    }

    /// The lab the configuration names.
    pub fn lab(&self) -> &str {
        self.lab.as_deref().unwrap_or(&self.name)
    }

    /// The IPAM plugin to delegate to, if any.
    pub fn ipam_type(&self) -> Result<Option<&str>, CniError> {
        match &self.ipam {
            None => Ok(None),
            Some(ipam) => match ipam.get("type").and_then(Value::as_str) {
                Some(kind) if !kind.is_empty() && !kind.contains('/') => Ok(Some(kind)),
                _ => Err(CniError::new(
                    7,
                    "ipam.type must name an IPAM plugin (e.g. \"host-local\")".to_owned(),
                )),
            },
        }
    }
}

/// `runtimeConfig`: what the runtime passes for the capabilities the
/// plugin declares.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
}

/// One `portMappings` entry (`podman run -p 8080:80`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Option<String>,
    #[serde(rename = "hostIP")]
    pub host_ip: Option<String>,
}

/// One attachment GC keeps.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct GcAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// An ADD's result (also the `prevResult` CHECK gets back).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddResult {
    pub cni_version: String,
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteOut>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// "4": results before 1.0.0 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `ADDRESS/PREFIX`.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// The index in `interfaces` of the interface the address is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteOut {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<Ipv4Addr>,
}

/// VERSION's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionReply {
    pub cni_version: String,
    pub supported_versions: Vec<String>,
}

/// What a failed command prints on stdout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorReply {
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

/// A failure with the specification's code: 1 incompatible version, 2
/// unsupported field, 3 container unknown, 4 invalid environment, 5 I/O,
/// 6 decoding, 7 invalid configuration, 11 try again later, 50 not
/// available; netlab's own from 100 (README, "CNI plugin").
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

/// netlab's codes (the specification leaves 100 and up to plugins).
pub mod code {
    /// ADD for an attachment that exists (no DEL in between).
    pub const ALREADY_ATTACHED: u32 = 100;
    /// No address left in the pod network's range.
    pub const POOL_EXHAUSTED: u32 = 101;
    /// A port mapping's host port is published already.
    pub const PORT_TAKEN: u32 = 102;
    /// CHECK found the attachment damaged (what, in `details`).
    pub const DAMAGED: u32 = 103;
    /// The container already has an interface of that name.
    pub const IFNAME_TAKEN: u32 = 104;
}

impl CniError {
    pub fn new(code: u32, msg: String) -> CniError {
        CniError {
            code,
            msg,
            details: String::new(),
        }
    }

    /// Code 4, naming the variable.
    pub fn env(var: &str, why: String) -> CniError {
        CniError::new(4, format!("{var} {why}"))
    }

    pub fn with_details(mut self, details: String) -> CniError {
        self.details = details;
        self
    }

    /// The reply for `version` (the configuration's, when it was read).
    pub fn reply(&self, version: &str) -> ErrorReply {
        ErrorReply {
            cni_version: version.to_owned(),
            code: self.code,
            msg: self.msg.clone(),
            details: self.details.clone(),
        }
    }
}

impl From<anyhow::Error> for CniError {
    /// Anything else is an I/O failure (code 5), its chain in `details`.
    fn from(err: anyhow::Error) -> CniError {
        CniError::new(5, err.to_string()).with_details(format!("{err:#}"))
    }
}

/// A MAC as the results spell it.
pub fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// The result of an ADD in `version`'s shape.
pub fn shaped(mut result: AddResult, version: Version) -> AddResult {
    for ip in &mut result.ips {
        ip.version = (version == Version::Pre1).then(|| "4".to_owned());
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<Env, CniError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Env::from_vars(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }

    #[test]
    fn the_environment_is_read_and_checked() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/p1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web"),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ])
        .unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.attachment().unwrap(), ("c1", "eth0"));
        assert_eq!(e.args.len(), 2);
        assert_eq!(e.path.len(), 2);
        // An empty CNI_NETNS (ctr's DEL) is none.
        let del = env(&[("CNI_COMMAND", "DEL"), ("CNI_NETNS", "")]).unwrap();
        assert_eq!(del.netns, None);
        assert_eq!(del.attachment().unwrap_err().code, 4);
        let bad = env(&[("CNI_COMMAND", "NOPE")]).unwrap_err();
        assert_eq!(bad.code, 4);
        assert!(bad.msg.contains("CNI_COMMAND"), "{}", bad.msg);
        for (id, ifname) in [("-x", "eth0"), ("c1", "a/b"), ("c1", "much-too-long-name")] {
            let e = env(&[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", id),
                ("CNI_IFNAME", ifname),
            ])
            .unwrap();
            assert_eq!(e.attachment().unwrap_err().code, 4, "{id} {ifname}");
        }
    }

    #[test]
    fn configurations_and_versions() {
        let conf = NetConf::parse(
            r#"{"cniVersion":"1.0.0","name":"pods","type":"netlab","lab":"node",
                "capabilities":{"portMappings":true},
                "runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":""}]},
                "cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(conf.lab(), "node");
        assert_eq!(conf.runtime_config.port_mappings[0].host_port, 8080);
        assert_eq!(conf.valid_attachments.unwrap()[0].container_id, "c1");
        assert_eq!(NetConf::parse("{").unwrap_err().code, 6);
        assert_eq!(NetConf::parse(r#"{"name":"x"}"#).unwrap_err().code, 7);
        assert_eq!(Version::parse("0.4.0").unwrap(), Version::Pre1);
        assert_eq!(Version::parse("1.1.0").unwrap(), Version::V1);
        assert_eq!(Version::parse("0.2.0").unwrap_err().code, 1);
    }

    #[test]
    fn results_take_their_version_s_shape() {
        let result = AddResult {
            cni_version: "0.4.0".into(),
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: mac_text([2, 0, 0, 0, 0, 1]),
                sandbox: Some("/run/netns/p1".into()),
            }],
            ips: vec![IpConfig {
                version: None,
                address: "10.77.0.2/24".into(),
                gateway: Some(Ipv4Addr::new(10, 77, 0, 1)),
                interface: Some(0),
            }],
            routes: vec![],
            dns: None,
        };
        let old = serde_json::to_value(shaped(result.clone(), Version::Pre1)).unwrap();
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["interfaces"][0]["mac"], "02:00:00:00:00:01");
        let new = serde_json::to_value(shaped(result, Version::V1)).unwrap();
        assert!(new["ips"][0].get("version").is_none());
        assert_eq!(new["ips"][0]["interface"], 0);
    }
}
