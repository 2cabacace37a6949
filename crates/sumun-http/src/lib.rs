//! Shared HTTP plumbing for sumun: the body type every layer passes around, hop-by-hop
//! header hygiene (RFC 9110 §7.6.1), `Forwarded`/`X-Forwarded-*`/`Via`, RFC 9457
//! problem+json responses, and the proxy error type that says which side failed and whether a
//! retry is safe. It owns no I/O and no policy: what to do with an error is the gateway's call.

#![forbid(unsafe_code)]

pub mod body;
pub mod error;
pub mod forwarded;
pub mod hop;
pub mod problem;
pub mod replay;

pub use body::{Body, BodyError};
pub use error::{ErrorKind, ProxyError, Side};
