//! X.509-SVIDs: validation of a presented chain per the SPIFFE X509-SVID spec (design §3)
//! and [`Svid`], a workload's own certificate and key.
//!
//! Validation reads the leaf first (cA, key usage, the single URI SAN, trust domain,
//! validity window) so that each way of being wrong has its own error, then lets webpki
//! check the chain to the bundle, signatures and the extended key usage.
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use webpki::KeyUsage;
use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};

use super::bundle::TrustBundle;
use super::ca::to_system_time;
use super::spiffe::{parse_node_identity, Identity, IdentityError};
use super::tls::provider;

/// What the presented certificate is used for: its extended key usage must allow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Usage {
    Client,
    Server,
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Usage::Client => "client",
            Usage::Server => "server",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SvidError {
    #[error("the trust bundle is empty, so no certificate is trusted")]
    EmptyBundle,
    #[error("no certificate was presented")]
    NoCertificate,
    #[error("certificate cannot be parsed: {reason}")]
    Malformed { reason: String },
    #[error("certificate is a CA (basicConstraints cA=true), an SVID leaf has cA=false")]
    LeafIsCa,
    #[error("certificate has key usage {usage}, an SVID leaf may not sign certificates or CRLs")]
    LeafCanSign { usage: &'static str },
    #[error("certificate has no URI SAN, an SVID has exactly one (a DNS SAN is never an identity)")]
    NoUriSan,
    #[error("certificate has {count} URI SANs, an SVID has exactly one")]
    MultipleUriSans { count: usize },
    #[error("URI SAN {uri:?} is not a valid SPIFFE ID: {source}")]
    InvalidSpiffeId { uri: String, source: IdentityError },
    #[error("certificate is for {uri}, in trust domain {found:?}, but the mesh trusts only {expected:?}")]
    TrustDomainMismatch {
        uri: String,
        found: String,
        expected: String,
    },
    #[error("certificate is not valid before {not_before} (check the clocks)")]
    NotYetValid { not_before: String },
    #[error("certificate expired at {not_after}")]
    Expired { not_after: String },
    #[error("certificate does not chain to a root of the trust bundle ({reason})")]
    UntrustedChain { reason: String },
    #[error("certificate is not valid for {usage} authentication (extended key usage)")]
    WrongUsage { usage: Usage },
    #[error("certificate chain rejected: {reason}")]
    ChainRejected { reason: String },
    #[error("certificate proves {actual}, not {expected}")]
    IdentityMismatch { expected: String, actual: String },
    #[error("private key for {identity} cannot be used: {reason}")]
    BadKey { identity: String, reason: String },
}

/// A workload's SVID: its certificate chain (leaf first) and private key.
#[derive(Clone)]
pub struct Svid {
    pub identity: Identity,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl fmt::Debug for Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Svid")
            .field("identity", &self.identity.uri())
            .field("chain_len", &self.chain.len())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Svid {
    /// Builds an SVID from a signed leaf (and intermediates) and its key, checking that the
    /// leaf is a valid SVID for `identity` against `bundle` at `now`, for both client and
    /// server use (HBONE needs both), and that the key matches it.
    pub fn new(
        identity: Identity,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        bundle: &TrustBundle,
        now: SystemTime,
    ) -> Result<Svid, SvidError> {
        let proven = verify_svid(&chain, bundle, &identity.trust_domain, Usage::Server, now)?;
        verify_svid(&chain, bundle, &identity.trust_domain, Usage::Client, now)?;
        if proven != identity {
            return Err(SvidError::IdentityMismatch {
                expected: identity.uri(),
                actual: proven.uri(),
            });
        }
        let leaf = parse_leaf(&chain[0])?;
        let svid = Svid {
            identity,
            chain,
            key: Arc::new(key),
            not_before: leaf.not_before,
            not_after: leaf.not_after,
        };
        svid.certified_key()?;
        Ok(svid)
    }

    /// The chain and key as rustls uses them (ring provider); fails if the key cannot be
    /// loaded or does not match the leaf.
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, SvidError> {
        let bad_key = |e: rustls::Error| SvidError::BadKey {
            identity: self.identity.uri(),
            reason: e.to_string(),
        };
        let ck =
            CertifiedKey::from_der(self.chain.clone(), self.key.clone_key(), &provider()).map_err(bad_key)?;
        Ok(Arc::new(ck))
    }

    pub fn expired_at(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }

    /// When to renew: at half life (design §3).
    pub fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO);
        self.not_before + life / 2
    }
}

/// Validates a presented chain (leaf first) and returns the identity it proves: the chain
/// leads to one of the bundle's roots with the EKU `usage` needs, `now` is inside the leaf's
/// validity window, the leaf has cA=false, neither keyCertSign nor cRLSign, and exactly one
/// URI SAN, a workload SPIFFE ID in `trust_domain`. DNS SANs are ignored.
pub fn verify_svid(
    chain: &[CertificateDer<'_>],
    bundle: &TrustBundle,
    trust_domain: &str,
    usage: Usage,
    now: SystemTime,
) -> Result<Identity, SvidError> {
    verify(chain, bundle, trust_domain, usage, now, |uri| {
        let id = Identity::parse(uri).map_err(|source| invalid(uri, source))?;
        Ok((id.trust_domain.clone(), id))
    })
}

/// Like [`verify_svid`], for a node credential (`spiffe://<td>/node/<node>`, client use);
/// returns the node name.
pub fn verify_node_credential(
    chain: &[CertificateDer<'_>],
    bundle: &TrustBundle,
    trust_domain: &str,
    now: SystemTime,
) -> Result<String, SvidError> {
    verify(chain, bundle, trust_domain, Usage::Client, now, |uri| {
        parse_node_identity(uri).map_err(|source| invalid(uri, source))
    })
}

/// The identity named by a certificate's single URI SAN, without any verification: for a
/// certificate that a verifier of this module has already accepted.
pub(crate) fn leaf_identity(cert: &CertificateDer<'_>) -> Result<Identity, SvidError> {
    let uri = parse_leaf(cert)?.uri;
    Identity::parse(&uri).map_err(|source| invalid(&uri, source))
}

fn invalid(uri: &str, source: IdentityError) -> SvidError {
    SvidError::InvalidSpiffeId {
        uri: uri.to_owned(),
        source,
    }
}

fn verify<T>(
    chain: &[CertificateDer<'_>],
    bundle: &TrustBundle,
    trust_domain: &str,
    usage: Usage,
    now: SystemTime,
    parse_uri: impl FnOnce(&str) -> Result<(String, T), SvidError>,
) -> Result<T, SvidError> {
    if bundle.is_empty() {
        return Err(SvidError::EmptyBundle);
    }
    let leaf_der = chain.first().ok_or(SvidError::NoCertificate)?;
    let leaf = parse_leaf(leaf_der)?;
    let (td, proven) = parse_uri(&leaf.uri)?;
    if td != trust_domain {
        return Err(SvidError::TrustDomainMismatch {
            uri: leaf.uri,
            found: td,
            expected: trust_domain.to_owned(),
        });
    }
    if now < leaf.not_before {
        return Err(SvidError::NotYetValid {
            not_before: leaf.not_before_text,
        });
    }
    if now > leaf.not_after {
        return Err(SvidError::Expired {
            not_after: leaf.not_after_text,
        });
    }
    verify_chain(leaf_der, &chain[1..], bundle, usage, now)?;
    Ok(proven)
}

/// What validation needs from the leaf, after the checks that need nothing else.
struct Leaf {
    uri: String,
    not_before: SystemTime,
    not_after: SystemTime,
    not_before_text: String,
    not_after_text: String,
}

fn parse_leaf(der: &CertificateDer<'_>) -> Result<Leaf, SvidError> {
    let malformed = |reason: String| SvidError::Malformed { reason };
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(malformed("trailing data after the certificate".into()));
    }
    let bc = cert.basic_constraints().map_err(|e| malformed(e.to_string()))?;
    if bc.is_some_and(|bc| bc.value.ca) {
        return Err(SvidError::LeafIsCa);
    }
    if let Some(ku) = cert.key_usage().map_err(|e| malformed(e.to_string()))? {
        if ku.value.key_cert_sign() {
            return Err(SvidError::LeafCanSign { usage: "keyCertSign" });
        }
        if ku.value.crl_sign() {
            return Err(SvidError::LeafCanSign { usage: "cRLSign" });
        }
    }
    // A duplicated SAN extension is an error here, not a second place to look for names.
    let san = cert
        .subject_alternative_name()
        .map_err(|e| malformed(e.to_string()))?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|san| &san.value.general_names)
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    let uri = match uris.as_slice() {
        [] => return Err(SvidError::NoUriSan),
        [uri] => (*uri).to_owned(),
        _ => return Err(SvidError::MultipleUriSans { count: uris.len() }),
    };
    let validity = cert.validity();
    Ok(Leaf {
        uri,
        not_before: to_system_time(validity.not_before.timestamp()),
        not_after: to_system_time(validity.not_after.timestamp()),
        not_before_text: validity.not_before.to_string(),
        not_after_text: validity.not_after.to_string(),
    })
}

fn verify_chain(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    bundle: &TrustBundle,
    usage: Usage,
    now: SystemTime,
) -> Result<(), SvidError> {
    // A root webpki cannot read can anchor nothing; skipping it keeps the others usable.
    let anchors: Vec<_> = bundle
        .roots()
        .iter()
        .filter_map(|root| webpki::anchor_from_trusted_cert(root).ok())
        .collect();
    if anchors.is_empty() {
        return Err(SvidError::UntrustedChain {
            reason: "no root of the trust bundle is usable".into(),
        });
    }
    let ee = webpki::EndEntityCert::try_from(leaf).map_err(|e| SvidError::Malformed {
        reason: e.to_string(),
    })?;
    let time = UnixTime::since_unix_epoch(now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default());
    let eku = match usage {
        Usage::Client => KeyUsage::client_auth(),
        Usage::Server => KeyUsage::server_auth(),
    };
    let algs = provider().signature_verification_algorithms.all;
    match ee.verify_for_usage(algs, &anchors, intermediates, time, eku, None, None) {
        Ok(_) => Ok(()),
        Err(e) => Err(match e {
            webpki::Error::UnknownIssuer
            | webpki::Error::InvalidSignatureForPublicKey
            | webpki::Error::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => {
                SvidError::UntrustedChain {
                    reason: e.to_string(),
                }
            }
            webpki::Error::RequiredEkuNotFoundContext(_) => SvidError::WrongUsage { usage },
            webpki::Error::CaUsedAsEndEntity => SvidError::LeafIsCa,
            // The leaf's window was checked above; this is an intermediate's.
            e => SvidError::ChainRejected {
                reason: e.to_string(),
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::ca::CaRoot;
    use crate::identity::testing::test_pki;
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose as Eku, IsCa,
        KeyPair, KeyUsagePurpose as Ku, SanType,
    };

    const TD: &str = "cluster.local";
    const URI: &str = "spiffe://cluster.local/ns/default/sa/a";
    const HOUR: Duration = Duration::from_secs(3600);

    /// What the CA issues, as rcgen parameters the tests then spoil.
    fn leaf_params(uri: &str) -> CertificateParams {
        let now = SystemTime::now();
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.subject_alt_names = vec![san_uri(uri)];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![Ku::DigitalSignature];
        p.extended_key_usages = vec![Eku::ServerAuth, Eku::ClientAuth];
        p.not_before = (now - HOUR).into();
        p.not_after = (now + HOUR).into();
        p
    }

    fn san_uri(uri: &str) -> SanType {
        SanType::URI(uri.try_into().unwrap())
    }

    fn signed(ca: &CaRoot, params: &CertificateParams) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        params.signed_by(&key, ca.issuer()).unwrap().der().clone()
    }

    fn check(ca: &CaRoot, params: &CertificateParams, usage: Usage) -> Result<Identity, SvidError> {
        let bundle = TrustBundle::new(vec![ca.cert_der()]);
        verify_svid(&[signed(ca, params)], &bundle, TD, usage, SystemTime::now())
    }

    fn ca() -> CaRoot {
        CaRoot::generate(TD, 24 * HOUR).unwrap()
    }

    #[test]
    fn accepts_a_good_leaf() {
        let ca = ca();
        let id = check(&ca, &leaf_params(URI), Usage::Client).unwrap();
        assert_eq!(id.uri(), URI);
        check(&ca, &leaf_params(URI), Usage::Server).unwrap();
    }

    #[test]
    fn rejects_another_trust_domain() {
        // Even under a root the bundle trusts (federation must be explicit).
        let other = CaRoot::generate("other.local", HOUR).unwrap();
        let err = check(
            &other,
            &leaf_params("spiffe://other.local/ns/default/sa/a"),
            Usage::Client,
        )
        .unwrap_err();
        assert!(
            matches!(err, SvidError::TrustDomainMismatch { ref found, .. } if found == "other.local"),
            "{err}"
        );
    }

    #[test]
    fn rejects_self_signed_and_unknown_roots() {
        let ca = ca();
        let bundle = TrustBundle::new(vec![ca.cert_der()]);
        let key = KeyPair::generate().unwrap();
        let self_signed = leaf_params(URI).self_signed(&key).unwrap().der().clone();
        let err = verify_svid(&[self_signed], &bundle, TD, Usage::Client, SystemTime::now()).unwrap_err();
        assert!(matches!(err, SvidError::UntrustedChain { .. }), "{err}");

        let unknown = CaRoot::generate(TD, HOUR).unwrap();
        let leaf = signed(&unknown, &leaf_params(URI));
        let err = verify_svid(&[leaf], &bundle, TD, Usage::Client, SystemTime::now()).unwrap_err();
        assert!(matches!(err, SvidError::UntrustedChain { .. }), "{err}");
    }

    #[test]
    fn rejects_outside_the_validity_window() {
        let ca = ca();
        let now = SystemTime::now();
        let mut expired = leaf_params(URI);
        expired.not_before = (now - 2 * HOUR).into();
        expired.not_after = (now - HOUR).into();
        let err = check(&ca, &expired, Usage::Client).unwrap_err();
        assert!(matches!(err, SvidError::Expired { .. }), "{err}");

        let mut early = leaf_params(URI);
        early.not_before = (now + HOUR).into();
        early.not_after = (now + 2 * HOUR).into();
        let err = check(&ca, &early, Usage::Client).unwrap_err();
        assert!(matches!(err, SvidError::NotYetValid { .. }), "{err}");

        // The same good leaf, judged at other times.
        let bundle = TrustBundle::new(vec![ca.cert_der()]);
        let leaf = [signed(&ca, &leaf_params(URI))];
        let at = |t| verify_svid(&leaf, &bundle, TD, Usage::Client, t);
        assert!(matches!(at(now + 2 * HOUR), Err(SvidError::Expired { .. })));
        assert!(matches!(at(now - 2 * HOUR), Err(SvidError::NotYetValid { .. })));
    }

    #[test]
    fn rejects_two_uri_sans() {
        let mut p = leaf_params(URI);
        p.subject_alt_names
            .push(san_uri("spiffe://cluster.local/ns/default/sa/b"));
        let err = check(&ca(), &p, Usage::Client).unwrap_err();
        assert!(matches!(err, SvidError::MultipleUriSans { count: 2 }));
        assert_eq!(
            err.to_string(),
            "certificate has 2 URI SANs, an SVID has exactly one"
        );
    }

    #[test]
    fn rejects_signing_leaves() {
        let ca = ca();
        let mut as_ca = leaf_params(URI);
        as_ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        as_ca.key_usages = vec![Ku::KeyCertSign, Ku::DigitalSignature];
        assert!(matches!(
            check(&ca, &as_ca, Usage::Client),
            Err(SvidError::LeafIsCa)
        ));

        let mut cert_sign = leaf_params(URI);
        cert_sign.key_usages = vec![Ku::DigitalSignature, Ku::KeyCertSign];
        let err = check(&ca, &cert_sign, Usage::Client).unwrap_err();
        assert!(
            matches!(err, SvidError::LeafCanSign { usage: "keyCertSign" }),
            "{err}"
        );

        let mut crl_sign = leaf_params(URI);
        crl_sign.key_usages = vec![Ku::DigitalSignature, Ku::CrlSign];
        let err = check(&ca, &crl_sign, Usage::Client).unwrap_err();
        assert!(
            matches!(err, SvidError::LeafCanSign { usage: "cRLSign" }),
            "{err}"
        );
    }

    #[test]
    fn never_takes_a_dns_san_as_identity() {
        let mut p = leaf_params(URI);
        let id = Identity::parse(URI).unwrap();
        p.subject_alt_names = vec![SanType::DnsName(id.sni().try_into().unwrap())];
        assert!(matches!(
            check(&ca(), &p, Usage::Client),
            Err(SvidError::NoUriSan)
        ));
    }

    #[test]
    fn rejects_malformed_spiffe_ids() {
        let ca = ca();
        for uri in [
            "spiffe://Cluster.local/ns/default/sa/a",
            "spiffe://cluster.local/ns/../sa/a",
            "spiffe://cluster.local/ns/default/sa/a/",
            "https://cluster.local/ns/default/sa/a",
        ] {
            let err = check(&ca, &leaf_params(uri), Usage::Client).unwrap_err();
            assert!(matches!(err, SvidError::InvalidSpiffeId { .. }), "{uri}: {err}");
        }
    }

    #[test]
    fn rejects_the_wrong_usage() {
        let mut p = leaf_params(URI);
        p.extended_key_usages = vec![Eku::ClientAuth];
        let err = check(&ca(), &p, Usage::Server).unwrap_err();
        assert!(
            matches!(err, SvidError::WrongUsage { usage: Usage::Server }),
            "{err}"
        );
    }

    #[test]
    fn an_empty_bundle_rejects_everyone() {
        let ca = ca();
        let leaf = signed(&ca, &leaf_params(URI));
        let err = verify_svid(
            &[leaf],
            &TrustBundle::default(),
            TD,
            Usage::Client,
            SystemTime::now(),
        );
        assert!(matches!(err, Err(SvidError::EmptyBundle)));
        let bundle = TrustBundle::new(vec![ca.cert_der()]);
        assert!(matches!(
            verify_svid(&[], &bundle, TD, Usage::Client, SystemTime::now()),
            Err(SvidError::NoCertificate)
        ));
    }

    #[test]
    fn accepts_a_new_root_once_the_bundle_has_it() {
        let old = ca();
        let new = ca();
        let mut bundle = TrustBundle::new(vec![old.cert_der()]);
        let from_old = [signed(&old, &leaf_params(URI))];
        let from_new = [signed(&new, &leaf_params(URI))];
        let now = SystemTime::now();
        assert!(matches!(
            verify_svid(&from_new, &bundle, TD, Usage::Client, now),
            Err(SvidError::UntrustedChain { .. })
        ));
        bundle.add(new.cert_der());
        verify_svid(&from_new, &bundle, TD, Usage::Client, now).unwrap();
        verify_svid(&from_old, &bundle, TD, Usage::Client, now).unwrap();
    }

    #[test]
    fn follows_intermediates() {
        let root = ca();
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![Ku::KeyCertSign, Ku::CrlSign];
        p.not_before = (SystemTime::now() - HOUR).into();
        p.not_after = (SystemTime::now() + HOUR).into();
        let key = KeyPair::generate().unwrap();
        let inter = rcgen::CertifiedIssuer::signed_by(p, key, root.issuer()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = leaf_params(URI)
            .signed_by(&leaf_key, &inter)
            .unwrap()
            .der()
            .clone();
        let bundle = TrustBundle::new(vec![root.cert_der()]);
        let now = SystemTime::now();
        let chain = [leaf.clone(), inter.der().clone()];
        assert_eq!(
            verify_svid(&chain, &bundle, TD, Usage::Server, now)
                .unwrap()
                .uri(),
            URI
        );
        assert!(verify_svid(&[leaf], &bundle, TD, Usage::Server, now).is_err());
    }

    #[test]
    fn svid_checks_identity_and_key() {
        let pki = test_pki(TD);
        let a = pki.identity("default", "a");
        let svid = pki.svid("default", "a");
        assert!(!svid.expired_at(SystemTime::now()));
        assert!(svid.expired_at(svid.not_after));
        assert!(svid.renew_at() > SystemTime::now() && svid.renew_at() < svid.not_after);
        svid.certified_key().unwrap();

        let b = pki.identity("default", "b");
        let err = Svid::new(
            b,
            svid.chain.clone(),
            svid.key.clone_key(),
            &pki.bundle,
            SystemTime::now(),
        );
        assert!(matches!(err, Err(SvidError::IdentityMismatch { .. })));

        let other = pki.svid("default", "c");
        let err = Svid::new(
            a,
            svid.chain.clone(),
            other.key.clone_key(),
            &pki.bundle,
            SystemTime::now(),
        );
        assert!(matches!(err, Err(SvidError::BadKey { .. })), "{err:?}");
    }
}
