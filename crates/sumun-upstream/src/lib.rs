//! Upstream pools for sumun: endpoints (TCP or unix socket), their keep-alive connection
//! pools, the balancer that picks one, and the request/response exchange with typed errors
//! (which side failed, whether a retry is safe). It knows nothing of routes or listeners.

#![forbid(unsafe_code)]

pub mod balance;
pub mod breaker;
mod connector;
pub mod endpoint;
mod h1pool;
pub mod health;
pub mod outlier;
mod pool;
pub mod retry;
mod transport;

pub use connector::{ConnectFailed, ConnectTimedOut, Connector, UpstreamStream};
pub use pool::{Refused, TryPermit, UpstreamPool, outcome_of};
