//! Offline issuance of a node credential (`mesh-node ca issue-node`), on the host that
//! holds the CA directory.
//!
//! The node's key is generated here, on the CA host, and must then be moved to the node
//! (e.g. as a Kubernetes Secret or by the provisioning tool); it is written 0600. Once a
//! node runs, it can renew its credential over the network (SignNode) without its key
//! leaving it.
use std::fs::{DirBuilder, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{NODE_CERT_FILE, NODE_KEY_FILE, ROOT_CERT_FILE};
use crate::identity::ca::der_to_pem;
use crate::identity::{generate_node_csr, CaError, CaRoot};

#[derive(Debug, thiserror::Error)]
pub enum IssueNodeError {
    #[error("cannot load the ca root from {dir}: {source} (create one with mesh-node ca init)")]
    Root { dir: PathBuf, source: CaError },
    #[error("cannot issue a credential for node {node:?}: {source}")]
    Issue { node: String, source: CaError },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// What `issue_node` wrote.
#[derive(Debug, Clone)]
pub struct IssuedNode {
    /// `spiffe://<td>/node/<name>`.
    pub uri: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub root: PathBuf,
    pub not_after: SystemTime,
}

/// Issues a credential for node `node` from the CA in `dir`: writes `<out>/node.pem` (the
/// certificate), `<out>/node-key.pem` (its new key, 0600) and `<out>/root.pem` (the mesh
/// root, to verify the CA with). `out` is created 0700 if missing; existing files are
/// replaced.
pub fn issue_node(dir: &Path, node: &str, out: &Path, ttl: Duration) -> Result<IssuedNode, IssueNodeError> {
    let root = CaRoot::load(dir).map_err(|source| IssueNodeError::Root {
        dir: dir.to_owned(),
        source,
    })?;
    let issue_err = |source| IssueNodeError::Issue {
        node: node.to_owned(),
        source,
    };
    let (csr, key) = generate_node_csr(root.trust_domain(), node).map_err(issue_err)?;
    let cert = root.sign_node_csr(&csr, node, ttl).map_err(issue_err)?;
    let not_after = x509_parser::parse_x509_certificate(&cert)
        .map(|(_, c)| crate::identity::ca::to_system_time(c.validity().not_after.timestamp()))
        .unwrap_or(SystemTime::UNIX_EPOCH);

    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(out)
        .map_err(|source| IssueNodeError::Write {
            path: out.to_owned(),
            source,
        })?;
    let issued = IssuedNode {
        uri: crate::identity::node_identity_uri(root.trust_domain(), node),
        cert: out.join(NODE_CERT_FILE),
        key: out.join(NODE_KEY_FILE),
        root: out.join(ROOT_CERT_FILE),
        not_after,
    };
    // The key first: a certificate without its key is useless, the reverse is harmless.
    write_atomic(
        &issued.key,
        der_to_pem("PRIVATE KEY", key.secret_der()).as_bytes(),
        0o600,
    )?;
    write_atomic(&issued.cert, der_to_pem("CERTIFICATE", &cert).as_bytes(), 0o644)?;
    write_atomic(&issued.root, root.cert_pem().as_bytes(), 0o644)?;
    Ok(issued)
}

/// Writes a new file with `mode` from its creation, then renames it over `path`, so a
/// reader never sees a partial file and a key is never readable by others, even briefly.
fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), IssueNodeError> {
    let err = |source| IssueNodeError::Write {
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    let written = file
        .write_all(contents)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{verify_node_credential, TrustBundle};
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn writes_a_verifiable_credential() {
        let tmp = tempfile::tempdir().unwrap();
        let ca_dir = tmp.path().join("ca");
        CaRoot::init(&ca_dir, "cluster.local").unwrap();
        let out = tmp.path().join("node-1");
        let issued = issue_node(&ca_dir, "node-1", &out, Duration::from_secs(3600)).unwrap();
        assert_eq!(issued.uri, "spiffe://cluster.local/node/node-1");
        let mode = |p: &Path| p.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&issued.key), 0o600);
        assert_eq!(mode(&out), 0o700);

        let cert = CertificateDer::from_pem_file(&issued.cert).unwrap();
        PrivateKeyDer::from_pem_file(&issued.key).unwrap();
        let bundle = TrustBundle::load(&issued.root).unwrap();
        let node = verify_node_credential(&[cert], &bundle, "cluster.local", SystemTime::now()).unwrap();
        assert_eq!(node, "node-1");
        assert!(issued.not_after > SystemTime::now());

        // Reissuing replaces the files.
        issue_node(&ca_dir, "node-1", &out, Duration::from_secs(3600)).unwrap();
        assert_eq!(mode(&issued.key), 0o600);
        assert!(!out.join("node-key.pem.tmp").exists());
    }

    #[test]
    fn errors_name_the_problem() {
        let tmp = tempfile::tempdir().unwrap();
        let err = issue_node(tmp.path(), "n", tmp.path(), Duration::from_secs(60)).unwrap_err();
        assert!(err.to_string().contains("mesh-node ca init"), "{err}");
        CaRoot::init(tmp.path(), "cluster.local").unwrap();
        let err = issue_node(tmp.path(), "..", &tmp.path().join("o"), Duration::from_secs(60)).unwrap_err();
        assert!(err.to_string().contains("\"..\""), "{err}");
    }
}
