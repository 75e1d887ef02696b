//! TLS to a remote daemon, configured with buildctl's flag names: a CA to trust, and optionally
//! a client certificate (mutual TLS, as buildkitd deployments usually require).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use super::Io;

/// Which application protocol to ask for (ALPN): gRPC servers insist on `h2`, dockerd's API
/// is HTTP/1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// `h2` only: buildkitd.
    Http2,
    /// `http/1.1` only: dockerd.
    Http1,
    /// Both, to learn which the server picks.
    Either,
}

/// What TLS to the daemon uses, as configured (buildctl's flag names).
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// CA certificate (PEM) that signed the daemon's certificate; turns TLS on.
    pub tlscacert: Option<PathBuf>,
    /// Client certificate (PEM) to present to the daemon.
    pub tlscert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub tlskey: Option<PathBuf>,
    /// Name to verify in the daemon's certificate (default: the upstream's host).
    pub tlsservername: Option<String>,
}

/// Why the TLS settings cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A client certificate or server name without a CA.
    #[error("TLS to the upstream needs --tlscacert (the CA that signed the daemon's certificate)")]
    NoCa,
    /// A unix-socket upstream has no host to verify.
    #[error("TLS to a unix socket needs --tlsservername")]
    NoServerName,
    /// The server name is not a valid DNS name or IP address.
    #[error("--tlsservername {name:?}: {message}")]
    BadServerName {
        /// The name given.
        name: String,
        /// Why it is refused.
        message: String,
    },
    /// A certificate file cannot be read or holds a bad certificate.
    #[error("{}: {message}", path.display())]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A certificate file holds no certificate.
    #[error("{} holds no PEM certificate", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file cannot be read.
    #[error("--tlskey {}: {message}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The client certificate and key do not go together.
    #[error("--tlscert/--tlskey: {0}")]
    ClientAuth(rustls::Error),
    /// rustls refused its own defaults.
    #[error("{0}")]
    Rustls(rustls::Error),
}

/// A ready TLS client for one daemon.
#[derive(Clone)]
pub struct Tls {
    configs: [Arc<ClientConfig>; 3],
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl TlsFiles {
    /// Loads the files; `None` when no TLS flag was given. `host` is the upstream's host name,
    /// the default server name.
    pub fn load(&self, host: Option<&str>) -> Result<Option<Tls>, TlsError> {
        let Some(ca) = &self.tlscacert else {
            if self.tlscert.is_some() || self.tlsservername.is_some() {
                return Err(TlsError::NoCa);
            }
            return Ok(None);
        };
        let mut roots = RootCertStore::empty();
        for cert in read_certs(ca)? {
            roots.add(cert).map_err(|e| certificate(ca, e))?;
        }
        let name = self
            .tlsservername
            .as_deref()
            .or(host)
            .ok_or(TlsError::NoServerName)?;
        let server_name =
            ServerName::try_from(name.to_string()).map_err(|e| TlsError::BadServerName {
                name: name.to_string(),
                message: e.to_string(),
            })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Rustls)?
            .with_root_certificates(roots);
        let base = match (&self.tlscert, &self.tlskey) {
            (Some(cert), Some(key)) => {
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
                    path: key.clone(),
                    message: e.to_string(),
                })?;
                builder
                    .with_client_auth_cert(read_certs(cert)?, key)
                    .map_err(TlsError::ClientAuth)?
            }
            _ => builder.with_no_client_auth(),
        };
        let with_alpn = |protocols: &[&[u8]]| {
            let mut c = base.clone();
            c.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
            Arc::new(c)
        };
        Ok(Some(Tls {
            configs: [
                with_alpn(&[b"h2"]),
                with_alpn(&[b"http/1.1"]),
                with_alpn(&[b"h2", b"http/1.1"]),
            ],
            server_name,
        }))
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| certificate(path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| certificate(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn certificate(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Certificate {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

impl Tls {
    /// Runs the handshake over `io`; returns the stream and the protocol the server chose.
    pub async fn connect(
        &self,
        io: Box<dyn Io>,
        alpn: Alpn,
    ) -> std::io::Result<(Box<dyn Io>, Option<Vec<u8>>)> {
        let config = match alpn {
            Alpn::Http2 => &self.configs[0],
            Alpn::Http1 => &self.configs[1],
            Alpn::Either => &self.configs[2],
        };
        let stream = TlsConnector::from(Arc::clone(config))
            .connect(self.server_name.clone(), io)
            .await?;
        let chosen = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        Ok((Box::new(stream), chosen))
    }
}
