//! [`Client`]: the HTTPS client of [`ClientBuilder::build`](crate::ClientBuilder::build), whose
//! pooled connections do not outlive the trust in their server.

use std::sync::{Arc, Mutex};

use crate::ServerTrust;

type MakeClient = dyn Fn() -> Result<reqwest::Client, reqwest::Error> + Send + Sync;

/// An HTTPS client from [`ClientBuilder::build`](crate::ClientBuilder::build): requests are
/// made as with [`reqwest::Client`] (`get`, `post`, …, `send`). Cloning is cheap and shares the
/// connections.
///
/// A `reqwest::Client` keeps connections open and reuses them without a new handshake, so the
/// server's certificate is not verified again while they last. When the builder checks the
/// server's revocation status (a CRL file, the CA's feed, OCSP), this one replaces its
/// `reqwest::Client`, and with it every pooled connection, once a server it has connections
/// to is no longer trusted ([`crate::ServerTrust::connection_epoch`]): revoked, expired, its
/// CA gone. The request that notices it, and every one after, opens a new connection, and its
/// handshake refuses the server.
///
/// What it does not do: check anything again without such checks configured (no CRL, feed or
/// OCSP: expiry alone is not looked at); cut what is already under way (a response being
/// read, an HTTP/2 stream, a request builder made before: the look happens when a request is
/// started with [`Client::get`] and the like).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    /// The reqwest client in use and the connection epoch it was made at.
    current: Mutex<(u64, reqwest::Client)>,
    /// Where revoked servers are noticed; `None` when no revocation check is configured.
    trust: Option<Arc<ServerTrust>>,
    make: Box<MakeClient>,
    /// Handed out when a new client cannot be made: it refuses every server (fail closed).
    refusing: reqwest::Client,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("trust", &self.inner.trust)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub(crate) fn new(
        trust: Option<Arc<ServerTrust>>,
        make: Box<MakeClient>,
        refusing: reqwest::Client,
    ) -> Result<Self, reqwest::Error> {
        let epoch = trust.as_ref().map_or(0, |t| t.connection_epoch());
        let first = make()?;
        Ok(Client {
            inner: Arc::new(Inner {
                current: Mutex::new((epoch, first)),
                trust,
                make,
                refusing,
            }),
        })
    }

    /// The `reqwest::Client` for the next request: a new one, without the pooled connections,
    /// when a server of those connections is no longer trusted. Keep it for one request (or a
    /// few at once), not for long: it is not replaced itself.
    pub fn current(&self) -> reqwest::Client {
        // Before the lock: a look at the servers may take a while, and other requests go on.
        let epoch = self.inner.trust.as_ref().map(|t| t.connection_epoch());
        let mut current = self.inner.current.lock().unwrap_or_else(|e| e.into_inner());
        let Some(epoch) = epoch else {
            return current.1.clone();
        };
        if current.0 != epoch {
            match (self.inner.make)() {
                Ok(client) => *current = (epoch, client),
                Err(e) => {
                    tracing::error!(error = %e, "cannot make a new HTTPS client: refusing requests");
                    return self.inner.refusing.clone();
                }
            }
        }
        current.1.clone()
    }

    /// Starts a request with `method` to `url` (see [`reqwest::Client::request`]).
    pub fn request<U: reqwest::IntoUrl>(
        &self,
        method: reqwest::Method,
        url: U,
    ) -> reqwest::RequestBuilder {
        self.current().request(method, url)
    }

    /// Starts a `GET` request to `url`.
    pub fn get<U: reqwest::IntoUrl>(&self, url: U) -> reqwest::RequestBuilder {
        self.current().get(url)
    }

    /// Starts a `POST` request to `url`.
    pub fn post<U: reqwest::IntoUrl>(&self, url: U) -> reqwest::RequestBuilder {
        self.current().post(url)
    }

    /// Starts a `PUT` request to `url`.
    pub fn put<U: reqwest::IntoUrl>(&self, url: U) -> reqwest::RequestBuilder {
        self.current().put(url)
    }

    /// Starts a `PATCH` request to `url`.
    pub fn patch<U: reqwest::IntoUrl>(&self, url: U) -> reqwest::RequestBuilder {
        self.current().patch(url)
    }

    /// Starts a `DELETE` request to `url`.
    pub fn delete<U: reqwest::IntoUrl>(&self, url: U) -> reqwest::RequestBuilder {
        self.current().delete(url)
    }

    /// Starts a `HEAD` request to `url`.
    pub fn head<U: reqwest::IntoUrl>(&self, url: U) -> reqwest::RequestBuilder {
        self.current().head(url)
    }

    /// Sends a request built beforehand (see [`reqwest::Client::execute`]).
    pub async fn execute(
        &self,
        request: reqwest::Request,
    ) -> Result<reqwest::Response, reqwest::Error> {
        self.current().execute(request).await
    }
}
