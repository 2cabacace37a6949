//! The sumun gateway: listeners and connections (TCP, unix, TLS; HTTP/1.1 and HTTP/2), the
//! router, the route compiler and the Runtime snapshot swapped on reload, the request handler
//! with its targets (upstream, respond, redirect, echo), and the access log. Upstream pools
//! live in `sumun-upstream`, shared HTTP plumbing in `sumun-http`, the admin API in
//! `sumun-admin`.

#![forbid(unsafe_code)]

pub mod access_log;
mod cache;
mod conn_state;
pub mod egress;
mod exchange;
mod forward;
mod forward_proxy;
mod h1guard;
pub mod path;
pub mod protect;
mod proxy;
mod request_id;
pub mod router;
pub mod runtime;
mod server;
mod tls;
mod topic;

pub use access_log::AccessLogger;
pub use runtime::{BuildError, Runtime};
pub use server::{Gateway, ListenError};
