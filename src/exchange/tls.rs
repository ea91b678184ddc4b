//! TLS for EWS over OpenSSL: `ews_ssl_verify`, `ews_ssl_ciphers`, and the server certificate
//! hash that NTLM channel binding (Extended Protection) needs.
//!
//! ureq's own TLS connectors never expose the peer certificate, so this is a ureq connector of
//! our own, shaped like ureq's native-tls one: it wraps the TCP (or CONNECT-proxy tunnel)
//! transport that the earlier connectors in the chain opened. For every new TLS connection it
//! writes the RFC 5929 `tls-server-end-point` hash of the server certificate into a
//! [`CertSlot`] shared with the worker thread's EWS transport, which puts it into the NTLM
//! Type 3 sent on that connection.

use std::env;
use std::fmt;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::ssl::{
    HandshakeError, SslConnector, SslContext, SslContextBuilder, SslMethod, SslStream,
    SslVerifyMode,
};
use openssl::x509::{X509Ref, X509VerifyResult};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout, Transport,
    TransportAdapter,
};

/// Prefix of the channel-binding application data (RFC 5929 §4).
const END_POINT_PREFIX: &[u8] = b"tls-server-end-point:";

/// CA bundles of the common distributions, for OpenSSL builds whose compiled-in default
/// location does not exist (a vendored, static OpenSSL looks under /usr/local/ssl). The list
/// follows openssl-probe, which native-tls uses for the same purpose.
const CA_FILE_CANDIDATES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/ssl/cert.pem",
];
/// Hashed CA directories, likewise.
const CA_DIR_CANDIDATES: &[&str] = &["/etc/ssl/certs", "/etc/pki/tls/certs"];

/// The RFC 5929 `tls-server-end-point` channel binding of one server certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerEndPoint {
    /// Short OpenSSL name of the hash, for log lines ("SHA256").
    hash_name: &'static str,
    hash: Vec<u8>,
}

impl ServerEndPoint {
    /// Hashes `cert` with the hash of its own signature algorithm, or SHA-256 where that is
    /// MD5 or SHA-1 (RFC 5929 §4.1), as SChannel and IIS do.
    pub fn of_certificate(cert: &X509Ref) -> Result<Self, ErrorStack> {
        let digest = end_point_digest(cert);
        let hash = cert.digest(digest)?.to_vec();
        let hash_name = digest.type_().short_name().unwrap_or("unknown hash");
        Ok(ServerEndPoint { hash_name, hash })
    }

    pub fn hash(&self) -> &[u8] {
        &self.hash
    }

    pub fn hash_name(&self) -> &'static str {
        self.hash_name
    }

    /// The application data of the GSS channel bindings: `tls-server-end-point:` + hash.
    pub fn application_data(&self) -> Vec<u8> {
        [END_POINT_PREFIX, &self.hash].concat()
    }
}

impl fmt::Debug for ServerEndPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex: String = self.hash.iter().map(|b| format!("{b:02x}")).collect();
        write!(f, "ServerEndPoint({}:{hex})", self.hash_name)
    }
}

/// The hash RFC 5929 §4.1 prescribes for `cert`.
///
/// Signature algorithms without a single digest (RSA-PSS, whose hash sits in parameters
/// OpenSSL's safe API does not expose; Ed25519) get SHA-256, the value most servers use when
/// the RFC gives no answer.
pub fn end_point_digest(cert: &X509Ref) -> MessageDigest {
    let signature = cert.signature_algorithm().object().nid();
    match signature.signature_algorithms().map(|algs| algs.digest) {
        Some(nid) if nid != Nid::MD5 && nid != Nid::SHA1 && nid != Nid::UNDEF => {
            MessageDigest::from_nid(nid).unwrap_or_else(MessageDigest::sha256)
        }
        _ => MessageDigest::sha256(),
    }
}

/// What the most recent connection of one agent presented, shared between that agent's
/// connector (writer) and the thread's EWS transport (reader).
///
/// One agent per worker thread, used sequentially, with one pooled connection: the latest
/// connection the connector made is the one the next request goes out on, so its
/// certificate is the one to bind the NTLM handshake to.
#[derive(Clone, Default)]
pub struct CertSlot(Arc<Mutex<SlotState>>);

#[derive(Default)]
struct SlotState {
    connections: u64,
    latest: Option<ServerEndPoint>,
}

impl CertSlot {
    /// The end point of the latest connection; `None` if it is plain HTTP (or none was made).
    pub fn latest(&self) -> Option<ServerEndPoint> {
        self.lock().latest.clone()
    }

    /// How many connections the agent has opened, to notice a reconnect between legs.
    pub fn connections(&self) -> u64 {
        self.lock().connections
    }

    fn record(&self, end_point: Option<ServerEndPoint>) {
        let mut state = self.lock();
        state.connections += 1;
        state.latest = end_point;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        // The state is replaced whole under the lock, so a panicking holder cannot leave it
        // half-written.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for CertSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("CertSlot")
            .field("connections", &state.connections)
            .field("latest", &state.latest)
            .finish()
    }
}

/// Why the TLS settings cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSetupError {
    /// `ews_ssl_ciphers` selects no cipher OpenSSL knows: the operator must fix the config.
    Ciphers { list: String, detail: String },
    /// OpenSSL itself could not be set up (broken installation, out of memory).
    OpenSsl(String),
}

impl TlsSetupError {
    /// Whether the configuration is at fault (rather than the system).
    pub fn is_config_error(&self) -> bool {
        matches!(self, TlsSetupError::Ciphers { .. })
    }
}

impl fmt::Display for TlsSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsSetupError::Ciphers { list, detail } => write!(
                f,
                "ews_ssl_ciphers {list:?} selects no cipher this OpenSSL supports ({detail}); \
                 check it with `openssl ciphers -v '{list}'`"
            ),
            TlsSetupError::OpenSsl(detail) => write!(f, "cannot set up OpenSSL for TLS: {detail}"),
        }
    }
}

impl std::error::Error for TlsSetupError {}

/// A failed TLS handshake, carried through ureq as `ureq::Error::Other`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsHandshakeError {
    host: String,
    untrusted: bool,
    detail: String,
}

impl TlsHandshakeError {
    /// Whether the server's certificate failed verification: retrying cannot help.
    pub fn is_untrusted(&self) -> bool {
        self.untrusted
    }
}

impl fmt::Display for TlsHandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TLS handshake with {} failed: {}",
            self.host, self.detail
        )
    }
}

impl std::error::Error for TlsHandshakeError {}

/// TLS settings checked once at start-up and shared by every agent; cheap to clone.
#[derive(Clone, Debug)]
pub struct TlsClient {
    /// Built for the first TLS connection: setting up OpenSSL and loading the CA bundle costs
    /// about 70 ms of CPU and a megabyte or two of memory that a plain-HTTP endpoint (a local
    /// Exchange behind a TLS-terminating proxy, the fake in tests) never needs.
    built: Arc<OnceLock<Result<SslConnector, TlsSetupError>>>,
    verify: bool,
    ciphers: Option<String>,
}

impl TlsClient {
    /// `verify`: check the certificate chain against the system CAs (and `SSL_CERT_FILE`,
    /// `SSL_CERT_DIR`) and the host name. `ciphers`: an OpenSSL cipher list for TLS 1.2 and
    /// older; TLS 1.3 suites stay OpenSSL's defaults, as in every OpenSSL client.
    pub fn new(verify: bool, ciphers: Option<&str>) -> Result<Self, TlsSetupError> {
        if let Some(list) = ciphers {
            // Checked now, so a bad list is a configuration error at start-up.
            let mut context =
                SslContext::builder(SslMethod::tls_client()).map_err(openssl_error)?;
            set_ciphers(&mut context, list)?;
        }
        Ok(TlsClient {
            built: Arc::default(),
            verify,
            ciphers: ciphers.map(str::to_owned),
        })
    }

    fn ssl_connector(&self) -> Result<&SslConnector, TlsSetupError> {
        self.built
            .get_or_init(|| {
                // The builder starts from OpenSSL's default verify paths, which honour
                // SSL_CERT_FILE and SSL_CERT_DIR.
                let mut builder =
                    SslConnector::builder(SslMethod::tls_client()).map_err(openssl_error)?;
                if self.verify {
                    add_probed_ca_locations(&mut builder);
                } else {
                    builder.set_verify(SslVerifyMode::NONE);
                }
                if let Some(list) = &self.ciphers {
                    set_ciphers(&mut builder, list)?;
                }
                Ok(builder.build())
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// A connector for one agent, writing its connections' certificates into `slot`.
    pub fn connector(&self, slot: CertSlot) -> OpensslConnector {
        OpensslConnector {
            client: self.clone(),
            slot,
        }
    }
}

fn openssl_error(e: ErrorStack) -> TlsSetupError {
    TlsSetupError::OpenSsl(e.to_string())
}

fn set_ciphers(context: &mut SslContextBuilder, list: &str) -> Result<(), TlsSetupError> {
    context
        .set_cipher_list(list)
        .map_err(|e| TlsSetupError::Ciphers {
            list: list.to_owned(),
            detail: e
                .errors()
                .first()
                .and_then(|e| e.reason())
                .unwrap_or("rejected by OpenSSL")
                .to_owned(),
        })
}

/// Where OpenSSL's compiled-in default is missing, the CA locations of the common
/// distributions; a variable the operator set wins, as with openssl-probe.
fn add_probed_ca_locations(builder: &mut openssl::ssl::SslConnectorBuilder) {
    let is_set = |name: &str| env::var_os(name).is_some_and(|v| !v.is_empty());
    if !is_set("SSL_CERT_FILE")
        && let Some(file) = CA_FILE_CANDIDATES
            .iter()
            .map(Path::new)
            .find(|p| p.is_file())
        && let Err(e) = builder.load_verify_locations(Some(file), None)
    {
        log::debug!("cannot load CA bundle {}: {e}", file.display());
    }
    if !is_set("SSL_CERT_DIR") {
        for dir in CA_DIR_CANDIDATES
            .iter()
            .map(Path::new)
            .filter(|p| p.is_dir())
        {
            if let Err(e) = builder.load_verify_locations(None, Some(dir)) {
                log::debug!("cannot use CA directory {}: {e}", dir.display());
            }
        }
    }
}

/// OpenSSL verification codes (`X509_V_ERR_*` in x509_vfy.h, stable across versions) for a
/// certificate issued to another name, and for a chain that ends at an unknown CA.
const NAME_MISMATCH: [i32; 2] = [62, 64];
const UNKNOWN_ISSUER: [i32; 5] = [2, 18, 19, 20, 21];

/// What the operator can do about a failed certificate check.
fn verify_hint(code: i32, host: &str) -> String {
    if NAME_MISMATCH.contains(&code) {
        format!(
            "the certificate is not issued for {host}: put a name the certificate lists into \
             ews_endpoint, or set ews_ssl_verify to false"
        )
    } else if UNKNOWN_ISSUER.contains(&code) {
        "add the issuing CA to the system trust store or name it in SSL_CERT_FILE, or set \
         ews_ssl_verify to false"
            .to_owned()
    } else {
        "fix the server's certificate, or set ews_ssl_verify to false".to_owned()
    }
}

/// The ureq connector: wraps an `https` transport in OpenSSL and records its certificate.
#[derive(Debug)]
pub struct OpensslConnector {
    client: TlsClient,
    slot: CertSlot,
}

impl<In: Transport> Connector<In> for OpensslConnector {
    type Out = Either<In, OpensslTransport>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        let Some(transport) = chained else {
            // Nothing earlier in the chain connected; ureq reports that itself.
            return Ok(None);
        };
        if !details.needs_tls() {
            // Plain HTTP (also the hop to a plain CONNECT proxy, which the tunnelled TLS
            // connection then overwrites): nothing to bind to.
            self.slot.record(None);
            return Ok(Some(Either::A(transport)));
        }
        if transport.is_tls() {
            return Ok(Some(Either::A(transport)));
        }
        let host = details
            .uri
            .authority()
            .map(|a| a.host().trim_start_matches('[').trim_end_matches(']'))
            .ok_or_else(|| ureq::Error::BadUri(format!("{}: no host for TLS", details.uri)))?;

        let mut adapter = TransportAdapter::new(
            Box::new(transport) as Box<dyn Transport>,
            details.current_time.clone(),
        );
        adapter.set_timeout(details.timeout);
        let stream = ErrorCapture {
            inner: adapter,
            captured: None,
        };
        let handshake_error = |untrusted: bool, detail: String| {
            ureq::Error::Other(Box::new(TlsHandshakeError {
                host: host.to_owned(),
                untrusted,
                detail,
            }))
        };
        let configured = self
            .client
            .ssl_connector()
            .map_err(|e| handshake_error(false, e.to_string()))?
            .configure()
            .map_err(|e| handshake_error(false, e.to_string()))?
            // SNI is sent for host names (not IP addresses) either way; the name check
            // follows ews_ssl_verify.
            .verify_hostname(self.client.verify);
        let stream = match configured.connect(host, stream) {
            Ok(stream) => stream,
            Err(HandshakeError::SetupFailure(e)) => {
                return Err(handshake_error(false, e.to_string()));
            }
            Err(HandshakeError::Failure(mut mid)) => {
                // A timeout or reset underneath is the better explanation.
                if let Some(error) = mid.get_mut().captured.take() {
                    return Err(error);
                }
                let verify = mid.ssl().verify_result();
                if self.client.verify && verify != X509VerifyResult::OK {
                    return Err(handshake_error(
                        true,
                        format!(
                            "the server certificate is not trusted: {}; {}",
                            verify.error_string(),
                            verify_hint(verify.as_raw(), host)
                        ),
                    ));
                }
                return Err(handshake_error(false, mid.error().to_string()));
            }
            Err(HandshakeError::WouldBlock(mut mid)) => {
                // Blocking sockets never ask to retry, except through a captured timeout.
                if let Some(error) = mid.get_mut().captured.take() {
                    return Err(error);
                }
                return Err(handshake_error(false, "handshake did not finish".into()));
            }
        };

        let end_point = match stream.ssl().peer_certificate() {
            Some(cert) => match ServerEndPoint::of_certificate(&cert) {
                Ok(end_point) => Some(end_point),
                Err(e) => {
                    log::warn!("{host}: cannot hash the server certificate: {e}");
                    None
                }
            },
            None => None,
        };
        log::debug!(
            "TLS to {host}: {} {}; channel binding hash {}",
            stream.ssl().version_str(),
            stream
                .ssl()
                .current_cipher()
                .map(|c| c.name())
                .unwrap_or("?"),
            end_point.as_ref().map_or("none", |e| e.hash_name())
        );
        self.slot.record(end_point);

        let buffers = LazyBuffers::new(
            details.config.input_buffer_size(),
            details.config.output_buffer_size(),
        );
        Ok(Some(Either::B(OpensslTransport { buffers, stream })))
    }
}

/// An established TLS connection.
pub struct OpensslTransport {
    buffers: LazyBuffers,
    stream: SslStream<ErrorCapture>,
}

impl Transport for OpensslTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.stream.get_mut().inner.set_timeout(timeout);
        let output = &self.buffers.output()[..amount];
        let result = self.stream.write_all(output);
        // The error underneath (a timeout) explains more than OpenSSL's view of it.
        self.stream.get_mut().take_captured()?;
        result?;
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.stream.get_mut().inner.set_timeout(timeout);
        let input = self.buffers.input_append_buf();
        let amount = match self.stream.read(input) {
            Ok(amount) => {
                if amount == 0 {
                    // OpenSSL reports some failures underneath as end of stream.
                    self.stream.get_mut().take_captured()?;
                }
                amount
            }
            Err(e) => {
                self.stream.get_mut().take_captured()?;
                return Err(e.into());
            }
        };
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        self.stream.get_mut().inner.get_mut().is_open()
    }

    fn is_tls(&self) -> bool {
        true
    }
}

impl fmt::Debug for OpensslTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpensslTransport").finish()
    }
}

/// Keeps the ureq error behind an I/O failure (a timeout, say), which OpenSSL would otherwise
/// flatten into a generic TLS error.
struct ErrorCapture {
    inner: TransportAdapter,
    captured: Option<ureq::Error>,
}

impl ErrorCapture {
    fn capture(&mut self, error: io::Error) -> io::Error {
        let message = error.to_string();
        self.captured = Some(error.into());
        io::Error::other(message)
    }

    fn take_captured(&mut self) -> Result<(), ureq::Error> {
        match self.captured.take() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

impl Read for ErrorCapture {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| self.capture(e))
    }
}

impl Write for ErrorCapture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf).map_err(|e| self.capture(e))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().map_err(|e| self.capture(e))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;
    use std::thread::JoinHandle;

    use openssl::asn1::Asn1Time;
    use openssl::bn::BigNum;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::pkey::{PKey, Private};
    use openssl::rsa::Rsa;
    use openssl::ssl::{SslAcceptor, SslVersion};
    use openssl::x509::extension::SubjectAlternativeName;
    use openssl::x509::{X509, X509NameBuilder};

    use super::*;

    /// A self-signed ECDSA P-256 certificate for exchange.example.test; its SHA-256 was
    /// computed with Python's hashlib.
    const FIXED_CERT_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBujCCAV+gAwIBAgIUfv2ba0m2A6kyuDDCkzeGYAeg+Z4wCgYIKoZIzj0EAwIw
IDEeMBwGA1UEAwwVZXhjaGFuZ2UuZXhhbXBsZS50ZXN0MCAXDTI2MTEzMDAyNTgw
NFoYDzIxMjYxMTA2MDI1ODA0WjAgMR4wHAYDVQQDDBVleGNoYW5nZS5leGFtcGxl
LnRlc3QwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQcatLcQ84t4sXnhyJdCjAY
7TIdPawlmWowmdfrp/oEtM3LnfrP938bJFYQaykzSzL54dAev23qiXfiTqPMSAFx
o3UwczAdBgNVHQ4EFgQUpKK5Li1HOJPYQdXIbYNEcidMCgUwHwYDVR0jBBgwFoAU
pKK5Li1HOJPYQdXIbYNEcidMCgUwDwYDVR0TAQH/BAUwAwEB/zAgBgNVHREEGTAX
ghVleGNoYW5nZS5leGFtcGxlLnRlc3QwCgYIKoZIzj0EAwIDSQAwRgIhAPUj7JZS
TbwdEtg1Z0qEjUAELQnlbeEQaAiouj19wxsbAiEA0/aXSLWxvRi8F7qd61ON1NIl
i1Yrt/LO7oMY0di/Bsw=
-----END CERTIFICATE-----
";
    const FIXED_CERT_SHA256: &str =
        "4f32e36a001798db5afd238f251e272bbac97b927aee81cde5b36c15e36be998";

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn ec_key() -> PKey<Private> {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
    }

    /// A self-signed certificate for 127.0.0.1, signed with `digest`.
    fn self_signed(key: &PKey<Private>, digest: MessageDigest) -> X509 {
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_nid(Nid::COMMONNAME, "127.0.0.1")
            .unwrap();
        let name = name.build();
        let mut builder = X509::builder().unwrap();
        builder.set_version(2).unwrap();
        let serial = BigNum::from_u32(7).unwrap().to_asn1_integer().unwrap();
        builder.set_serial_number(&serial).unwrap();
        builder.set_subject_name(&name).unwrap();
        builder.set_issuer_name(&name).unwrap();
        builder.set_pubkey(key).unwrap();
        builder
            .set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        builder
            .set_not_after(&Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        let san = SubjectAlternativeName::new()
            .ip("127.0.0.1")
            .build(&builder.x509v3_context(None, None))
            .unwrap();
        builder.append_extension(san).unwrap();
        builder.sign(key, digest).unwrap();
        builder.build()
    }

    #[test]
    fn fixed_certificate_end_point() {
        let cert = X509::from_pem(FIXED_CERT_PEM.as_bytes()).unwrap();
        let end_point = ServerEndPoint::of_certificate(&cert).unwrap();
        assert_eq!(end_point.hash_name(), "SHA256");
        assert_eq!(hex(end_point.hash()), FIXED_CERT_SHA256);
        let data = end_point.application_data();
        assert_eq!(&data[..21], b"tls-server-end-point:");
        assert_eq!(hex(&data[21..]), FIXED_CERT_SHA256);
    }

    #[test]
    fn end_point_hash_follows_the_signature_hash_but_never_md5_or_sha1() {
        let key = ec_key();
        for (signed_with, expected, name) in [
            (MessageDigest::sha1(), MessageDigest::sha256(), "SHA256"),
            (MessageDigest::sha256(), MessageDigest::sha256(), "SHA256"),
            (MessageDigest::sha384(), MessageDigest::sha384(), "SHA384"),
            (MessageDigest::sha512(), MessageDigest::sha512(), "SHA512"),
        ] {
            let cert = self_signed(&key, signed_with);
            let end_point = ServerEndPoint::of_certificate(&cert).unwrap();
            assert_eq!(end_point.hash_name(), name);
            // Independently: the hash of the DER encoding.
            let der = cert.to_der().unwrap();
            let expected_hash = openssl::hash::hash(expected, &der).unwrap();
            assert_eq!(end_point.hash(), &expected_hash[..], "{name}");
        }
    }

    #[test]
    fn unusable_cipher_list_names_the_value() {
        let err = TlsClient::new(true, Some("NOT-A-CIPHER")).unwrap_err();
        assert!(err.is_config_error());
        assert!(err.to_string().contains("\"NOT-A-CIPHER\""), "{err}");
        assert!(TlsClient::new(false, Some("HIGH:!aNULL")).is_ok());
    }

    /// Serves one HTTPS request (TLS 1.2 at most, so the cipher list matters) and answers
    /// with the negotiated cipher's name; gives `None` if the handshake failed.
    fn serve_tls_once(key: &PKey<Private>, cert: &X509) -> (u16, JoinHandle<Option<String>>) {
        let mut acceptor =
            SslAcceptor::mozilla_intermediate_v5(openssl::ssl::SslMethod::tls_server()).unwrap();
        acceptor.set_private_key(key).unwrap();
        acceptor.set_certificate(cert).unwrap();
        acceptor
            .set_max_proto_version(Some(SslVersion::TLS1_2))
            .unwrap();
        let acceptor = acceptor.build();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().ok()?;
            let mut tls = acceptor.accept(tcp).ok()?;
            let cipher = tls.ssl().current_cipher()?.name().to_owned();
            let mut reader = BufReader::new(&mut tls);
            let mut line = String::new();
            while reader.read_line(&mut line).ok()? > 2 {
                line.clear();
            }
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{cipher}",
                cipher.len()
            );
            tls.write_all(reply.as_bytes()).ok()?;
            Some(cipher)
        });
        (port, handle)
    }

    #[test]
    fn connector_applies_ciphers_and_records_the_server_certificate() {
        let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let cert = self_signed(&key, MessageDigest::sha384());
        let (port, server) = serve_tls_once(&key, &cert);
        let client = TlsClient::new(false, Some("ECDHE-RSA-CHACHA20-POLY1305")).unwrap();
        let (agent, slot) = crate::http::ews_agent(&client);
        let mut response = agent
            .get(format!("https://127.0.0.1:{port}/"))
            .call()
            .unwrap();
        let body = response.body_mut().read_to_string().unwrap();
        assert_eq!(body, "ECDHE-RSA-CHACHA20-POLY1305");
        assert_eq!(server.join().unwrap().as_deref(), Some(body.as_str()));
        let expected = ServerEndPoint::of_certificate(&cert).unwrap();
        assert_eq!(expected.hash_name(), "SHA384");
        assert_eq!(slot.latest(), Some(expected));
        assert_eq!(slot.connections(), 1);
    }

    #[test]
    fn untrusted_certificate_is_a_verification_error() {
        let key = ec_key();
        let cert = self_signed(&key, MessageDigest::sha256());
        let (port, server) = serve_tls_once(&key, &cert);
        let client = TlsClient::new(true, None).unwrap();
        let (agent, slot) = crate::http::ews_agent(&client);
        let err = agent
            .get(format!("https://127.0.0.1:{port}/"))
            .call()
            .unwrap_err();
        let ureq::Error::Other(inner) = err else {
            panic!("not our TLS error: {err}");
        };
        let tls = inner.downcast_ref::<TlsHandshakeError>().unwrap();
        assert!(tls.is_untrusted(), "{tls}");
        assert!(tls.to_string().contains("self-signed certificate"), "{tls}");
        assert_eq!(server.join().unwrap(), None);
        assert_eq!(slot.latest(), None);
    }

    #[test]
    fn plain_http_records_no_certificate() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut tcp, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(tcp.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap() > 2 {
                line.clear();
            }
            tcp.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                .unwrap();
        });
        let (agent, slot) = crate::http::ews_agent(&TlsClient::new(true, None).unwrap());
        let mut response = agent
            .get(format!("http://127.0.0.1:{port}/"))
            .call()
            .unwrap();
        assert_eq!(response.body_mut().read_to_string().unwrap(), "ok");
        server.join().unwrap();
        assert_eq!(slot.latest(), None);
        assert_eq!(slot.connections(), 1);
    }
}
