//! Shared bits of the examples: reading their settings from the environment.
//!
//! Each example is a small program under `src/bin/`; `tests/examples.rs` builds and runs every
//! one of them against real peers (curl, Python requests, Node.js axios, `mtls gateway`).

/// A required setting: the environment variable `name`.
pub fn setting(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        eprintln!("set {name} (see the comment at the top of this example)");
        std::process::exit(2)
    })
}

/// An optional setting.
pub fn optional(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// A comma-separated list setting (empty when unset).
pub fn list(name: &str) -> Vec<String> {
    optional(name)
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
        .unwrap_or_default()
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

/// Binds `LISTEN` (default `default_listen`), says where it listens (the tests read that line)
/// and serves `app` until Ctrl-C or SIGTERM. Logs go to standard error at `RUST_LOG` (default
/// `info`): refused handshakes and requests are WARN lines naming the certificate.
pub async fn run(
    server: mtls_axum::MtlsServer,
    app: axum::Router,
    default_listen: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Already set (an example that set up its own): keep it.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let listen = optional("LISTEN").unwrap_or_else(|| default_listen.into());
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    server
        .serve_with_shutdown(listener, app, stop_signal())
        .await;
    Ok(())
}
