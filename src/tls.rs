//! Certificates, keys and the TLS configurations built from them (`docs/TLS.md`).
//!
//! Three uses, one function each:
//! - [`mesh_server`] and [`mesh_client`]: ENRP between registrars over mutual TLS. Both ends
//!   present a certificate, and both verify the other's against the mesh's CA.
//! - [`asap_server`]: a registrar's ASAP over TLS for pool elements and pool users (server
//!   authentication only).
//! - [`client`]: a pool element or pool user connecting to that listener.
//!
//! The crypto provider is always *ring*, named explicitly rather than taken from the process
//! default, so another crate that enables a second provider cannot make these calls ambiguous.
//! A configuration goes to a [`TlsAcceptor`] (a registrar's listener) or a [`TlsConnector`]
//! (a registrar's dials, a client's connections to registrars); the connections themselves run
//! inside the engine (`src/runtime/tls.rs`) or the client library's driver.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// Why certificates, keys or a TLS configuration could not be set up. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// What the file was to hold ("certificate chain", "private key", "CA certificates").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the kind needed.
    #[error("{path}: {detail}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is missing or malformed.
        detail: String,
    },
    /// rustls refused the certificates or key (e.g. a key that does not match the
    /// certificate, or a CA certificate it cannot parse).
    #[error("{what}: {detail}")]
    Setup {
        /// Which configuration, naming its files.
        what: String,
        /// rustls's reason.
        detail: String,
    },
}

/// A certificate chain (leaf first) and its private key: what one end presents.
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// The files, for error messages.
    origin: String,
}

impl std::fmt::Debug for Identity {
    /// Names the files only: a key never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("origin", &self.origin).field("certificates", &self.chain.len()).finish()
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self { chain: self.chain.clone(), key: self.key.clone_key(), origin: self.origin.clone() }
    }
}

impl Identity {
    /// Loads a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or
    /// SEC1).
    pub fn load(certificate: &Path, private_key: &Path) -> Result<Self, TlsError> {
        let chain = load_certs(certificate, "certificate chain")?;
        let bytes = read(private_key, "private key")?;
        let key = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Pem {
            path: private_key.into(),
            detail: format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
        })?;
        let origin = format!("{} with key {}", certificate.display(), private_key.display());
        Ok(Self { chain, key, origin })
    }

    /// An identity from DER values already in memory (tests, embedding applications).
    pub fn from_der(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Self {
        Self { chain, key, origin: "in-memory certificate".into() }
    }
}

/// Trusted CA certificates: what the other end's certificate must chain to.
#[derive(Clone, Debug)]
pub struct Roots {
    store: Arc<RootCertStore>,
    origin: String,
}

impl Roots {
    /// Loads every certificate of a PEM file as a trust anchor.
    pub fn load(ca: &Path) -> Result<Self, TlsError> {
        let certs = load_certs(ca, "CA certificates")?;
        let mut store = RootCertStore::empty();
        for c in certs {
            store
                .add(c)
                .map_err(|e| TlsError::Pem { path: ca.into(), detail: format!("unusable CA certificate: {e}") })?;
        }
        Ok(Self { store: Arc::new(store), origin: ca.display().to_string() })
    }

    /// Trust anchors from DER certificates already in memory.
    pub fn from_der(certs: Vec<CertificateDer<'static>>) -> Result<Self, TlsError> {
        let mut store = RootCertStore::empty();
        for c in certs {
            store.add(c).map_err(|e| TlsError::Setup { what: "CA certificate".into(), detail: e.to_string() })?;
        }
        Ok(Self { store: Arc::new(store), origin: "in-memory CA".into() })
    }
}

/// The server side of TLS for a listener ([`crate::runtime::Listen::tls`]): every connection
/// accepted there speaks TLS with this configuration.
#[derive(Clone)]
pub struct TlsAcceptor {
    config: Arc<ServerConfig>,
}

impl TlsAcceptor {
    /// Accepts TLS with `config` (e.g. [`mesh_server`]).
    pub fn new(config: Arc<ServerConfig>) -> Self {
        Self { config }
    }

    pub(crate) fn config(&self) -> &Arc<ServerConfig> {
        &self.config
    }
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsAcceptor")
    }
}

impl PartialEq for TlsAcceptor {
    /// The same configuration object.
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.config, &other.config)
    }
}

impl Eq for TlsAcceptor {}

/// The client side of TLS: for the registrar's outbound connections of one tag
/// ([`crate::runtime::EngineConfig::dial_tls`]), or a client's connections to registrars
/// ([`crate::client::blocking::PoolUserBuilder::tls`]).
#[derive(Clone)]
pub struct TlsConnector {
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl TlsConnector {
    /// Connects with `config` (e.g. [`mesh_client`] or [`client`]), naming the server by the
    /// address dialled.
    pub fn new(config: Arc<ClientConfig>) -> Self {
        Self { config, server_name: None }
    }

    /// Names the server `name` in every handshake (SNI, and the name its certificate is checked
    /// against) instead of the address dialled.
    pub fn with_server_name(mut self, name: ServerName<'static>) -> Self {
        self.server_name = Some(name);
        self
    }

    pub(crate) fn config(&self) -> &Arc<ClientConfig> {
        &self.config
    }

    pub(crate) fn server_name(&self) -> Option<&ServerName<'static>> {
        self.server_name.as_ref()
    }
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnector").field("server_name", &self.server_name).finish()
    }
}

/// The crypto provider of every configuration made here.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.into(), source })
}

fn load_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path, what)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem { path: path.into(), detail: format!("malformed PEM: {e}") })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { path: path.into(), detail: "no CERTIFICATE in the file".into() });
    }
    Ok(certs)
}

fn setup(what: String) -> impl FnOnce(rustls::Error) -> TlsError {
    move |e| TlsError::Setup { what, detail: e.to_string() }
}

/// ENRP, accepting side: presents `identity` and requires a client certificate that chains to
/// `roots` (the mesh's CA).
pub fn mesh_server(identity: &Identity, roots: &Roots) -> Result<Arc<ServerConfig>, TlsError> {
    let what = format!("ENRP TLS server ({}; CA {})", identity.origin, roots.origin);
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots.store), provider())
        .build()
        .map_err(|e| TlsError::Setup { what: what.clone(), detail: e.to_string() })?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(setup(what.clone()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(setup(what))?;
    Ok(Arc::new(config))
}

/// ENRP, dialling side: presents `identity` and verifies the peer's certificate against
/// `roots`. The name in the peer's certificate is not compared with the address dialled: in a
/// mesh, a certificate from the mesh's CA is what makes a peer (see [`MeshVerifier`]).
pub fn mesh_client(identity: &Identity, roots: &Roots) -> Result<Arc<ClientConfig>, TlsError> {
    let what = format!("ENRP TLS client ({}; CA {})", identity.origin, roots.origin);
    let verifier = MeshVerifier::new(roots).map_err(|e| TlsError::Setup { what: what.clone(), detail: e })?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(setup(what.clone()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(setup(what))?;
    Ok(Arc::new(config))
}

/// ASAP over TLS, registrar side: presents `identity`; clients are not asked for a
/// certificate.
pub fn asap_server(identity: &Identity) -> Result<Arc<ServerConfig>, TlsError> {
    let what = format!("ASAP TLS server ({})", identity.origin);
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(setup(what.clone()))?
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(setup(what))?;
    Ok(Arc::new(config))
}

/// A pool element's or pool user's side of ASAP over TLS: verifies the registrar's certificate
/// against `roots`, name included (the registrar's address, or the name the application sets).
pub fn client(roots: &Roots) -> Result<Arc<ClientConfig>, TlsError> {
    let what = format!("ASAP TLS client (CA {})", roots.origin);
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(setup(what))?
        .with_root_certificates(Arc::clone(&roots.store))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Verifies a peer registrar's certificate chain against the mesh's CA, with the usual checks
/// (signatures, validity period, key usage for a server), but not its name.
///
/// Why not the name: a registrar dials addresses it learns from its peers' Server Information,
/// so checking names would make every certificate list every address its registrar is reached
/// at, and would add nothing that ENRP respects: any member of the mesh may announce anything
/// about the handlespace. Membership is having a certificate from the mesh's CA, which the
/// accepting side checks the same way (client certificates carry no name to check either).
#[derive(Debug)]
pub struct MeshVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl MeshVerifier {
    fn new(roots: &Roots) -> Result<Self, String> {
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::clone(&roots.store), provider())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self { inner })
    }
}

impl ServerCertVerifier for MeshVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain first and the name last, so a name mismatch means the
        // chain itself was accepted.
        match self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_malformed_files_are_named() {
        let dir = std::env::temp_dir().join(format!("rserpool-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let e = Identity::load(&missing, &missing).unwrap_err().to_string();
        assert!(e.contains("missing.pem") && e.contains("certificate chain"), "{e}");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = Roots::load(&empty).unwrap_err().to_string();
        assert!(e.contains("empty.pem") && e.contains("no CERTIFICATE"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
