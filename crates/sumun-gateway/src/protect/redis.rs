//! The shared Redis connection. PLACEHOLDER: owned by the rate-limit helper, replaced wholesale.

/// A cheap-to-clone handle on the `[redis]` connection.
#[derive(Clone)]
pub struct Redis {}

impl Redis {
    pub fn new(_cfg: &sumun_config::Redis) -> Result<Self, String> {
        Ok(Redis {})
    }
}
