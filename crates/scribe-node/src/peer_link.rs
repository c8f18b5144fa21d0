//! The peer port's transport and its security: a connection between two nodes (replication or
//! control plane), whichever way it was opened, as one boxed byte stream split into a read and
//! a write half, so a plain TCP connection and one wrapped in TLS look the same to the protocol
//! above it.
//!
//! [`PeerSecurity`] opens (dials) and accepts those connections. With `--peer-tls-*` every
//! connection is mutual TLS: the listener requires a client certificate signed by the cluster's
//! CA and the dialer checks the listener's certificate against the same CA, for the host or IP
//! it dialed. With `--peer-secret` both sides then prove they hold the cluster's secret by a
//! challenge–response (the proofs are `scribe_core::peer_auth`'s; this module only sends and
//! receives them) before a single byte of the peer protocol. Without either, connections are
//! plain TCP, as before.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ring::rand::SecureRandom;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use scribe_core::peer_auth::NONCE_LEN;
use scribe_core::{PeerSecret, Side};
use scribe_wire::{read_message, write_message, Message, Refusal, RefusalCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

/// Any byte stream a peer connection can run over.
pub trait PeerIo: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> PeerIo for T {}

/// A peer connection's byte stream (TCP, or TLS over TCP).
pub type PeerStream = Box<dyn PeerIo>;
/// The read half of a peer connection.
pub type PeerReader = ReadHalf<PeerStream>;
/// The write half of a peer connection.
pub type PeerWriter = WriteHalf<PeerStream>;

/// How long the TLS handshake and the secret's challenge–response may take.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);

/// Splits a stream into its halves.
pub fn split(stream: PeerStream) -> (PeerReader, PeerWriter) {
    tokio::io::split(stream)
}

/// A plain TCP connection as a peer stream (Nagle off: the protocol flushes whole messages).
pub fn plain(stream: TcpStream) -> PeerStream {
    let _ = stream.set_nodelay(true);
    Box::new(stream)
}

/// The PEM files of mutual TLS on the peer port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTlsFiles {
    /// This node's certificate chain (it serves it and presents it as a client).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA that signs every node's certificate.
    pub ca: PathBuf,
}

struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    connector: tokio_rustls::TlsConnector,
}

/// Why a dial did not give a usable connection.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The other node could not be reached: try again later.
    #[error("connect to {addr}: {why}")]
    Unreachable {
        /// Where.
        addr: String,
        /// What failed.
        why: String,
    },
    /// The other node refused this one during authentication (its message says why).
    #[error("{}", .0.message)]
    Refused(Refusal),
    /// This node did not accept the other one (its TLS certificate, or its proof of the secret).
    #[error("peer authentication failed: {0}")]
    Unauthenticated(String),
}

/// How this node's peer connections are secured; see the module documentation.
#[derive(Default)]
pub struct PeerSecurity {
    secret: Option<PeerSecret>,
    tls: Option<Tls>,
}

impl std::fmt::Debug for PeerSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerSecurity")
            .field("secret", &self.secret.is_some())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Reads the peer secret file: refuses an unreadable, empty or short one, warns when the file
/// can be read by its group or others.
pub fn load_secret(path: &Path) -> Result<PeerSecret, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("read the peer secret {}: {e}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(file = %path.display(), mode = format!("{:o}", mode & 0o777), "the peer secret file can be read by its group or others: chmod 600 it");
            }
        }
    }
    PeerSecret::new(&bytes).map_err(|e| format!("peer secret {}: {e}", path.display()))
}

fn load_tls(files: &PeerTlsFiles) -> Result<Tls, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!(
                "read the peer TLS certificate {}: {e}",
                files.cert.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "the peer TLS certificate file {} holds no certificate",
            files.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("read the peer TLS key {}: {e}", files.key.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.ca)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("read the peer TLS CA {}: {e}", files.ca.display()))?;
    for ca in cas {
        roots
            .add(ca)
            .map_err(|e| format!("peer TLS CA {}: {e}", files.ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "the peer TLS CA file {} holds no certificate",
            files.ca.display()
        ));
    }
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .map_err(|e| format!("peer TLS CA {}: {e}", files.ca.display()))?;
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("peer TLS: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs.clone(), key.clone_key())
        .map_err(|e| {
            format!(
                "peer TLS certificate {} and key {}: {e}",
                files.cert.display(),
                files.key.display()
            )
        })?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("peer TLS: {e}"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| {
            format!(
                "peer TLS certificate {} and key {}: {e}",
                files.cert.display(),
                files.key.display()
            )
        })?;
    Ok(Tls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
    })
}

/// The host part of `host:port` (brackets of an IPv6 address removed).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn nonce() -> Result<[u8; NONCE_LEN], String> {
    let mut n = [0u8; NONCE_LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut n)
        .map_err(|_| "draw a random nonce: the system's random source failed".to_string())?;
    Ok(n)
}

/// Why the listener refused a connection, for its log (the peer was told).
#[derive(Debug)]
pub struct AcceptRefused(pub String);

impl PeerSecurity {
    /// No security: plain TCP, anyone who reaches the peer port may connect.
    pub fn none() -> PeerSecurity {
        PeerSecurity::default()
    }

    /// Loads the secret and the TLS files, if given; any problem is an error that stops the
    /// node from starting.
    pub fn load(secret: Option<&Path>, tls: Option<&PeerTlsFiles>) -> Result<PeerSecurity, String> {
        Ok(PeerSecurity {
            secret: secret.map(load_secret).transpose()?,
            tls: tls.map(load_tls).transpose()?,
        })
    }

    /// Whether a peer secret is configured.
    pub fn has_secret(&self) -> bool {
        self.secret.is_some()
    }

    /// Whether the peer port speaks TLS.
    pub fn has_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether `e`, on the first read of a dialed connection, is the listener rejecting this
    /// node's TLS certificate: in TLS 1.3 the dialer's handshake completes before the listener
    /// has checked its certificate, so the rejection (an alert) arrives on the first read.
    pub fn is_tls_rejection(&self, e: &scribe_wire::WireError) -> bool {
        self.has_tls()
            && matches!(e, scribe_wire::WireError::Io(io) if io.kind() == std::io::ErrorKind::InvalidData)
    }

    /// The listener's side of a new connection from `addr`: TLS, then the secret's
    /// challenge–response. On a refusal the peer has been told why (when it could be) and the
    /// connection is closed; the caller logs the reason.
    pub async fn accept(
        &self,
        tcp: TcpStream,
        addr: SocketAddr,
    ) -> Result<(PeerReader, PeerWriter), AcceptRefused> {
        let stream = match &self.tls {
            None => plain(tcp),
            Some(tls) => {
                let _ = tcp.set_nodelay(true);
                match tokio::time::timeout(AUTH_TIMEOUT, tls.acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => Box::new(s) as PeerStream,
                    Ok(Err(e)) => {
                        return Err(AcceptRefused(format!(
                            "peer authentication failed: TLS handshake with {addr}: {e}"
                        )))
                    }
                    Err(_) => {
                        return Err(AcceptRefused(format!(
                            "peer authentication failed: no TLS handshake from {addr} within {AUTH_TIMEOUT:?}"
                        )))
                    }
                }
            }
        };
        let (mut rd, mut wr) = split(stream);
        let Some(secret) = &self.secret else {
            return Ok((rd, wr));
        };
        match tokio::time::timeout(AUTH_TIMEOUT, self.challenge(secret, &mut rd, &mut wr)).await {
            Ok(Ok(())) => Ok((rd, wr)),
            Ok(Err(why)) => {
                refuse_and_close(rd, wr, RefusalCode::Unauthenticated, why.clone()).await;
                Err(AcceptRefused(why))
            }
            Err(_) => Err(AcceptRefused(format!(
                "peer authentication failed: no proof of the peer secret within {AUTH_TIMEOUT:?}"
            ))),
        }
    }

    async fn challenge(
        &self,
        secret: &PeerSecret,
        rd: &mut PeerReader,
        wr: &mut PeerWriter,
    ) -> Result<(), String> {
        let fail = |why: String| format!("peer authentication failed: {why}");
        let theirs = match read_message(rd).await {
            Ok(Message::AuthHello { nonce }) => nonce,
            Ok(other) => {
                return Err(fail(format!(
                    "the listening node requires peer authentication (--peer-secret) and the dialing node sent a {} message without it: give every node the cluster's --peer-secret",
                    other.kind()
                )))
            }
            Err(e) => return Err(fail(format!("read the peer's hello: {e}"))),
        };
        if theirs.len() != NONCE_LEN {
            return Err(fail(format!(
                "the peer's nonce is {} bytes, not {NONCE_LEN}",
                theirs.len()
            )));
        }
        let mine = nonce()?;
        let proof = secret.prove(Side::Listener, &theirs, &mine);
        write_message(
            wr,
            &Message::AuthChallenge {
                nonce: mine.to_vec(),
                proof: proof.to_vec(),
            },
        )
        .await
        .map_err(|e| fail(format!("send the challenge: {e}")))?;
        wr.flush()
            .await
            .map_err(|e| fail(format!("send the challenge: {e}")))?;
        let proof = match read_message(rd).await {
            Ok(Message::AuthProof { proof }) => proof,
            Ok(Message::Refused(r)) => {
                return Err(fail(format!("the peer refused: {}", r.message)))
            }
            Ok(other) => {
                return Err(fail(format!(
                    "expected the peer's proof, got a {} message",
                    other.kind()
                )))
            }
            Err(e) => return Err(fail(format!("read the peer's proof: {e}"))),
        };
        secret
            .verify(Side::Dialer, &theirs, &mine, &proof)
            .map_err(|e| fail(e.to_string()))?;
        write_message(wr, &Message::AuthAccepted)
            .await
            .map_err(|e| fail(format!("send the acceptance: {e}")))?;
        wr.flush()
            .await
            .map_err(|e| fail(format!("send the acceptance: {e}")))?;
        Ok(())
    }

    /// Opens a peer connection to `target` (`host:port`) within `timeout`: TCP, TLS (checking
    /// the certificate for `host`), then the secret's challenge–response.
    pub async fn dial(
        &self,
        target: &str,
        timeout: Duration,
    ) -> Result<(PeerReader, PeerWriter), DialError> {
        let unreachable = |why: String| DialError::Unreachable {
            addr: target.to_string(),
            why,
        };
        let tcp = match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => return Err(unreachable("timed out".into())),
        };
        let stream = match &self.tls {
            None => plain(tcp),
            Some(tls) => {
                let _ = tcp.set_nodelay(true);
                let name = ServerName::try_from(host_of(target).to_string()).map_err(|e| {
                    DialError::Unauthenticated(format!(
                        "{target}: not a host name or IP address for TLS: {e}"
                    ))
                })?;
                match tokio::time::timeout(timeout, tls.connector.connect(name, tcp)).await {
                    Ok(Ok(s)) => Box::new(s) as PeerStream,
                    Ok(Err(e)) => {
                        return Err(DialError::Unauthenticated(format!(
                            "TLS handshake with {target}: {e}"
                        )))
                    }
                    Err(_) => return Err(unreachable("TLS handshake timed out".into())),
                }
            }
        };
        let (mut rd, mut wr) = split(stream);
        if let Some(secret) = &self.secret {
            match tokio::time::timeout(timeout, respond(secret, target, &mut rd, &mut wr)).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(unreachable(
                        "no answer to the peer authentication in time".into(),
                    ))
                }
            }
        }
        Ok((rd, wr))
    }
}

/// The dialer's side of the secret's challenge–response.
async fn respond(
    secret: &PeerSecret,
    target: &str,
    rd: &mut PeerReader,
    wr: &mut PeerWriter,
) -> Result<(), DialError> {
    let io = |what: &str, e: String| DialError::Unreachable {
        addr: target.to_string(),
        why: format!("{what}: {e}"),
    };
    let mine = nonce().map_err(DialError::Unauthenticated)?;
    write_message(
        wr,
        &Message::AuthHello {
            nonce: mine.to_vec(),
        },
    )
    .await
    .map_err(|e| io("send the authentication hello", e.to_string()))?;
    wr.flush()
        .await
        .map_err(|e| io("send the authentication hello", e.to_string()))?;
    let (theirs, proof) = match read_message(rd).await {
        Ok(Message::AuthChallenge { nonce, proof }) => (nonce, proof),
        Ok(Message::Refused(r)) => return Err(DialError::Refused(r)),
        Ok(other) => {
            return Err(DialError::Unauthenticated(format!(
                "{target} answered the authentication hello with a {} message",
                other.kind()
            )))
        }
        Err(e) => return Err(io("read the challenge", e.to_string())),
    };
    if let Err(e) = secret.verify(Side::Listener, &mine, &theirs, &proof) {
        let why = format!("{target} did not prove it holds the peer secret: {e}");
        let refusal = Refusal {
            code: RefusalCode::Unauthenticated,
            message: format!("peer authentication failed: {why}"),
        };
        let _ = write_message(wr, &Message::Refused(refusal)).await;
        let _ = wr.flush().await;
        return Err(DialError::Unauthenticated(why));
    }
    let proof = secret.prove(Side::Dialer, &mine, &theirs);
    write_message(
        wr,
        &Message::AuthProof {
            proof: proof.to_vec(),
        },
    )
    .await
    .map_err(|e| io("send the proof", e.to_string()))?;
    wr.flush()
        .await
        .map_err(|e| io("send the proof", e.to_string()))?;
    match read_message(rd).await {
        Ok(Message::AuthAccepted) => Ok(()),
        Ok(Message::Refused(r)) => Err(DialError::Refused(r)),
        Ok(other) => Err(DialError::Unauthenticated(format!(
            "{target} answered the proof with a {} message",
            other.kind()
        ))),
        Err(e) => Err(io("read the answer to the proof", e.to_string())),
    }
}

/// Tells the peer why it is refused and closes: the write side first, then whatever the peer
/// still sends is read (for a second at most) so the close does not reset the connection
/// before the peer has read the refusal.
pub async fn refuse_and_close<R, W>(mut rd: R, mut wr: W, code: RefusalCode, message: String)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let _ = write_message(&mut wr, &Message::Refused(Refusal { code, message })).await;
    let _ = wr.flush().await;
    let _ = wr.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Ok(n) = rd.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn the_host_of_an_address_is_what_the_certificate_must_name() {
        assert_eq!(host_of("127.0.0.1:6480"), "127.0.0.1");
        assert_eq!(host_of("db-1.example:6480"), "db-1.example");
        assert_eq!(host_of("[::1]:6480"), "::1");
    }
}
