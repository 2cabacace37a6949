//! The proxy error: which side failed, what happened, and whether retrying is safe. Retry,
//! circuit breaking and status mapping read these fields, never error strings.

use http::StatusCode;

use crate::body::BodyError;

/// Where a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client sent something we refuse, or went away.
    Downstream,
    /// The upstream refused, reset, timed out or spoke nonsense.
    Upstream,
    /// Our own fault or configuration.
    Internal,
}

/// What went wrong, precisely enough to pick a status and a retry decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// TCP/unix connect failed (refused, unreachable, DNS): the request never left.
    ConnectFailed,
    /// Connect did not finish in time: the request never left.
    ConnectTimeout,
    /// The connection broke after the request may have been sent.
    UpstreamReset,
    /// No response head within the request timeout.
    UpstreamTimeout,
    /// The upstream's response was not valid HTTP.
    UpstreamProtocol,
    /// Every endpoint is down or the pool is empty.
    NoHealthyEndpoint,
    /// The request body exceeded the listener limit.
    BodyTooLarge,
    /// The client's body stream broke.
    DownstreamBody,
    /// Our own Via token came back: a proxy loop.
    Loop,
    /// The request is malformed or ambiguous.
    BadRequest,
    /// No route matches.
    NoRoute,
    Internal,
}

/// An error on the proxy path.
#[derive(Debug)]
pub struct ProxyError {
    pub side: Side,
    pub kind: ErrorKind,
    /// Safe to retry on another endpoint: the upstream cannot have acted on the request.
    pub retryable: bool,
    /// Shown to the client; must never contain internals (addresses, paths, stack details).
    pub detail: &'static str,
    /// Sent as `Retry-After` (an open circuit breaker knows when it will let requests in).
    pub retry_after: Option<std::time::Duration>,
    pub source: Option<BodyError>,
}

impl ProxyError {
    pub fn new(kind: ErrorKind, detail: &'static str) -> Self {
        let (side, retryable) = match kind {
            ErrorKind::ConnectFailed | ErrorKind::ConnectTimeout => (Side::Upstream, true),
            ErrorKind::NoHealthyEndpoint => (Side::Upstream, false),
            ErrorKind::UpstreamReset | ErrorKind::UpstreamTimeout | ErrorKind::UpstreamProtocol => {
                (Side::Upstream, false)
            }
            ErrorKind::BodyTooLarge
            | ErrorKind::DownstreamBody
            | ErrorKind::Loop
            | ErrorKind::BadRequest
            | ErrorKind::NoRoute => (Side::Downstream, false),
            ErrorKind::Internal => (Side::Internal, false),
        };
        ProxyError { side, kind, retryable, detail, retry_after: None, source: None }
    }

    pub fn with_retry_after(mut self, after: std::time::Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    pub fn with_source(mut self, source: impl Into<BodyError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The one mapping from error to status code.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            ErrorKind::ConnectFailed | ErrorKind::UpstreamReset | ErrorKind::UpstreamProtocol => {
                StatusCode::BAD_GATEWAY
            }
            ErrorKind::ConnectTimeout | ErrorKind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::NoHealthyEndpoint => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::DownstreamBody | ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Loop => StatusCode::LOOP_DETECTED,
            ErrorKind::NoRoute => StatusCode::NOT_FOUND,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short stable name for logs and metrics.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            ErrorKind::ConnectFailed => "connect_failed",
            ErrorKind::ConnectTimeout => "connect_timeout",
            ErrorKind::UpstreamReset => "upstream_reset",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::UpstreamProtocol => "upstream_protocol",
            ErrorKind::NoHealthyEndpoint => "no_healthy_endpoint",
            ErrorKind::BodyTooLarge => "body_too_large",
            ErrorKind::DownstreamBody => "downstream_body",
            ErrorKind::Loop => "loop",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::NoRoute => "no_route",
            ErrorKind::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind_name(), self.detail)?;
        if let Some(src) = &self.source {
            write!(f, ": {src}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ProxyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_mapping() {
        let cases = [
            (ErrorKind::ConnectFailed, 502, true),
            (ErrorKind::UpstreamReset, 502, false),
            (ErrorKind::ConnectTimeout, 504, true),
            (ErrorKind::UpstreamTimeout, 504, false),
            (ErrorKind::NoHealthyEndpoint, 503, false),
            (ErrorKind::BodyTooLarge, 413, false),
            (ErrorKind::Loop, 508, false),
            (ErrorKind::NoRoute, 404, false),
        ];
        for (kind, status, retry) in cases {
            let e = ProxyError::new(kind, "x");
            assert_eq!(e.status().as_u16(), status, "{kind:?}");
            assert_eq!(e.retryable, retry, "{kind:?}");
        }
    }
}
