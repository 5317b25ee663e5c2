//! Workload identity: SPIFFE IDs (`spiffe`), the mesh CA core (`ca`), trust bundles
//! (`bundle`), X.509-SVID validation (`svid`) and the rustls configurations HBONE uses
//! (`tls`). Everything is ECDSA P-256 with the ring provider; nothing installs a
//! process-wide crypto provider.
pub mod bundle;
pub mod ca;
pub mod spiffe;
pub mod svid;
#[doc(hidden)]
pub mod testing;
pub mod tls;

pub use bundle::{BundleError, TrustBundle};
pub use ca::{generate_csr, generate_node_csr, CaError, CaRoot};
pub use spiffe::{node_identity_uri, parse_node_identity, Identity, IdentityError};
pub use svid::{verify_node_credential, verify_svid, Svid, SvidError, Usage};
pub use tls::{
    client_config, peer_identity, server_config, server_name, shared_bundle, SharedBundle, SvidSource,
    SvidStore, TlsError,
};
