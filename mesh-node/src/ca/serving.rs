//! The CA server's TLS: its own serving certificate and the check of callers' node
//! credentials.
//!
//! Serving certificate: issued by the mesh root at run time, never written to disk, for
//! one P-256 key generated at start. Its SANs are the IP address the client connected to
//! (the local address of the accepted socket, so `0.0.0.0` needs no list of the host's
//! addresses) plus the operator's `--san` names; no URI SAN, so it is never an SVID;
//! serverAuth only; valid for [`SERVING_CERT_TTL`] and reissued for new connections after
//! half of it. `CaRoot` only signs SPIFFE certificates, so this module signs with its own
//! handle on the root key, loaded from the same CA directory.
//!
//! Callers: TLS 1.3 only, a client certificate is required; webpki (rustls's
//! `WebPkiClientVerifier`) checks the chain to the bundle and the clientAuth usage, and
//! `verify_node_credential` the SPIFFE rules and that the single URI SAN is
//! `spiffe://<td>/node/<name>`, so a workload SVID of the same mesh is refused. Session
//! resumption is off: a resumed session would skip these checks.
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData as _, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName as TlsName, OtherError, SignatureScheme,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};

use crate::identity::ca::{to_system_time, CaRoot, BACKDATE, ROOT_KEY_FILE};
use crate::identity::tls::{provider, ALPN_H2};
use crate::identity::{verify_node_credential, TrustBundle};

/// Lifetime of the CA's serving certificate. Short, because it is free to reissue and
/// nobody pins it: clients check it against the root.
pub const SERVING_CERT_TTL: Duration = Duration::from_secs(3600);
/// Distinct local addresses a serving certificate is cached for; a host has a few.
const MAX_CACHED_ADDRS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    #[error("cannot read the ca key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("the ca key {path} does not belong to the root it was loaded with")]
    KeyMismatch { path: PathBuf },
    #[error("cannot issue the ca's serving certificate: {0}")]
    Issue(#[from] rcgen::Error),
    #[error("--san {0:?} is neither an IP address nor a DNS name")]
    BadSan(String),
    #[error("cannot build the ca's tls configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot build the node credential verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// Per local address, a TLS configuration presenting a serving certificate for that
/// address; all share one key and one client verifier.
pub(crate) struct ServingCerts {
    issuer: Issuer<'static, KeyPair>,
    root_not_after: SystemTime,
    key: KeyPair,
    extra_sans: Vec<SanType>,
    verifier: Arc<dyn ClientCertVerifier>,
    cache: Mutex<HashMap<IpAddr, (Arc<rustls::ServerConfig>, SystemTime)>>,
}

impl ServingCerts {
    /// `dir` is the CA directory `root` was loaded from; `bundle` holds the roots node
    /// credentials may chain to (the root, and the previous one during a rotation).
    pub(crate) fn new(
        dir: &Path,
        root: &CaRoot,
        bundle: &TrustBundle,
        extra_sans: &[String],
    ) -> Result<ServingCerts, ServingError> {
        let key_path = dir.join(ROOT_KEY_FILE);
        let key_err = |reason: String| ServingError::Key {
            path: key_path.clone(),
            reason,
        };
        let key_der = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| key_err(e.to_string()))?;
        let root_key = KeyPair::try_from(&key_der).map_err(|e| key_err(e.to_string()))?;
        let root_der = root.cert_der();
        let (_, root_cert) =
            x509_parser::parse_x509_certificate(&root_der).map_err(|e| key_err(e.to_string()))?;
        if root_key.der_bytes() != root_cert.public_key().subject_public_key.data.as_ref() {
            return Err(ServingError::KeyMismatch { path: key_path });
        }
        let issuer = Issuer::from_ca_cert_der(&root_der, root_key)?;
        let extra_sans = extra_sans.iter().map(|s| san(s)).collect::<Result<_, _>>()?;
        Ok(ServingCerts {
            issuer,
            root_not_after: root.not_after(),
            key: KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?,
            extra_sans,
            verifier: node_verifier(bundle, root.trust_domain())?,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The configuration for a connection accepted on `local`.
    pub(crate) fn config_for(&self, local: IpAddr) -> Result<Arc<rustls::ServerConfig>, ServingError> {
        let local = local.to_canonical();
        let now = SystemTime::now();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((config, renew_at)) = cache.get(&local) {
            if now < *renew_at {
                return Ok(config.clone());
            }
        }
        let (config, renew_at) = self.issue(local, now)?;
        if cache.len() >= MAX_CACHED_ADDRS {
            cache.clear();
        }
        cache.insert(local, (config.clone(), renew_at));
        Ok(config)
    }

    fn issue(
        &self,
        local: IpAddr,
        now: SystemTime,
    ) -> Result<(Arc<rustls::ServerConfig>, SystemTime), ServingError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "mesh-ca");
        params.distinguished_name = dn;
        params.subject_alt_names = std::iter::once(SanType::IpAddress(local))
            .chain(
                self.extra_sans
                    .iter()
                    .filter(|s| **s != SanType::IpAddress(local))
                    .cloned(),
            )
            .collect();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
        let not_after = (now + SERVING_CERT_TTL).min(self.root_not_after);
        params.not_before = (now - BACKDATE).into();
        params.not_after = not_after.into();
        let cert = params.signed_by(&self.key, &self.issuer)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(self.verifier.clone())
            .with_single_cert(vec![cert.der().clone()], key)?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        let renew_at = now + not_after.duration_since(now).unwrap_or_default() / 2;
        tracing::debug!(%local, "issued the ca's serving certificate");
        Ok((Arc::new(config), renew_at))
    }
}

/// The node credential a verified caller presented: its node name, and when it expires.
pub(crate) fn node_of(
    chain: &[CertificateDer<'_>],
    bundle: &TrustBundle,
    trust_domain: &str,
) -> Option<(String, SystemTime)> {
    let node = verify_node_credential(chain, bundle, trust_domain, SystemTime::now()).ok()?;
    let (_, leaf) = x509_parser::parse_x509_certificate(chain.first()?).ok()?;
    Some((node, to_system_time(leaf.validity().not_after.timestamp())))
}

fn san(text: &str) -> Result<SanType, ServingError> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip.to_canonical()));
    }
    let bad = || ServingError::BadSan(text.to_owned());
    rustls_pki_types::DnsName::try_from(text).map_err(|_| bad())?;
    Ok(SanType::DnsName(text.try_into().map_err(|_| bad())?))
}

fn random_serial() -> [u8; 16] {
    use ring::rand::SecureRandom as _;
    let mut serial = [0u8; 16];
    // The system RNG failing is not recoverable anywhere in this process.
    ring::rand::SystemRandom::new()
        .fill(&mut serial)
        .expect("system random number generator");
    serial[0] = (serial[0] & 0x7f) | 0x40;
    serial
}

fn node_verifier(
    bundle: &TrustBundle,
    trust_domain: &str,
) -> Result<Arc<dyn ClientCertVerifier>, ServingError> {
    let mut roots = rustls::RootCertStore::empty();
    // A root webpki cannot use anchors nothing; the others stay usable.
    roots.add_parsable_certificates(bundle.roots().iter().cloned());
    let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build()?;
    Ok(Arc::new(NodeVerifier {
        webpki,
        bundle: bundle.clone(),
        trust_domain: trust_domain.to_owned(),
    }))
}

/// webpki's client verifier, plus the rule that the caller is a node of this mesh.
#[derive(Debug)]
struct NodeVerifier {
    webpki: Arc<dyn ClientCertVerifier>,
    bundle: TrustBundle,
    trust_domain: String,
}

impl ClientCertVerifier for NodeVerifier {
    fn root_hint_subjects(&self) -> &[TlsName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.webpki.verify_client_cert(end_entity, intermediates, now)?;
        let mut chain = vec![end_entity.clone()];
        chain.extend(intermediates.iter().cloned());
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(now.as_secs());
        match verify_node_credential(&chain, &self.bundle, &self.trust_domain, now) {
            Ok(_) => Ok(verified),
            Err(e) => Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(NotANode(e))),
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("not a node credential of this mesh: {0}")]
struct NotANode(crate::identity::SvidError);
