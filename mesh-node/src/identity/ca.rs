//! The mesh CA core: a self-signed ECDSA P-256 root that signs workload SVIDs and node
//! credentials from PKCS#10 CSRs. The CA decides every name in what it issues; a CSR only
//! contributes its public key.
use std::fs::{DirBuilder, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, PublicKeyData as _, SanType, SerialNumber, SubjectPublicKeyInfo,
    PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};

use super::spiffe::{self, node_identity_uri, Identity, IdentityError};

pub const ROOT_CERT_FILE: &str = "root.pem";
pub const ROOT_KEY_FILE: &str = "root-key.pem";
/// Lifetime of a root made by [`CaRoot::init`].
pub const DEFAULT_ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Default lifetime of a workload SVID (design §3).
pub const DEFAULT_SVID_TTL: Duration = Duration::from_secs(24 * 3600);
/// Issued certificates start this far in the past, so a peer whose clock is a little
/// behind still accepts them.
pub const BACKDATE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("cannot {what}: {source}")]
    Rcgen {
        what: &'static str,
        source: rcgen::Error,
    },
    #[error("ttl {ttl:?} is out of range")]
    Ttl { ttl: Duration },
    #[error("cannot create CA directory {path}: {source}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("{path} already exists: refusing to overwrite a CA key (remove it to start a new root)")]
    AlreadyInitialized { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not PEM: {reason}")]
    NotPem { path: PathBuf, reason: String },
    #[error("{path} is not a valid certificate: {reason}")]
    BadCert { path: PathBuf, reason: String },
    #[error("{path} is not a CA certificate (basicConstraints cA is not true)")]
    NotCa { path: PathBuf },
    #[error(
        "{path} does not name a trust domain: the root needs exactly one URI SAN spiffe://<trust-domain>"
    )]
    NoTrustDomain { path: PathBuf },
    #[error("{path} is not a usable ECDSA P-256 private key: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("the key in {key} does not match the certificate in {cert}")]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    #[error("certificate signing request cannot be parsed: {reason}")]
    Csr { reason: String },
    #[error("certificate signing request has an invalid self-signature")]
    CsrSignature,
    #[error("certificate signing request key is not ECDSA P-256: {reason}")]
    CsrKey { reason: String },
    #[error("identity {identity} is not in this CA's trust domain {trust_domain:?}")]
    ForeignTrustDomain { identity: String, trust_domain: String },
}

fn rcgen_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> CaError {
    move |source| CaError::Rcgen { what, source }
}

/// The root certificate and its key.
pub struct CaRoot {
    trust_domain: String,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    not_after: SystemTime,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CaRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaRoot")
            .field("trust_domain", &self.trust_domain)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl CaRoot {
    /// A new self-signed root: cA=true, keyCertSign|cRLSign, URI SAN `spiffe://<td>`.
    pub fn generate(trust_domain: &str, ttl: Duration) -> Result<CaRoot, CaError> {
        spiffe::validate_trust_domain(trust_domain)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rcgen_err("generate a root key"))?;
        let now = SystemTime::now();
        let serial = random_serial()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        // The serial in the name tells two roots apart while a rotation has both in use.
        dn.push(DnType::CommonName, format!("mesh root CA {}", hex(&serial[..4])));
        params.distinguished_name = dn;
        params.subject_alt_names = vec![uri_san(&format!("spiffe://{trust_domain}"))?];
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let not_after = validity(&mut params, now, ttl, None)?;
        let cert = params
            .self_signed(&key)
            .map_err(rcgen_err("self-sign the root"))?;
        Ok(CaRoot {
            trust_domain: trust_domain.to_owned(),
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            not_after,
            issuer: Issuer::new(params, key),
        })
    }

    /// Creates a new root in `dir` (made 0700 if missing): `root.pem` (0644) and
    /// `root-key.pem` (0600 from its creation). Refuses if `root-key.pem` exists.
    pub fn init(dir: &Path, trust_domain: &str) -> Result<CaRoot, CaError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| CaError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        let key_path = dir.join(ROOT_KEY_FILE);
        let cert_path = dir.join(ROOT_CERT_FILE);
        if key_path.symlink_metadata().is_ok() {
            return Err(CaError::AlreadyInitialized { path: key_path });
        }
        let root = CaRoot::generate(trust_domain, DEFAULT_ROOT_TTL)?;
        // create_new: a key that appeared since the check above is not overwritten either.
        let mut key_file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_path)
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::AlreadyExists => CaError::AlreadyInitialized {
                    path: key_path.clone(),
                },
                _ => CaError::Write {
                    path: key_path.clone(),
                    source,
                },
            })?;
        let written = key_file
            .write_all(root.issuer.key().serialize_pem().as_bytes())
            .and_then(|()| key_file.sync_all())
            .map_err(|source| CaError::Write {
                path: key_path.clone(),
                source,
            })
            .and_then(|()| write_public(&cert_path, root.cert_pem.as_bytes()));
        if let Err(e) = written {
            // A key without its certificate would block the next init.
            let _ = std::fs::remove_file(&key_path);
            return Err(e);
        }
        Ok(root)
    }

    /// Loads `dir/root.pem` and `dir/root-key.pem`.
    pub fn load(dir: &Path) -> Result<CaRoot, CaError> {
        let cert_path = dir.join(ROOT_CERT_FILE);
        let key_path = dir.join(ROOT_KEY_FILE);
        let cert_text = read(&cert_path)?;
        let cert_der = CertificateDer::from_pem_slice(&cert_text).map_err(|e| CaError::NotPem {
            path: cert_path.clone(),
            reason: e.to_string(),
        })?;
        let (rest, cert) = X509Certificate::from_der(&cert_der).map_err(|e| CaError::BadCert {
            path: cert_path.clone(),
            reason: e.to_string(),
        })?;
        if !rest.is_empty() {
            return Err(CaError::BadCert {
                path: cert_path,
                reason: "trailing data".into(),
            });
        }
        if !matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca) {
            return Err(CaError::NotCa { path: cert_path });
        }
        let trust_domain = root_trust_domain(&cert).ok_or(CaError::NoTrustDomain {
            path: cert_path.clone(),
        })?;
        let not_after = to_system_time(cert.validity().not_after.timestamp());

        let key_text = read(&key_path)?;
        let key_der = PrivateKeyDer::from_pem_slice(&key_text).map_err(|e| CaError::NotPem {
            path: key_path.clone(),
            reason: e.to_string(),
        })?;
        let key = KeyPair::try_from(&key_der).map_err(|e| CaError::BadKey {
            path: key_path.clone(),
            reason: e.to_string(),
        })?;
        if key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(CaError::BadKey {
                path: key_path,
                reason: "not an ECDSA P-256 key".into(),
            });
        }
        if key.der_bytes() != cert.public_key().subject_public_key.data.as_ref() {
            return Err(CaError::KeyMismatch {
                key: key_path,
                cert: cert_path,
            });
        }
        if let Ok(meta) = key_path.metadata() {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %key_path.display(), "CA key is readable by group or others; chmod 600 it");
            }
        }
        if not_after < SystemTime::now() {
            tracing::warn!(path = %cert_path.display(), "CA root has expired: what it signs is not trusted");
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(|e| CaError::BadCert {
            path: cert_path,
            reason: e.to_string(),
        })?;
        let cert_pem = der_to_pem("CERTIFICATE", &cert_der);
        Ok(CaRoot {
            trust_domain,
            cert_der: cert_der.into_owned(),
            cert_pem,
            not_after,
            issuer,
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// For tests that forge certificates the CA itself would never issue.
    #[cfg(test)]
    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// Signs a CSR (DER) for `identity`. Only the CSR's key is used (after checking its
    /// self-signature); the leaf gets exactly one URI SAN `identity.uri()` and the DNS SAN
    /// `identity.sni()`, cA=false, digitalSignature, serverAuth+clientAuth, and is valid from
    /// one minute ago for `ttl` (cut at the root's own expiry).
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        identity: &Identity,
        ttl: Duration,
    ) -> Result<CertificateDer<'static>, CaError> {
        if identity.trust_domain != self.trust_domain {
            return Err(CaError::ForeignTrustDomain {
                identity: identity.uri(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        let sni = identity.sni();
        let dns = SanType::DnsName(sni.try_into().map_err(rcgen_err("encode the sni as a DNS SAN"))?);
        self.issue(
            csr_der,
            vec![uri_san(&identity.uri())?, dns],
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            ttl,
        )
    }

    /// Signs a CSR for the credential of node `node`: URI SAN `spiffe://<td>/node/<node>`,
    /// clientAuth only (a node credential authenticates to the CA; it never serves).
    pub fn sign_node_csr(
        &self,
        csr_der: &[u8],
        node: &str,
        ttl: Duration,
    ) -> Result<CertificateDer<'static>, CaError> {
        spiffe::validate_node(node)?;
        let uri = node_identity_uri(&self.trust_domain, node);
        self.issue(
            csr_der,
            vec![uri_san(&uri)?],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            ttl,
        )
    }

    fn issue(
        &self,
        csr_der: &[u8],
        sans: Vec<SanType>,
        ekus: Vec<ExtendedKeyUsagePurpose>,
        ttl: Duration,
    ) -> Result<CertificateDer<'static>, CaError> {
        let key = verified_csr_key(csr_der)?;
        let mut params = CertificateParams::default();
        // SPIFFE puts the identity in the URI SAN only; rcgen marks the SAN extension
        // critical because the subject is empty, as RFC 5280 asks.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = ekus;
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, SystemTime::now(), ttl, Some(self.not_after))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(rcgen_err("sign the certificate"))?;
        Ok(cert.der().clone())
    }
}

/// A fresh P-256 key and a CSR for `identity`; the key never leaves the caller.
pub fn generate_csr(identity: &Identity) -> Result<(Vec<u8>, PrivateKeyDer<'static>), CaError> {
    csr_for(&identity.uri())
}

/// A fresh P-256 key and a CSR for the credential of node `node`.
pub fn generate_node_csr(
    trust_domain: &str,
    node: &str,
) -> Result<(Vec<u8>, PrivateKeyDer<'static>), CaError> {
    spiffe::validate_trust_domain(trust_domain)?;
    spiffe::validate_node(node)?;
    csr_for(&node_identity_uri(trust_domain, node))
}

fn csr_for(uri: &str) -> Result<(Vec<u8>, PrivateKeyDer<'static>), CaError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rcgen_err("generate a key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    // Informational: the CA decides the names, but the request says what it is for.
    params.subject_alt_names = vec![uri_san(uri)?];
    let csr = params
        .serialize_request(&key)
        .map_err(rcgen_err("build the CSR"))?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((csr.der().to_vec(), key_der))
}

/// Parses a CSR, checks its self-signature (proof that the requester holds the key) and
/// returns its P-256 public key.
fn verified_csr_key(csr_der: &[u8]) -> Result<SubjectPublicKeyInfo, CaError> {
    use x509_parser::certification_request::X509CertificationRequest;
    let (rest, csr) = X509CertificationRequest::from_der(csr_der).map_err(|e| CaError::Csr {
        reason: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(CaError::Csr {
            reason: "trailing data after the request".into(),
        });
    }
    csr.verify_signature().map_err(|_| CaError::CsrSignature)?;
    let key =
        SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw).map_err(|e| {
            CaError::CsrKey {
                reason: e.to_string(),
            }
        })?;
    if key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
        return Err(CaError::CsrKey {
            reason: format!("{:?}", key.algorithm()),
        });
    }
    Ok(key)
}

/// Sets notBefore = now - BACKDATE and notAfter = now + ttl (no later than `cap`); returns
/// notAfter.
fn validity(
    params: &mut CertificateParams,
    now: SystemTime,
    ttl: Duration,
    cap: Option<SystemTime>,
) -> Result<SystemTime, CaError> {
    let not_before = now.checked_sub(BACKDATE).ok_or(CaError::Ttl { ttl })?;
    let mut not_after = now
        .checked_add(ttl)
        .filter(|_| !ttl.is_zero())
        .ok_or(CaError::Ttl { ttl })?;
    if let Some(cap) = cap {
        not_after = not_after.min(cap);
    }
    // X.509 times have whole seconds; round down so the value returned is the one encoded.
    let not_after = to_system_time(unix_secs(not_after));
    params.not_before =
        time::OffsetDateTime::from_unix_timestamp(unix_secs(not_before)).map_err(|_| CaError::Ttl { ttl })?;
    params.not_after =
        time::OffsetDateTime::from_unix_timestamp(unix_secs(not_after)).map_err(|_| CaError::Ttl { ttl })?;
    Ok(not_after)
}

fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs_f64().ceil() as i64),
    }
}

pub(crate) fn to_system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(unix as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    }
}

/// 16 random bytes, positive and without a leading zero byte, so the DER INTEGER is always
/// 16 bytes.
fn random_serial() -> Result<[u8; 16], CaError> {
    use ring::rand::SecureRandom as _;
    let mut serial = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut serial)
        .map_err(|_| CaError::Rcgen {
            what: "draw a serial number",
            source: rcgen::Error::RingUnspecified,
        })?;
    serial[0] = (serial[0] & 0x7f) | 0x40;
    Ok(serial)
}

fn uri_san(uri: &str) -> Result<SanType, CaError> {
    Ok(SanType::URI(
        uri.try_into().map_err(rcgen_err("encode a URI SAN"))?,
    ))
}

/// The trust domain named by a root's single URI SAN `spiffe://<td>`.
fn root_trust_domain(cert: &X509Certificate<'_>) -> Option<String> {
    let san = cert.subject_alternative_name().ok()??;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let (Some(uri), None) = (uris.next(), uris.next()) else {
        return None;
    };
    let td = uri.strip_prefix("spiffe://")?;
    spiffe::validate_trust_domain(td).ok()?;
    Some(td.to_owned())
}

fn read(path: &Path) -> Result<Vec<u8>, CaError> {
    std::fs::read(path).map_err(|source| CaError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Writes a world-readable file (0644 whatever the umask).
fn write_public(path: &Path, contents: &[u8]) -> Result<(), CaError> {
    let err = |source| CaError::Write {
        path: path.to_owned(),
        source,
    };
    std::fs::write(path, contents).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).map_err(err)
}

pub(crate) fn der_to_pem(label: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der.to_vec()), config)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::bundle::TrustBundle;
    use crate::identity::svid::{verify_node_credential, verify_svid, Usage};
    use x509_parser::prelude::parse_x509_certificate;

    fn id(sa: &str) -> Identity {
        Identity::new("cluster.local", "default", sa).unwrap()
    }

    #[test]
    fn init_writes_private_key_and_refuses_to_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let root = CaRoot::init(&dir, "cluster.local").unwrap();
        let mode = |p: &Path| p.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(ROOT_KEY_FILE)), 0o600);
        assert_eq!(mode(&dir.join(ROOT_CERT_FILE)), 0o644);
        let key_before = std::fs::read(dir.join(ROOT_KEY_FILE)).unwrap();

        let err = CaRoot::init(&dir, "cluster.local").unwrap_err();
        assert!(matches!(err, CaError::AlreadyInitialized { .. }), "{err}");
        assert!(err.to_string().contains(ROOT_KEY_FILE), "{err}");
        assert_eq!(std::fs::read(dir.join(ROOT_KEY_FILE)).unwrap(), key_before);

        let loaded = CaRoot::load(&dir).unwrap();
        assert_eq!(loaded.trust_domain(), "cluster.local");
        assert_eq!(loaded.cert_der(), root.cert_der());
        assert_eq!(loaded.cert_pem(), root.cert_pem());
    }

    #[test]
    fn loaded_root_signs_verifiable_leaves() {
        let tmp = tempfile::tempdir().unwrap();
        let root = CaRoot::init(tmp.path(), "cluster.local").unwrap();
        let loaded = CaRoot::load(tmp.path()).unwrap();
        let (csr, _key) = generate_csr(&id("a")).unwrap();
        let leaf = loaded.sign_csr(&csr, &id("a"), DEFAULT_SVID_TTL).unwrap();
        let bundle = TrustBundle::new(vec![root.cert_der()]);
        let got = verify_svid(
            &[leaf],
            &bundle,
            "cluster.local",
            Usage::Server,
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(got, id("a"));
    }

    #[test]
    fn load_errors_name_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let msg = |dir: &Path| CaRoot::load(dir).unwrap_err().to_string();

        let err = msg(dir);
        assert!(
            err.contains(ROOT_CERT_FILE) && err.contains("cannot read"),
            "{err}"
        );

        CaRoot::init(dir, "cluster.local").unwrap();
        let good_cert = std::fs::read(dir.join(ROOT_CERT_FILE)).unwrap();
        std::fs::write(dir.join(ROOT_CERT_FILE), "garbage").unwrap();
        let err = msg(dir);
        assert!(err.contains(ROOT_CERT_FILE) && err.contains("not PEM"), "{err}");

        // A leaf in place of the root.
        let leaf = rcgen::generate_simple_self_signed(vec!["x.example".to_owned()]).unwrap();
        std::fs::write(dir.join(ROOT_CERT_FILE), leaf.cert.pem()).unwrap();
        let err = msg(dir);
        assert!(err.contains(ROOT_CERT_FILE) && err.contains("not a CA"), "{err}");

        // Another root's key.
        std::fs::write(dir.join(ROOT_CERT_FILE), &good_cert).unwrap();
        let other = tempfile::tempdir().unwrap();
        CaRoot::init(other.path(), "cluster.local").unwrap();
        std::fs::copy(other.path().join(ROOT_KEY_FILE), dir.join(ROOT_KEY_FILE)).unwrap();
        let err = msg(dir);
        assert!(
            err.contains(ROOT_KEY_FILE) && err.contains("does not match"),
            "{err}"
        );

        std::fs::write(dir.join(ROOT_KEY_FILE), "-----BEGIN NOTHING-----\n").unwrap();
        let err = msg(dir);
        assert!(err.contains(ROOT_KEY_FILE) && err.contains("not PEM"), "{err}");

        std::fs::remove_file(dir.join(ROOT_KEY_FILE)).unwrap();
        let err = msg(dir);
        assert!(
            err.contains(ROOT_KEY_FILE) && err.contains("cannot read"),
            "{err}"
        );
    }

    #[test]
    fn sign_csr_ignores_requested_names() {
        let root = CaRoot::generate("cluster.local", Duration::from_secs(3600)).unwrap();
        // A CSR asking for another identity, a DNS name and CA powers.
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(vec!["evil.example".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(uri_san("spiffe://cluster.local/ns/kube-system/sa/admin").unwrap());
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let csr = params.serialize_request(&key).unwrap();

        let leaf = root
            .sign_csr(csr.der(), &id("a"), Duration::from_secs(600))
            .unwrap();
        let (_, cert) = parse_x509_certificate(&leaf).unwrap();
        let names = &cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        assert_eq!(
            names,
            &vec![
                GeneralName::URI("spiffe://cluster.local/ns/default/sa/a"),
                GeneralName::DNSName(&id("a").sni())
            ]
        );
        assert!(!cert.is_ca());
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_cert_sign() && !ku.crl_sign());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert_eq!(
            cert.public_key().subject_public_key.data.as_ref(),
            key.der_bytes()
        );
        let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(lifetime, 660);

        let bundle = TrustBundle::new(vec![root.cert_der()]);
        let got = verify_svid(
            &[leaf],
            &bundle,
            "cluster.local",
            Usage::Client,
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(got, id("a"));
    }

    #[test]
    fn sign_csr_checks_the_request() {
        let root = CaRoot::generate("cluster.local", Duration::from_secs(3600)).unwrap();
        let (mut csr, _) = generate_csr(&id("a")).unwrap();
        let other = Identity::new("other.local", "default", "a").unwrap();
        assert!(matches!(
            root.sign_csr(&csr, &other, DEFAULT_SVID_TTL),
            Err(CaError::ForeignTrustDomain { .. })
        ));
        assert!(matches!(
            root.sign_csr(&csr[1..], &id("a"), DEFAULT_SVID_TTL),
            Err(CaError::Csr { .. })
        ));
        // Flip a bit of the signature (the last bytes of the DER).
        let last = csr.len() - 1;
        csr[last] ^= 1;
        assert!(matches!(
            root.sign_csr(&csr, &id("a"), DEFAULT_SVID_TTL),
            Err(CaError::CsrSignature)
        ));
        // Not P-256.
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let csr = CertificateParams::default().serialize_request(&key).unwrap();
        assert!(matches!(
            root.sign_csr(csr.der(), &id("a"), DEFAULT_SVID_TTL),
            Err(CaError::CsrKey { .. })
        ));
    }

    #[test]
    fn leaves_never_outlive_the_root() {
        let root = CaRoot::generate("cluster.local", Duration::from_secs(600)).unwrap();
        let (csr, _) = generate_csr(&id("a")).unwrap();
        let leaf = root.sign_csr(&csr, &id("a"), Duration::from_secs(86400)).unwrap();
        let (_, cert) = parse_x509_certificate(&leaf).unwrap();
        assert_eq!(
            to_system_time(cert.validity().not_after.timestamp()),
            root.not_after()
        );
    }

    #[test]
    fn node_credentials() {
        let root = CaRoot::generate("cluster.local", Duration::from_secs(3600)).unwrap();
        let (csr, _) = generate_node_csr("cluster.local", "node-1").unwrap();
        let cert = root
            .sign_node_csr(&csr, "node-1", Duration::from_secs(600))
            .unwrap();
        let bundle = TrustBundle::new(vec![root.cert_der()]);
        let node = verify_node_credential(
            std::slice::from_ref(&cert),
            &bundle,
            "cluster.local",
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(node, "node-1");
        // A node credential is not a workload SVID and cannot serve.
        assert!(verify_svid(
            &[cert],
            &bundle,
            "cluster.local",
            Usage::Client,
            SystemTime::now()
        )
        .is_err());
        assert!(root.sign_node_csr(&csr, "..", Duration::from_secs(600)).is_err());
    }
}
