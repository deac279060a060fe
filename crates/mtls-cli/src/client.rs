//! `mtls request` (a curl-like mTLS client) and `mtls tunnel` (plaintext locally, mTLS out).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use crate::pkidir::load_key;
use crate::secrets::Source;
use crate::UsageError;

/// Client credentials and trust, shared by `request` and `tunnel`.
#[derive(Args, Clone)]
pub struct ClientTlsArgs {
    /// Client certificate chain (leaf first).
    #[arg(long)]
    cert: PathBuf,
    /// Client private key (may be encrypted).
    #[arg(long)]
    key: PathBuf,
    /// CA certificates trusted for the server.
    #[arg(long = "ca", required = true)]
    ca: Vec<PathBuf>,
    /// Passphrase file for an encrypted key (else $MTLS_PASSPHRASE, else a prompt).
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
    /// Name to verify the server certificate against (default: the target host).
    #[arg(long)]
    server_name: Option<String>,
}

impl ClientTlsArgs {
    fn config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ClientConfig>> {
        let key = load_key(
            &self.key,
            &Source {
                file: self.passphrase_file.as_deref(),
                env: "MTLS_PASSPHRASE",
                flag: "--passphrase-file",
                what: "key passphrase",
            },
        )?;
        let chain = mtls_pki::pem_io::certificates(&mtls_pki::files::read_public(&self.cert)?)
            .with_context(|| format!("reading {}", self.cert.display()))?;
        let cred = mtls_tls::credential_from_parts(chain, &key, time::OffsetDateTime::now_utc())
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.cert.display()))?;
        let mut roots = Vec::new();
        for p in &self.ca {
            roots.extend(
                mtls_pki::pem_io::certificates(&mtls_pki::files::read_public(p)?)
                    .with_context(|| format!("reading {}", p.display()))?,
            );
        }
        Ok(Arc::new(mtls_tls::client_config(
            &roots,
            Some(&cred),
            alpn,
        )?))
    }

    fn server_name(&self, host: &str) -> Result<ServerName<'static>> {
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| host.trim_matches(['[', ']']).to_string());
        ServerName::try_from(name.clone())
            .map_err(|_| UsageError(format!("invalid server name {name:?}")).into())
    }
}

#[derive(Args)]
pub struct RequestArgs {
    /// https:// URL.
    url: String,
    #[command(flatten)]
    tls: ClientTlsArgs,
    /// HTTP method.
    #[arg(short = 'X', long = "request", default_value = "GET")]
    method: String,
    /// Request body (like curl -d; `@FILE` reads a file).
    #[arg(short = 'd', long = "data")]
    data: Option<String>,
    /// Extra header, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Print the status line and response headers too.
    #[arg(short = 'i', long = "include")]
    include: bool,
    /// Exit 22 when the response status is 400 or more (like curl --fail).
    #[arg(short = 'f', long)]
    fail: bool,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

pub fn request(a: RequestArgs) -> Result<ExitCode> {
    let uri: http::Uri = a
        .url
        .parse()
        .map_err(|_| UsageError(format!("invalid URL {:?}", a.url)))?;
    if uri.scheme_str() != Some("https") {
        return Err(UsageError("only https:// URLs are supported".into()).into());
    }
    let host = uri
        .host()
        .ok_or_else(|| UsageError("the URL has no host".into()))?
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let config = a.tls.config(&[b"http/1.1"])?;
    let server_name = a.tls.server_name(&host)?;
    let body = match &a.data {
        Some(d) if d.starts_with('@') => {
            Bytes::from(std::fs::read(&d[1..]).with_context(|| format!("reading {}", &d[1..]))?)
        }
        Some(d) => Bytes::from(d.clone()),
        None => Bytes::new(),
    };
    let method = if a.data.is_some() && a.method == "GET" {
        "POST".to_string()
    } else {
        a.method.clone()
    };
    let mut builder = http::Request::builder()
        .method(method.as_str())
        .uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header(
            http::header::HOST,
            uri.authority().map(|a| a.as_str()).unwrap_or(&host),
        );
    for h in &a.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| UsageError(format!("header {h:?} is not `Name: value`")))?;
        builder = builder.header(k.trim(), v.trim());
    }
    if a.data.is_some()
        && !a
            .headers
            .iter()
            .any(|h| h.to_ascii_lowercase().starts_with("content-type"))
    {
        builder = builder.header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        );
    }
    let req = builder
        .body(Full::new(body))
        .map_err(|e| UsageError(e.to_string()))?;
    let rt = runtime()?;
    let (status, head, body) = rt.block_on(async move {
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .with_context(|| format!("connecting to {host}:{port}"))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(server_name, tcp)
            .await
            .context("TLS handshake failed")?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let resp = sender
            .send_request(req)
            .await
            .context("sending the request")?;
        let status = resp.status();
        let mut head = format!("{:?} {}\r\n", resp.version(), status);
        for (k, v) in resp.headers() {
            head.push_str(&format!("{k}: {}\r\n", v.to_str().unwrap_or("<binary>")));
        }
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, anyhow::Error>((status, head, body))
    })?;
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if a.include {
        out.write_all(head.as_bytes())?;
        out.write_all(b"\r\n")?;
    }
    out.write_all(&body)?;
    if !body.ends_with(b"\n") && !body.is_empty() {
        out.write_all(b"\n")?;
    }
    if a.fail && status.as_u16() >= 400 {
        return Ok(ExitCode::from(22));
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct TunnelArgs {
    /// Local address to accept plaintext connections on (loopback only unless --allow-remote).
    #[arg(long)]
    listen: SocketAddr,
    /// The mTLS server, HOST:PORT.
    #[arg(long)]
    target: String,
    #[command(flatten)]
    tls: ClientTlsArgs,
    /// Accept connections on a non-loopback address (anyone who can reach it uses your
    /// certificate).
    #[arg(long)]
    allow_remote: bool,
}

pub fn tunnel(a: TunnelArgs) -> Result<ExitCode> {
    if !a.listen.ip().is_loopback() && !a.allow_remote {
        return Err(UsageError(format!(
            "refusing to listen on non-loopback {}: anyone reaching it would use your client certificate (pass --allow-remote to insist)",
            a.listen
        ))
        .into());
    }
    let (host, port) = a
        .target
        .rsplit_once(':')
        .and_then(|(h, p)| p.parse::<u16>().ok().map(|p| (h.to_string(), p)))
        .ok_or_else(|| UsageError(format!("--target {:?} must be HOST:PORT", a.target)))?;
    let config = a.tls.config(&[])?;
    let server_name = a.tls.server_name(&host)?;
    let rt = runtime()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("binding {}", a.listen))?;
        eprintln!(
            "mtls tunnel: {} -> {host}:{port} (mTLS)",
            listener.local_addr()?
        );
        let connector = tokio_rustls::TlsConnector::from(config);
        loop {
            let (mut local, remote) = tokio::select! {
                r = listener.accept() => r?,
                _ = tokio::signal::ctrl_c() => return Ok::<_, anyhow::Error>(()),
            };
            let connector = connector.clone();
            let server_name = server_name.clone();
            let host = host.clone();
            tokio::spawn(async move {
                let result = async {
                    let tcp = TcpStream::connect((host.as_str(), port)).await?;
                    tcp.set_nodelay(true)?;
                    let mut tls = connector.connect(server_name, tcp).await?;
                    tokio::io::copy_bidirectional(&mut local, &mut tls).await?;
                    Ok::<_, std::io::Error>(())
                }
                .await;
                if let Err(e) = result {
                    eprintln!("mtls tunnel: connection from {remote}: {e}");
                }
            });
        }
    })?;
    Ok(ExitCode::SUCCESS)
}
