//! Authorization of the CA's callers: which node may obtain which workload identity. The
//! mesh config is the only source; it is rebuilt whole on reload, never edited in place.
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::config::{Config, ConfigError};
use crate::identity::Identity;

/// How often [`watch`] looks at the config file.
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "mesh config {path} is for trust domain {config:?} but the ca root is for {root:?}: \
         point the ca at this mesh's config or its root (--dir)"
    )]
    TrustDomain {
        path: PathBuf,
        config: String,
        root: String,
    },
}

/// The placement of workload identities on nodes, from a validated mesh config.
#[derive(Debug, Clone, Default)]
pub struct MeshAuth {
    trust_domain: String,
    /// node name -> (namespace, service account) of the workloads it hosts.
    placements: HashMap<String, BTreeSet<(String, String)>>,
    /// Every node of the mesh, hosting workloads or not.
    nodes: BTreeSet<String>,
}

impl MeshAuth {
    /// Builds the placements from `config`, after `config.validate()`.
    pub fn from_config(config: &Config) -> Result<MeshAuth, ConfigError> {
        config.validate()?;
        let mut placements: HashMap<String, BTreeSet<(String, String)>> = HashMap::new();
        for w in &config.workloads {
            placements
                .entry(w.node.clone())
                .or_default()
                .insert((w.namespace.clone(), w.service_account.clone()));
        }
        Ok(MeshAuth {
            trust_domain: config.trust_domain.clone(),
            placements,
            nodes: config.nodes.iter().map(|n| n.name.clone()).collect(),
        })
    }

    /// Loads and validates the mesh config at `path`; it must be for `trust_domain` (the
    /// CA root's).
    pub fn load(path: &Path, trust_domain: &str) -> Result<MeshAuth, AuthError> {
        let auth = MeshAuth::from_config(&Config::load(path)?)?;
        if auth.trust_domain != trust_domain {
            return Err(AuthError::TrustDomain {
                path: path.to_owned(),
                config: auth.trust_domain,
                root: trust_domain.to_owned(),
            });
        }
        Ok(auth)
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Whether the config places a workload with `identity` on `node`.
    pub fn hosts(&self, node: &str, identity: &Identity) -> bool {
        identity.trust_domain == self.trust_domain
            && self.placements.get(node).is_some_and(|ids| {
                ids.contains(&(identity.namespace.clone(), identity.service_account.clone()))
            })
    }

    /// Whether `node` is a node of the mesh (so it may renew its credential).
    pub fn has_node(&self, node: &str) -> bool {
        self.nodes.contains(node)
    }
}

/// Polls the mesh config at `path` and replaces `*mesh` when the file changed and the new
/// version is valid; an invalid file is logged and the previous placements stay. The
/// content at the time of the call is the baseline; the future runs until dropped.
pub fn watch(
    path: PathBuf,
    mesh: Arc<RwLock<MeshAuth>>,
    trust_domain: String,
    interval: Duration,
) -> impl std::future::Future<Output = ()> + Send {
    // The content, not the mtime: two writes within the file system's timestamp
    // granularity must not hide the second one. Mesh configs are small.
    let mut seen = std::fs::read(&path).ok();
    async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let now = std::fs::read(&path).ok();
            if now == seen {
                continue;
            }
            seen = now;
            match MeshAuth::load(&path, &trust_domain) {
                Ok(auth) => {
                    let nodes = auth.nodes.len();
                    *mesh.write().unwrap_or_else(|e| e.into_inner()) = auth;
                    tracing::info!(path = %path.display(), nodes, "mesh config reloaded");
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "mesh config change rejected, keeping the previous one")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::ca::tests::CONFIG;

    fn id(ns: &str, sa: &str) -> Identity {
        Identity::new("cluster.local", ns, sa).unwrap()
    }

    #[test]
    fn places_identities_on_their_nodes() {
        let auth = MeshAuth::from_config(&Config::parse(CONFIG).unwrap()).unwrap();
        assert!(auth.hosts("node-a", &id("shop", "web")));
        assert!(!auth.hosts("node-a", &id("shop", "db")));
        assert!(auth.hosts("node-b", &id("shop", "db")));
        assert!(!auth.hosts("node-c", &id("shop", "web")));
        assert!(!auth.hosts("node-z", &id("shop", "web")));
        assert!(!auth.hosts("node-a", &Identity::new("other.td", "shop", "web").unwrap()));
        assert!(auth.has_node("node-d") && !auth.has_node("node-z"));
    }

    #[test]
    fn load_checks_the_trust_domain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.yaml");
        std::fs::write(&path, CONFIG).unwrap();
        assert!(MeshAuth::load(&path, "cluster.local").is_ok());
        let err = MeshAuth::load(&path, "other.td").unwrap_err().to_string();
        assert!(err.contains("other.td") && err.contains("mesh.yaml"), "{err}");
    }

    #[tokio::test]
    async fn watch_reloads_valid_changes_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.yaml");
        std::fs::write(&path, CONFIG).unwrap();
        let mesh = Arc::new(RwLock::new(MeshAuth::load(&path, "cluster.local").unwrap()));
        let task = tokio::spawn(watch(
            path.clone(),
            mesh.clone(),
            "cluster.local".into(),
            Duration::from_millis(20),
        ));
        let moved = CONFIG.replace("node: node-a, ips: [10.1.0.1]", "node: node-b, ips: [10.1.0.1]");
        std::fs::write(&path, &moved).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !mesh.read().unwrap().hosts("node-b", &id("shop", "web")) {
            assert!(tokio::time::Instant::now() < deadline, "reload not seen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        std::fs::write(&path, "nodes: [").unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(mesh.read().unwrap().hosts("node-b", &id("shop", "web")));
        task.abort();
    }
}
