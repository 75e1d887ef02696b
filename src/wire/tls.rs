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

/// The flags, as given.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// CA certificate (PEM) that signed the daemon's certificate; turns TLS on.
    #[arg(long, value_name = "FILE", env = "IRSA_SECRETS_TLSCACERT")]
    pub tlscacert: Option<PathBuf>,
    /// Client certificate (PEM) to present to the daemon.
    #[arg(
        long,
        value_name = "FILE",
        env = "IRSA_SECRETS_TLSCERT",
        requires = "tlskey"
    )]
    pub tlscert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        value_name = "FILE",
        env = "IRSA_SECRETS_TLSKEY",
        requires = "tlscert"
    )]
    pub tlskey: Option<PathBuf>,
    /// Name to verify in the daemon's certificate (default: the upstream's host).
    #[arg(long, value_name = "NAME", env = "IRSA_SECRETS_TLSSERVERNAME")]
    pub tlsservername: Option<String>,
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

impl TlsArgs {
    /// Loads the files; `None` when no TLS flag was given. `host` is the upstream's host name,
    /// the default server name.
    pub fn load(&self, host: Option<&str>) -> Result<Option<Tls>, String> {
        let Some(ca) = &self.tlscacert else {
            if self.tlscert.is_some() || self.tlsservername.is_some() {
                return Err("TLS to the upstream needs --tlscacert (the CA that signed the daemon's certificate)".into());
            }
            return Ok(None);
        };
        let mut roots = RootCertStore::empty();
        for cert in read_certs(ca)? {
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", ca.display()))?;
        }
        let name = self
            .tlsservername
            .as_deref()
            .or(host)
            .ok_or("TLS to a unix socket needs --tlsservername")?;
        let server_name = ServerName::try_from(name.to_string())
            .map_err(|e| format!("--tlsservername {name:?}: {e}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let base = match (&self.tlscert, &self.tlskey) {
            (Some(cert), Some(key)) => {
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("--tlskey {}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(read_certs(cert)?, key)
                    .map_err(|e| format!("--tlscert/--tlskey: {e}"))?
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

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
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
