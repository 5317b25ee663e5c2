//! The baselines the mesh is compared with, each a real process in a lab node's
//! namespace: `socat` and `haproxy` as plain user-space TCP hops on node1 (between the
//! unenrolled pods `bc` and `bs`), and a `stunnel4` pair (client on node1, server on
//! node2) as the mutual-TLS peer of the cross-node scenarios. All of them set
//! TCP_NODELAY, as the mesh does.
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

use super::lab::{gateway, node_addr, v4, ECHO_PORT, IPERF_PORT};
use crate::{Lab, LabChild, Node, Pod};

const READY: Duration = Duration::from_secs(20);

/// Where a baseline hop forwards to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The echo server of node1's `bs` (same node).
    SameNodeEcho,
    /// The echo server of node2's `bs`.
    CrossNodeEcho,
    /// iperf3 on node2's `bs`.
    CrossNodeIperf,
}

impl Target {
    const ALL: [Target; 3] = [
        Target::SameNodeEcho,
        Target::CrossNodeEcho,
        Target::CrossNodeIperf,
    ];

    fn index(self) -> u16 {
        match self {
            Target::SameNodeEcho => 1,
            Target::CrossNodeEcho => 2,
            Target::CrossNodeIperf => 3,
        }
    }
}

/// A running baseline: where clients connect and which processes do its work.
pub struct Hop {
    pub listen: SocketAddr,
    pub pids: Vec<u32>,
}

pub struct Baselines {
    socat: Vec<(Target, LabChild, SocketAddr)>,
    haproxy: LabChild,
    stunnel_client: LabChild,
    stunnel_server: LabChild,
    node1: Node,
}

/// Ports on node1's pod gateway: 2000N socat, 2100N haproxy, 2200N stunnel client;
/// 2300N the stunnel server on node2.
fn port(base: u16, t: Target) -> u16 {
    base + t.index()
}

impl Baselines {
    pub fn start(lab: &Lab, nodes: &[Node; 4], bs1: &Pod, bs2: &Pod) -> Result<Baselines> {
        let (node1, node2) = (&nodes[0], &nodes[1]);
        let upstream = |t: Target| match t {
            Target::SameNodeEcho => v4(bs1, ECHO_PORT),
            Target::CrossNodeEcho => v4(bs2, ECHO_PORT),
            Target::CrossNodeIperf => v4(bs2, IPERF_PORT),
        };
        let mut socat = Vec::new();
        for t in Target::ALL {
            let listen = gateway(node1, port(20000, t));
            let up = upstream(t);
            let child = lab.spawn_named(
                &format!("socat-{}", t.index()),
                node1.command("socat").args([
                    format!(
                        "TCP4-LISTEN:{},bind={},fork,reuseaddr,backlog=4096,nodelay",
                        listen.port(),
                        listen.ip()
                    ),
                    format!("TCP4:{up},nodelay"),
                ]),
            );
            socat.push((t, child, listen));
        }

        let mut haproxy_cfg = String::from(
            "global\n  maxconn 4096\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n",
        );
        for t in Target::ALL {
            let i = t.index();
            haproxy_cfg += &format!(
                "frontend f{i}\n  bind {}\n  default_backend b{i}\nbackend b{i}\n  server s{i} {}\n",
                gateway(node1, port(21000, t)),
                upstream(t)
            );
        }
        let cfg = lab.write_file("haproxy.cfg", &haproxy_cfg);
        let haproxy = lab.spawn_named("haproxy", node1.command("haproxy").arg("-db").arg("-f").arg(&cfg));

        let certs = StunnelCerts::write(lab)?;
        let tls = [Target::CrossNodeEcho, Target::CrossNodeIperf];
        let mut client_cfg = certs.common("client = yes\n");
        let mut server_cfg = certs.common("");
        for t in tls {
            let i = t.index();
            client_cfg += &format!(
                "[c{i}]\naccept = {}\nconnect = {}\nsocket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n",
                gateway(node1, port(22000, t)),
                node_addr(node2, port(23000, t))
            );
            server_cfg += &format!(
                "[s{i}]\naccept = {}\nconnect = {}\nsocket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n",
                node_addr(node2, port(23000, t)),
                upstream(t)
            );
        }
        let client_path = lab.write_file("stunnel-client.conf", &client_cfg);
        let server_path = lab.write_file("stunnel-server.conf", &server_cfg);
        let stunnel_server = lab.spawn_named("stunnel-server", node2.command("stunnel4").arg(&server_path));
        let stunnel_client = lab.spawn_named("stunnel-client", node1.command("stunnel4").arg(&client_path));

        let baselines = Baselines {
            socat,
            haproxy,
            stunnel_client,
            stunnel_server,
            node1: node1.clone(),
        };
        for (_, child, listen) in &baselines.socat {
            wait_listening(&node1.netns, *listen, child)?;
        }
        for t in Target::ALL {
            wait_listening(&node1.netns, gateway(node1, port(21000, t)), &baselines.haproxy)?;
        }
        for t in tls {
            wait_listening(
                &node2.netns,
                node_addr(node2, port(23000, t)),
                &baselines.stunnel_server,
            )?;
            wait_listening(
                &node1.netns,
                gateway(node1, port(22000, t)),
                &baselines.stunnel_client,
            )?;
        }
        Ok(baselines)
    }

    pub fn socat(&self, t: Target) -> Hop {
        let (_, child, listen) = self
            .socat
            .iter()
            .find(|(x, _, _)| *x == t)
            .expect("a socat per target");
        Hop {
            listen: *listen,
            pids: vec![child.pid()],
        }
    }

    pub fn haproxy(&self, t: Target) -> Hop {
        Hop {
            listen: gateway(&self.node1, port(21000, t)),
            pids: vec![self.haproxy.pid()],
        }
    }

    /// The stunnel pair; only for the cross-node targets.
    pub fn stunnel(&self, t: Target) -> Hop {
        assert_ne!(t, Target::SameNodeEcho, "stunnel is the cross-node TLS baseline");
        Hop {
            listen: gateway(&self.node1, port(22000, t)),
            pids: vec![self.stunnel_client.pid(), self.stunnel_server.pid()],
        }
    }
}

/// A mesh-like PKI for stunnel: a CA and ECDSA P-256 certificates for both ends,
/// verified both ways, TLS 1.3 only (what the mesh's HBONE uses).
struct StunnelCerts {
    ca: std::path::PathBuf,
    client: (std::path::PathBuf, std::path::PathBuf),
    server: (std::path::PathBuf, std::path::PathBuf),
}

impl StunnelCerts {
    fn write(lab: &Lab) -> Result<StunnelCerts> {
        let ca_key = KeyPair::generate().context("stunnel CA key")?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // rcgen's default subject is the same for every certificate; a leaf whose subject
        // equals its issuer's looks self-signed to OpenSSL, which then rejects it.
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "bench stunnel CA");
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let ca = lab.write_file("stunnel-ca.pem", &ca_cert.pem());
        let leaf = |name: &str| -> Result<(std::path::PathBuf, std::path::PathBuf)> {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(vec![format!("{name}.bench.mesh.local")])?;
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, format!("{name}.bench.mesh.local"));
            let cert = params.signed_by(&key, &issuer)?;
            Ok((
                lab.write_file(&format!("stunnel-{name}.pem"), &cert.pem()),
                lab.write_file(&format!("stunnel-{name}-key.pem"), &key.serialize_pem()),
            ))
        };
        Ok(StunnelCerts {
            client: leaf("client")?,
            server: leaf("server")?,
            ca,
        })
    }

    /// The global part of a config; `extra` is `client = yes` for the client end.
    fn common(&self, extra: &str) -> String {
        let (cert, key) = if extra.is_empty() {
            &self.server
        } else {
            &self.client
        };
        let p = |p: &Path| p.display().to_string();
        format!(
            "foreground = yes\npid =\nsyslog = no\ndebug = 4\n{extra}cert = {}\nkey = {}\nCAfile = {}\nverifyChain = yes\nsslVersionMin = TLSv1.3\n",
            p(cert),
            p(key),
            p(&self.ca)
        )
    }
}

/// Waits until something accepts TCP on `addr` inside `netns`; fails early if `child`
/// exits (a bad config), with its output.
fn wait_listening(netns: &crate::Netns, addr: SocketAddr, child: &LabChild) -> Result<()> {
    let deadline = Instant::now() + READY;
    loop {
        let up =
            netns.run(|| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok());
        if up {
            return Ok(());
        }
        if let Some(status) = child.try_wait() {
            bail!(
                "{} exited with {status} before listening on {addr}:\n{}{}",
                child.name(),
                child.stdout().text(),
                child.stderr().text()
            );
        }
        if Instant::now() > deadline {
            bail!("{} is not listening on {addr} after {READY:?}", child.name());
        }
        // Readiness poll of a socket that is not there yet: nothing to wait on but time.
        std::thread::sleep(Duration::from_millis(10));
    }
}
