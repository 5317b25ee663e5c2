//! The workload certificates of this node.
//!
//! For every identity of a local workload the manager generates a key here (it never
//! leaves the process), has a CSR signed by the mesh CA, and keeps the SVID. It renews
//! at half life (with jitter, and capped exponential backoff while the CA is
//! unreachable), keeps a still-valid SVID when renewal fails, and stops handing out an
//! SVID once it has expired: that workload's meshed traffic then fails closed.
use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use rustls::{pki_types::CertificateDer, sign::CertifiedKey};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::identity::{
    ca::{generate_csr, CaRoot},
    tls::{SharedBundle, SvidSource},
    Identity, Svid, TrustBundle,
};

/// Who signs the node's CSRs.
pub enum Issuer {
    /// The CA root is held by this process (single node, or a lab sharing a root).
    InProcess(Box<CaRoot>),
    /// `mesh-node ca serve`, reached with this node's credential.
    Remote(Box<crate::ca::CaClient>),
}

impl Issuer {
    async fn sign(
        &self,
        csr: &[u8],
        identity: &Identity,
        ttl: Duration,
    ) -> Result<Vec<CertificateDer<'static>>, String> {
        match self {
            Issuer::InProcess(root) => root
                .sign_csr(csr, identity, ttl)
                .map(|leaf| vec![leaf])
                .map_err(|e| e.to_string()),
            Issuer::Remote(client) => client
                .sign_workload(csr, identity, ttl)
                .await
                .map_err(|e| e.to_string()),
        }
    }

    /// The CA's current roots, for the trust bundle (rotation).
    async fn roots(&self) -> Option<Vec<CertificateDer<'static>>> {
        match self {
            Issuer::InProcess(_) => None,
            Issuer::Remote(client) => match client.roots().await {
                Ok(roots) => Some(roots),
                Err(e) => {
                    warn!(error = %e, "fetching the trust bundle from the CA failed, keeping the current one");
                    None
                }
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("obtaining an SVID for {identity}: {message}")]
    Issue { identity: Identity, message: String },
}

struct Entry {
    svid: Svid,
    key: Arc<CertifiedKey>,
    /// `identity.sni()`, computed once: the TLS server looks it up on every handshake.
    sni: String,
    /// When to try renewing next.
    renew_at: SystemTime,
    failures: u32,
}

pub struct SecretManager {
    issuer: Issuer,
    bundle: SharedBundle,
    ttl: Duration,
    entries: RwLock<HashMap<Identity, Entry>>,
    changed: tokio::sync::Notify,
}

impl std::fmt::Debug for SecretManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretManager")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Half life, minus up to 10 % so that many workloads do not renew in the same instant.
fn renewal_time(svid: &Svid) -> SystemTime {
    let life = svid.not_after.duration_since(svid.not_before).unwrap_or_default();
    let mut b = [0u8; 2];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    let jitter = life.mul_f64(0.1 * f64::from(u16::from_ne_bytes(b)) / f64::from(u16::MAX));
    svid.not_before + life / 2 - jitter
}

/// How often a remote CA is asked for its roots.
const BUNDLE_REFRESH: Duration = Duration::from_secs(30);

/// Retry delay after `failures` failed renewals: doubling from 0.5 s, capped at a minute
/// and at a quarter of the SVID lifetime, so a short-lived SVID is retried often enough
/// to be renewed once the CA is back before it expires.
fn backoff(failures: u32, lifetime: Duration) -> Duration {
    let cap = (lifetime / 4).clamp(Duration::from_millis(250), Duration::from_secs(60));
    Duration::from_millis(500 * 2u64.saturating_pow(failures.min(7))).min(cap)
}

impl SecretManager {
    pub fn new(issuer: Issuer, bundle: SharedBundle, ttl: Duration) -> Arc<SecretManager> {
        Arc::new(SecretManager {
            issuer,
            bundle,
            ttl,
            entries: RwLock::default(),
            changed: Default::default(),
        })
    }

    async fn issue(&self, identity: &Identity) -> Result<Entry, SecretError> {
        let fail = |message: String| SecretError::Issue {
            identity: identity.clone(),
            message,
        };
        let (csr, key) = generate_csr(identity).map_err(|e| fail(e.to_string()))?;
        let chain = self.issuer.sign(&csr, identity, self.ttl).await.map_err(fail)?;
        let bundle = self.bundle.load();
        let svid = Svid::new(identity.clone(), chain, key, &bundle, SystemTime::now())
            .map_err(|e| fail(e.to_string()))?;
        let certified = svid.certified_key().map_err(|e| fail(e.to_string()))?;
        info!(%identity, not_after = ?svid.not_after, "SVID issued");
        Ok(Entry {
            renew_at: renewal_time(&svid),
            sni: identity.sni(),
            svid,
            key: certified,
            failures: 0,
        })
    }

    /// Makes the set of held SVIDs match `wanted`: issues missing ones, drops others.
    pub async fn sync(&self, wanted: &BTreeSet<Identity>) -> Result<(), SecretError> {
        let missing: Vec<Identity> = {
            let entries = self.entries.read().expect("secrets lock");
            wanted
                .iter()
                .filter(|i| !entries.contains_key(*i))
                .cloned()
                .collect()
        };
        for identity in missing {
            let entry = self.issue(&identity).await?;
            self.entries
                .write()
                .expect("secrets lock")
                .insert(identity, entry);
        }
        self.entries
            .write()
            .expect("secrets lock")
            .retain(|i, _| wanted.contains(i));
        self.changed.notify_one();
        Ok(())
    }

    /// The SVID of `identity`, unless it has expired (fail closed).
    pub fn svid(&self, identity: &Identity) -> Option<Svid> {
        let entries = self.entries.read().expect("secrets lock");
        let entry = entries.get(identity)?;
        (!entry.svid.expired_at(SystemTime::now())).then(|| entry.svid.clone())
    }

    /// Every SVID held, expired ones included (for `/certificates` and the metrics).
    pub fn held(&self) -> Vec<Svid> {
        let entries = self.entries.read().expect("secrets lock");
        entries.values().map(|e| e.svid.clone()).collect()
    }

    /// Renews SVIDs until `stop`; with a remote CA, also refreshes the trust bundle.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut bundle_refresh = tokio::time::interval(BUNDLE_REFRESH);
        loop {
            let next = {
                let entries = self.entries.read().expect("secrets lock");
                entries.values().map(|e| e.renew_at).min()
            };
            let wait = next
                .map(|t| t.duration_since(SystemTime::now()).unwrap_or_default())
                .unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.changed.notified() => continue,
                _ = bundle_refresh.tick() => {
                    self.refresh_bundle().await;
                    continue;
                }
                _ = tokio::time::sleep(wait) => {}
            }
            let due: Vec<Identity> = {
                let now = SystemTime::now();
                let entries = self.entries.read().expect("secrets lock");
                entries
                    .iter()
                    .filter(|(_, e)| e.renew_at <= now)
                    .map(|(i, _)| i.clone())
                    .collect()
            };
            for identity in due {
                match self.issue(&identity).await {
                    Ok(entry) => {
                        self.entries
                            .write()
                            .expect("secrets lock")
                            .insert(identity, entry);
                    }
                    Err(e) => {
                        let mut entries = self.entries.write().expect("secrets lock");
                        if let Some(entry) = entries.get_mut(&identity) {
                            entry.failures += 1;
                            let lifetime = entry
                                .svid
                                .not_after
                                .duration_since(entry.svid.not_before)
                                .unwrap_or_default();
                            entry.renew_at = SystemTime::now() + backoff(entry.failures, lifetime);
                            if entry.svid.expired_at(SystemTime::now()) {
                                warn!(%identity, error = %e, "SVID expired and cannot be renewed: this workload's meshed traffic is refused");
                            } else {
                                warn!(%identity, error = %e, not_after = ?entry.svid.not_after, "SVID renewal failed, keeping the current one");
                            }
                        }
                    }
                }
            }
        }
    }
}

impl SecretManager {
    async fn refresh_bundle(&self) {
        let Some(roots) = self.issuer.roots().await else {
            return;
        };
        if roots.is_empty() {
            warn!("the CA returned no roots; keeping the current trust bundle");
            return;
        }
        let current = self.bundle.load();
        if current.roots() != roots.as_slice() {
            info!(roots = roots.len(), "trust bundle updated from the CA");
            self.bundle.store(Arc::new(TrustBundle::new(roots)));
        }
    }
}

impl SvidSource for SecretManager {
    fn svid_for_sni(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        let now = SystemTime::now();
        let entries = self.entries.read().expect("secrets lock");
        entries
            .iter()
            .find(|(_, e)| e.sni == sni && !e.svid.expired_at(now))
            .map(|(_, e)| e.key.clone())
    }
}
