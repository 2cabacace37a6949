//! sumun's message bus: topics whose messages are stored durably and delivered to workers.
//! `log` is the embedded durable store — per topic partition, an append-only log of
//! checksummed records in segment files, with group-committed fsyncs, crash recovery and
//! retention. Publishing, subscriptions and delivery build on it.

#![forbid(unsafe_code)]

pub mod bus;
pub mod envelope;
pub mod log;
pub mod meta;
pub mod pull_api;
pub mod push;
mod state;
pub mod subscription;
pub mod topic;

pub use bus::{Bus, BusError, DeadFilter};
pub use push::PoolResolver;
pub use topic::{PublishError, PublishRequest, Published};
