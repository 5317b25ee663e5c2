//! The standalone configuration file (`mesh-node run --config mesh.yaml`).
//!
//! `Config` is the file as written (camelCase YAML, unknown fields rejected); `validate`
//! turns it into the checked [`crate::state::MeshState`] or an error that names the field.
//! A file that fails validation is rejected whole.
use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub const DEFAULT_CAPTURE_PORT: u16 = 15001;
pub const DEFAULT_HBONE_PORT: u16 = 15008;
pub const DEFAULT_ADMIN_PORT: u16 = 15000;
pub const DEFAULT_METRICS_PORT: u16 = 15020;
pub const DEFAULT_HEALTH_PORT: u16 = 15021;
pub const DEFAULT_CA_PORT: u16 = 15012;
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/mesh";
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_CA_DIR: &str = "/var/lib/mesh/ca";
pub const DEFAULT_SVID_TTL: Duration = Duration::from_secs(24 * 3600);

/// The mesh's own ports: connects to them are never captured.
pub const MESH_PORTS: [u16; 6] = [
    DEFAULT_CAPTURE_PORT,
    DEFAULT_HBONE_PORT,
    DEFAULT_ADMIN_PORT,
    DEFAULT_METRICS_PORT,
    DEFAULT_HEALTH_PORT,
    DEFAULT_CA_PORT,
];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// Name of the node this daemon runs on; must be one of `nodes`.
    pub node: String,
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    #[serde(default)]
    pub capture: CaptureConfig,
    #[serde(default)]
    pub bpf: BpfConfig,
    #[serde(default)]
    pub exclusions: Exclusions,
    /// How long live connections may finish after SIGTERM, e.g. "10s".
    #[serde(default, with = "opt_duration")]
    pub drain_timeout: Option<Duration>,
    /// Timeout for the daemon's connection to the destination, e.g. "5s".
    #[serde(default, with = "opt_duration")]
    pub connect_timeout: Option<Duration>,
    #[serde(default)]
    pub identity: IdentityConfig,
    #[serde(default)]
    pub hbone: HboneConfig,
    #[serde(default)]
    pub inbound: InboundConfig,
    pub nodes: Vec<NodeConfig>,
    #[serde(default)]
    pub workloads: Vec<WorkloadConfig>,
    /// Istio `security.istio.io/v1` AuthorizationPolicies (L4 fields only), enforced by the
    /// destination's daemon.
    #[serde(default)]
    pub policies: Vec<crate::policy::AuthorizationPolicy>,
    /// Policies of this namespace apply to every workload of the mesh, as in Istio.
    #[serde(default = "default_root_namespace")]
    pub root_namespace: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityConfig {
    /// Directory of the mesh CA root for the in-process CA (`mesh-node ca init --dir`).
    /// Created at first start when missing (the single-node standalone default).
    pub ca_dir: Option<PathBuf>,
    /// A remote CA (`mesh-node ca serve`) instead of the in-process one.
    pub ca: Option<RemoteCaConfig>,
    /// Lifetime of workload SVIDs, e.g. "24h"; renewed at half life.
    #[serde(default, with = "opt_duration")]
    pub svid_ttl: Option<Duration>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RemoteCaConfig {
    /// `host:port` of `mesh-node ca serve`.
    pub address: String,
    /// This node's credential as `mesh-node ca issue-node --out` wrote it: node.pem,
    /// node-key.pem and root.pem.
    pub credential_dir: PathBuf,
}

/// Who may open TCP connections to an enrolled workload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InboundMode {
    /// Anyone; connections from outside the mesh are counted (`bypass_allowed`).
    #[default]
    Permissive,
    /// Only this node's daemon (i.e. meshed, authenticated traffic); anything else is
    /// dropped in the kernel and counted (`bypass_dropped`).
    Strict,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundConfig {
    /// Mode of every workload without a more specific one. Default PERMISSIVE, as Istio.
    pub mode: Option<InboundMode>,
    /// Per-namespace modes.
    #[serde(default)]
    pub namespaces: BTreeMap<String, InboundMode>,
    /// Extra source addresses treated as this node (the node's own addresses always are).
    #[serde(default)]
    pub trusted_sources: Vec<IpAddr>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HboneConfig {
    /// Port of the HBONE (mTLS) listener on every node address.
    pub port: Option<u16>,
    /// Pool tunnels per (source identity, node, destination identity); off means one
    /// TLS handshake per connection.
    #[serde(default = "yes")]
    pub reuse_connections: bool,
}

impl Default for HboneConfig {
    fn default() -> Self {
        HboneConfig {
            port: None,
            reuse_connections: true,
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaptureConfig {
    /// IPv4 address that enrolled IPv4 connects are redirected to (an address of this
    /// node). Without it, IPv4 connects of enrolled workloads are refused.
    pub ipv4: Option<Ipv4Addr>,
    /// IPv6 address for IPv6 connects. Without it, IPv6 connects are refused.
    pub ipv6: Option<Ipv6Addr>,
    #[serde(default)]
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BpfConfig {
    /// Where programs and maps are pinned (on bpffs). Default /sys/fs/bpf/mesh.
    pub pin_dir: Option<PathBuf>,
    /// The cgroup v2 directory the programs attach to (absolute, or relative to the
    /// cgroup2 mount). Default: the cgroup2 root, i.e. the whole host.
    pub cgroup: Option<PathBuf>,
    /// Put captured sockets into the kernel socket map (`MESH_SOCKS`) and count their
    /// bytes with `sk_msg`. Default off, and best left off: a socket in a socket map gets
    /// EAGAIN from a blocking `recv` after its own half-close (tcp_bpf_recvmsg), which
    /// breaks ordinary applications (docs/architecture.md, "In-kernel splice").
    #[serde(default)]
    pub socket_map: bool,
    /// Refuse, in `connect()` with EPERM, the connections that policy denies and that this
    /// node can already decide (the destination daemon enforces them all anyway).
    #[serde(default = "yes")]
    pub policy_fast_path: bool,
    /// Same-node acceleration: the bytes of a connection to a workload of this node (or to
    /// a passthrough destination) move between the daemon's two sockets with `splice(2)`,
    /// inside the kernel, instead of being copied through the daemon. Default on. The
    /// `sk_msg` socket-map splice is not used: on the kernels measured it breaks ordinary
    /// applications (docs/architecture.md, "In-kernel splice").
    #[serde(default = "yes")]
    pub splice: bool,
}

impl Default for BpfConfig {
    fn default() -> Self {
        BpfConfig {
            pin_dir: None,
            cgroup: None,
            socket_map: false,
            policy_fast_path: true,
            splice: true,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Exclusions {
    /// Destination CIDRs that are never captured.
    #[serde(default)]
    pub cidrs: Vec<String>,
    /// Destination ports that are never captured.
    #[serde(default)]
    pub ports: Vec<u16>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeConfig {
    pub name: String,
    /// Addresses other nodes reach this node's daemon on.
    pub addresses: Vec<IpAddr>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadConfig {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default = "default_service_account")]
    pub service_account: String,
    /// The node the workload runs on.
    pub node: String,
    pub ips: Vec<IpAddr>,
    /// cgroup v2 directory of the workload (absolute, or relative to the cgroup2 mount);
    /// required for, and only allowed on, workloads of this node.
    pub cgroup: Option<PathBuf>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Overrides `inbound.mode` and `inbound.namespaces` for this workload.
    pub inbound_mode: Option<InboundMode>,
}

fn default_trust_domain() -> String {
    DEFAULT_TRUST_DOMAIN.to_string()
}
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

fn default_root_namespace() -> String {
    DEFAULT_ROOT_NAMESPACE.to_string()
}
fn default_namespace() -> String {
    "default".to_string()
}
fn default_service_account() -> String {
    "default".to_string()
}

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format!("{}ms", d.as_millis())),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        super::parse_duration(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

/// "250ms", "10s", "2m", "24h", "365d".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (num, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| text.split_at(i))
        .ok_or_else(|| format!("duration {text:?} has no unit (use ms, s, m, h or d)"))?;
    let n: u64 = num
        .parse()
        .map_err(|_| format!("duration {text:?} does not start with a number"))?;
    let scale = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "duration {text:?}: unknown unit {unit:?} (use ms, s, m, h or d)"
            ))
        }
    };
    n.checked_mul(scale)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("duration {text:?} is too long"))
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config field `{field}`: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses YAML; the message names the unknown or mistyped field and its line.
    pub fn parse(text: &str) -> Result<Config, String> {
        serde_norway::from_str(text).map_err(|e| e.to_string())
    }

    pub fn capture_port(&self) -> u16 {
        self.capture.port.unwrap_or(DEFAULT_CAPTURE_PORT)
    }

    pub fn hbone_port(&self) -> u16 {
        self.hbone.port.unwrap_or(DEFAULT_HBONE_PORT)
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.identity
            .ca_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CA_DIR))
    }

    pub fn svid_ttl(&self) -> Duration {
        self.identity.svid_ttl.unwrap_or(DEFAULT_SVID_TTL)
    }

    pub fn pin_dir(&self) -> PathBuf {
        self.bpf
            .pin_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_DIR))
    }

    pub fn drain_timeout(&self) -> Duration {
        self.drain_timeout.unwrap_or(DEFAULT_DRAIN_TIMEOUT)
    }

    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT)
    }

    /// Capture listener addresses.
    pub fn capture_addrs(&self) -> Vec<SocketAddr> {
        let port = self.capture_port();
        let v4 = self.capture.ipv4.map(|ip| SocketAddr::new(ip.into(), port));
        let v6 = self.capture.ipv6.map(|ip| SocketAddr::new(ip.into(), port));
        v4.into_iter().chain(v6).collect()
    }

    /// Checks everything that can be checked without touching the kernel, except the
    /// file system facts (cgroups) which `state::MeshState::build` checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_name("node", &self.node)?;
        check_trust_domain(&self.trust_domain)?;
        if self.capture.ipv4.is_none() && self.capture.ipv6.is_none() {
            return Err(invalid(
                "capture",
                "set capture.ipv4 and/or capture.ipv6 (an address of this node)",
            ));
        }
        if self.identity.ca_dir.is_some() && self.identity.ca.is_some() {
            return Err(invalid(
                "identity",
                "set identity.caDir (in-process CA) or identity.ca (remote CA), not both",
            ));
        }
        if self.hbone.port == Some(0) {
            return Err(invalid("hbone.port", "must be between 1 and 65535"));
        }
        if self.identity.svid_ttl.is_some_and(|t| t < Duration::from_secs(2)) {
            return Err(invalid("identity.svidTtl", "must be at least 2s"));
        }
        if self.capture.port == Some(0) {
            return Err(invalid("capture.port", "must be between 1 and 65535"));
        }
        for (i, cidr) in self.exclusions.cidrs.iter().enumerate() {
            cidr.parse::<IpNet>().map_err(|e| {
                invalid(
                    format!("exclusions.cidrs[{i}]"),
                    format!("{cidr:?} is not a CIDR: {e}"),
                )
            })?;
        }
        for (i, port) in self.exclusions.ports.iter().enumerate() {
            if *port == 0 {
                return Err(invalid(format!("exclusions.ports[{i}]"), "port 0 is not a port"));
            }
        }
        for ns in self.inbound.namespaces.keys() {
            check_name(&format!("inbound.namespaces.{ns}"), ns)?;
        }
        let mut node_names = HashMap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            check_name(&format!("nodes[{i}].name"), &node.name)?;
            if let Some(j) = node_names.insert(node.name.as_str(), i) {
                return Err(invalid(
                    format!("nodes[{i}].name"),
                    format!("node {:?} is already defined at nodes[{j}]", node.name),
                ));
            }
            if node.addresses.is_empty() {
                return Err(invalid(
                    format!("nodes[{i}].addresses"),
                    "a node needs at least one address",
                ));
            }
        }
        if !node_names.contains_key(self.node.as_str()) {
            return Err(invalid("node", format!("{:?} is not one of `nodes`", self.node)));
        }
        let mut ips: HashMap<IpAddr, String> = HashMap::new();
        let mut names: HashMap<(String, String), usize> = HashMap::new();
        for (i, w) in self.workloads.iter().enumerate() {
            let at = format!("workloads[{i}]");
            check_name(&format!("{at}.name"), &w.name)?;
            check_name(&format!("{at}.namespace"), &w.namespace)?;
            check_name(&format!("{at}.serviceAccount"), &w.service_account)?;
            if let Some(j) = names.insert((w.namespace.clone(), w.name.clone()), i) {
                return Err(invalid(
                    format!("{at}.name"),
                    format!(
                        "workload {}/{} is already defined at workloads[{j}]",
                        w.namespace, w.name
                    ),
                ));
            }
            if !node_names.contains_key(w.node.as_str()) {
                return Err(invalid(
                    format!("{at}.node"),
                    format!("{:?} is not one of `nodes`", w.node),
                ));
            }
            if w.ips.is_empty() {
                return Err(invalid(format!("{at}.ips"), "a workload needs at least one IP"));
            }
            for (k, ip) in w.ips.iter().enumerate() {
                if let Some(other) = ips.insert(*ip, at.clone()) {
                    return Err(invalid(
                        format!("{at}.ips[{k}]"),
                        format!("duplicate IP {ip}: also used by {other}"),
                    ));
                }
            }
            let local = w.node == self.node;
            match (&w.cgroup, local) {
                (None, true) => {
                    return Err(invalid(
                        format!("{at}.cgroup"),
                        "required for a workload on this node (its cgroup v2 directory)",
                    ))
                }
                (Some(_), false) => {
                    return Err(invalid(
                        format!("{at}.cgroup"),
                        format!(
                            "only workloads on this node ({}) have a cgroup here; this one is on {}",
                            self.node, w.node
                        ),
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// A DNS label (RFC 1123), as Kubernetes names are.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn check_name(field: &str, name: &str) -> Result<(), ConfigError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{name:?} is not a valid name (lowercase letters, digits and '-', at most 63)"),
        ))
    }
}

fn check_trust_domain(td: &str) -> Result<(), ConfigError> {
    let ok = !td.is_empty()
        && td.len() <= 255
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "trustDomain",
            format!("{td:?} is not a valid SPIFFE trust domain (lowercase letters, digits, '.', '-', '_')"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
node: n1
capture: { ipv4: 10.0.0.1 }
nodes:
  - { name: n1, addresses: [10.0.0.1] }
  - { name: n2, addresses: [10.0.0.2] }
workloads:
  - { name: a, node: n1, ips: [10.1.0.2], cgroup: /x }
  - { name: b, node: n2, ips: [10.2.0.2] }
"#;

    fn err(yaml: &str) -> String {
        match Config::parse(yaml) {
            Err(e) => e,
            Ok(c) => c.validate().expect_err("config should be invalid").to_string(),
        }
    }

    #[test]
    fn good_config_validates() {
        let c = Config::parse(GOOD).unwrap();
        c.validate().unwrap();
        assert!(
            c.bpf.policy_fast_path,
            "the policy fast path is on unless turned off"
        );
    }

    #[test]
    fn unknown_field_is_named() {
        let e = err(&GOOD.replace("capture:", "captrue:"));
        assert!(e.contains("captrue"), "{e}");
        let e = err(&GOOD.replace("ips: [10.2.0.2]", "ips: [10.2.0.2], colour: red"));
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn duplicate_ip_names_both_workloads() {
        let e = err(&GOOD.replace("10.2.0.2", "10.1.0.2"));
        assert!(
            e.contains("workloads[1].ips[0]") && e.contains("workloads[0]"),
            "{e}"
        );
    }

    #[test]
    fn local_workload_needs_cgroup_and_remote_must_not_have_one() {
        let e = err(&GOOD.replace(", cgroup: /x", ""));
        assert!(e.contains("workloads[0].cgroup"), "{e}");
        let e = err(&GOOD.replace("ips: [10.2.0.2]", "ips: [10.2.0.2], cgroup: /y"));
        assert!(e.contains("workloads[1].cgroup"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        for (from, to, field) in [
            ("node: n1", "node: n9", "`node`"),
            ("name: b,", "name: B,", "workloads[1].name"),
            ("node: n2, ips", "node: n7, ips", "workloads[1].node"),
            ("capture: { ipv4: 10.0.0.1 }", "capture: {}", "`capture`"),
            (
                "capture: { ipv4: 10.0.0.1 }",
                "capture: { ipv4: 10.0.0.1, port: 0 }",
                "capture.port",
            ),
            ("node: n1\n", "node: n1\ntrustDomain: Foo.org\n", "trustDomain"),
            (
                "node: n1\n",
                "node: n1\nexclusions: { cidrs: [10.0.0.0/33] }\n",
                "exclusions.cidrs[0]",
            ),
            (
                "{ name: n2, addresses: [10.0.0.2] }",
                "{ name: n1, addresses: [10.0.0.2] }",
                "nodes[1].name",
            ),
        ] {
            let yaml = GOOD.replacen(from, to, 1);
            assert_ne!(yaml, GOOD, "replacement {from:?} did not apply");
            let e = err(&yaml);
            assert!(e.contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn mistyped_ip_is_reported() {
        let e = err(&GOOD.replace("10.2.0.2", "10.2.0.300"));
        assert!(e.contains("workloads") || e.contains("line"), "{e}");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("3s").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("3").is_err());
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(2 * 86_400));
        assert!(parse_duration("3w").is_err());
    }
}
