//! The guide's `MTLSClient` (an `https.Agent` with cert, key, CA and passphrase, used with
//! `fetch` and axios), in Rust: `mtls_client::ClientBuilder` gives a `mtls_client::Client` (a
//! `reqwest::Client` whose pooled connections are closed once their server is no longer
//! trusted).
//!
//! ```sh
//! CERT=client.chain.pem KEY=client.key CA=root.crt PASSPHRASE_FILE=client.pass \
//!   cargo run -p mtls-examples --bin guide_client -- https://localhost:8443/api/secure
//! ```
//!
//! Prints the status and body. The certificate files are checked whenever a new connection
//! starts, so a long-running client picks up a renewed certificate without a restart.

use mtls_examples::{optional, setting};

/// The guide's class: one agent (here, one connection pool) for every request.
struct MtlsClient {
    http: mtls_client::Client,
}

impl MtlsClient {
    fn new(
        cert: &str,
        key: &str,
        ca: &str,
        passphrase_file: Option<String>,
    ) -> Result<Self, mtls_client::Error> {
        let mut b = mtls_client::ClientBuilder::new()
            .ca_file(ca)
            .identity_files(cert, key);
        if let Some(p) = passphrase_file {
            b = b.passphrase_file(p);
        }
        Ok(MtlsClient { http: b.build()? })
    }

    async fn request(
        &self,
        url: &str,
    ) -> Result<mtls_client::reqwest::Response, mtls_client::Error> {
        Ok(self.http.get(url).send().await?)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args().nth(1).ok_or("usage: guide_client URL")?;
    let client = MtlsClient::new(
        &setting("CERT"),
        &setting("KEY"),
        &setting("CA"),
        optional("PASSPHRASE_FILE"),
    )?;
    let response = client.request(&url).await?;
    println!("{}", response.status().as_u16());
    // At most 1 MiB: the client's time limits do not bound the size of what a server sends.
    let body = mtls_client::body_limited(response, 1 << 20).await?;
    println!("{}", String::from_utf8_lossy(&body));
    Ok(())
}
