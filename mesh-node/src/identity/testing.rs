//! A deterministic test PKI for unit and in-process tests (this crate's and HBONE's): a CA
//! per trust domain and SVIDs signed by it. Panics on error, as test fixtures do.
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::bundle::TrustBundle;
use super::ca::{generate_csr, CaRoot};
use super::spiffe::Identity;
use super::svid::Svid;
use super::tls::{shared_bundle, SharedBundle, SvidStore};

#[doc(hidden)]
#[derive(Debug)]
pub struct TestPki {
    pub ca: CaRoot,
    /// A bundle holding just this CA's root.
    pub bundle: TrustBundle,
}

/// `test_pki("cluster.local")`: a fresh root for that trust domain, valid for a day.
#[doc(hidden)]
pub fn test_pki(trust_domain: &str) -> TestPki {
    let ca = CaRoot::generate(trust_domain, Duration::from_secs(24 * 3600)).expect("generate test CA");
    let bundle = TrustBundle::new(vec![ca.cert_der()]);
    TestPki { ca, bundle }
}

impl TestPki {
    pub fn trust_domain(&self) -> String {
        self.ca.trust_domain().to_owned()
    }

    pub fn identity(&self, namespace: &str, service_account: &str) -> Identity {
        Identity::new(self.ca.trust_domain(), namespace, service_account).expect("valid test identity")
    }

    /// An SVID for `<namespace>/<service_account>`, valid for an hour.
    pub fn svid(&self, namespace: &str, service_account: &str) -> Svid {
        self.svid_for(
            self.identity(namespace, service_account),
            Duration::from_secs(3600),
        )
    }

    pub fn svid_for(&self, identity: Identity, ttl: Duration) -> Svid {
        let (csr, key) = generate_csr(&identity).expect("generate test CSR");
        let leaf = self.ca.sign_csr(&csr, &identity, ttl).expect("sign test CSR");
        Svid::new(identity, vec![leaf], key, &self.bundle, SystemTime::now()).expect("valid test SVID")
    }

    pub fn shared_bundle(&self) -> SharedBundle {
        shared_bundle(self.bundle.clone())
    }

    /// A store serving `svids`, for `server_config`.
    pub fn store(&self, svids: &[&Svid]) -> Arc<SvidStore> {
        let store = SvidStore::new();
        for svid in svids {
            store.insert(svid).expect("usable test SVID");
        }
        Arc::new(store)
    }
}
