//! `mtls-gateway`: the mTLS terminating gateway (HTTP reverse proxy and raw TCP).
