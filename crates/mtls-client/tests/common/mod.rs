//! Helpers shared by the client's integration tests.
#![allow(dead_code)]

/// The status of a GET of `https://localhost:PORT/` (the client resolves `localhost` to the
/// server's address), or the error's chain of causes.
pub async fn get(client: &mtls_client::Client, addr: std::net::SocketAddr) -> Result<u16, String> {
    client
        .get(format!("https://localhost:{}/", addr.port()))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| mtls_client::ca::error_chain(&e))
}
