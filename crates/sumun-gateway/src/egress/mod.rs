//! Egress control for the forward proxy: who may use it and where it may connect.
//!
//! A request on a `forward_proxy` listener goes through the pieces in this order:
//! [`ProxyAuth::verify`] names the user from `Proxy-Authorization` (407 with [`challenge`] on
//! failure); [`EgressPolicy::check_name`] refuses a denied or never-allowed host before any DNS
//! query; [`Resolver::resolve`] turns the host into addresses (cached, bounded by a timeout);
//! and [`EgressPolicy::check_addr`] runs on each resolved address right before connecting, so
//! a name that resolves to a private address is refused there (DNS rebinding). A [`Refusal`]
//! names the rule for the 403 body and the access log.

pub mod auth;
pub mod dns;
pub mod policy;

pub use auth::{AuthError, ProxyAuth, challenge};
pub use dns::{DnsError, Resolver};
pub use policy::{EgressPolicy, Refusal};
