//! The trust bundle: the root certificates an SVID must chain to. It may hold several roots
//! so that a root can be rotated without a flag day; an empty bundle trusts no one.
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read trust bundle {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("trust bundle{} is not valid PEM: {source}", at(.path))]
    Pem {
        path: Option<PathBuf>,
        source: rustls_pki_types::pem::Error,
    },
    #[error("trust bundle{} has no CERTIFICATE block", at(.path))]
    Empty { path: Option<PathBuf> },
    #[error("certificate #{index} of trust bundle{} is not a valid certificate: {reason}", at(.path))]
    Malformed {
        path: Option<PathBuf>,
        index: usize,
        reason: String,
    },
    #[error(
        "certificate #{index} ({subject}) of trust bundle{} is not a CA certificate (basicConstraints cA is not true)",
        at(.path)
    )]
    NotCa {
        path: Option<PathBuf>,
        index: usize,
        subject: String,
    },
}

fn at(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| format!(" {}", p.display()))
        .unwrap_or_default()
}

#[derive(Clone, Debug, Default)]
pub struct TrustBundle {
    roots: Vec<CertificateDer<'static>>,
}

impl TrustBundle {
    /// Takes the roots as they are; a root webpki cannot use as a trust anchor simply
    /// never matches.
    pub fn new(roots: Vec<CertificateDer<'static>>) -> TrustBundle {
        TrustBundle { roots }
    }

    /// Every CERTIFICATE block of `text` (other blocks are skipped); each must be a CA.
    pub fn from_pem(text: &str) -> Result<TrustBundle, BundleError> {
        parse(text.as_bytes(), None)
    }

    pub fn load(path: &Path) -> Result<TrustBundle, BundleError> {
        let bytes = std::fs::read(path).map_err(|source| BundleError::Read {
            path: path.to_owned(),
            source,
        })?;
        parse(&bytes, Some(path))
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    /// Adds a root (e.g. the next root during a rotation); a root already present is not
    /// added twice.
    pub fn add(&mut self, root: CertificateDer<'static>) {
        if !self.roots.contains(&root) {
            self.roots.push(root);
        }
    }

    /// The bundle as PEM, e.g. to hand to a workload or write next to the CA.
    pub fn to_pem(&self) -> String {
        self.roots
            .iter()
            .map(|r| super::ca::der_to_pem("CERTIFICATE", r))
            .collect()
    }
}

fn parse(bytes: &[u8], path: Option<&Path>) -> Result<TrustBundle, BundleError> {
    let path = || path.map(Path::to_owned);
    let mut roots = Vec::new();
    for (index, cert) in CertificateDer::pem_slice_iter(bytes).enumerate() {
        let cert = cert.map_err(|source| BundleError::Pem { path: path(), source })?;
        let (rest, parsed) =
            x509_parser::parse_x509_certificate(&cert).map_err(|e| BundleError::Malformed {
                path: path(),
                index,
                reason: e.to_string(),
            })?;
        if !rest.is_empty() {
            return Err(BundleError::Malformed {
                path: path(),
                index,
                reason: "trailing data".into(),
            });
        }
        let is_ca = matches!(parsed.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
        if !is_ca {
            return Err(BundleError::NotCa {
                path: path(),
                index,
                subject: parsed.subject().to_string(),
            });
        }
        roots.push(cert);
    }
    if roots.is_empty() {
        return Err(BundleError::Empty { path: path() });
    }
    Ok(TrustBundle { roots })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::ca::CaRoot;
    use std::time::Duration;

    #[test]
    fn from_pem_takes_every_root() {
        let a = CaRoot::generate("cluster.local", Duration::from_secs(3600)).unwrap();
        let b = CaRoot::generate("cluster.local", Duration::from_secs(3600)).unwrap();
        let text = format!("# roots\n{}{}", a.cert_pem(), b.cert_pem());
        let bundle = TrustBundle::from_pem(&text).unwrap();
        assert_eq!(bundle.roots(), &[a.cert_der(), b.cert_der()]);
        let again = TrustBundle::from_pem(&bundle.to_pem()).unwrap();
        assert_eq!(again.roots(), bundle.roots());
    }

    #[test]
    fn from_pem_rejects_empty_and_leaves() {
        assert!(matches!(
            TrustBundle::from_pem("nothing here"),
            Err(BundleError::Empty { .. })
        ));
        let leaf = rcgen::generate_simple_self_signed(vec!["leaf.example".to_owned()]).unwrap();
        let err = TrustBundle::from_pem(&leaf.cert.pem()).unwrap_err();
        assert!(matches!(err, BundleError::NotCa { index: 0, .. }), "{err}");
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bundle.pem");
        let err = TrustBundle::load(&path).unwrap_err().to_string();
        assert!(err.contains("bundle.pem"), "{err}");
        std::fs::write(&path, "junk").unwrap();
        let err = TrustBundle::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("bundle.pem") && err.contains("no CERTIFICATE"),
            "{err}"
        );
    }
}
