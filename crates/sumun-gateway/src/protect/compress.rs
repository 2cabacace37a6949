//! Compression. PLACEHOLDER: owned by the compression helper, replaced wholesale.

use http::request::Parts;
use http::{HeaderMap, Response};
use sumun_config::{Compress, Encoding};
use sumun_http::Body;

use super::Rejection;

pub struct Compressor {
    #[allow(dead_code)]
    cfg: Compress,
}

impl Compressor {
    pub fn compile(cfg: &Compress) -> Self {
        Compressor { cfg: cfg.clone() }
    }

    /// The response encoding the client prefers among ours (from `Accept-Encoding`), decided
    /// before the request is consumed.
    pub fn negotiate(&self, _request_headers: &HeaderMap) -> Option<Encoding> {
        None
    }

    /// Decodes a `Content-Encoding` request body when `decompress_requests` is on, with the
    /// ratio guard; otherwise returns the body untouched.
    pub fn decode_request(&self, _parts: &mut Parts, body: Body, _max_body: u64) -> Result<Body, Rejection> {
        Ok(body)
    }

    /// Compresses the response when it qualifies; always adds `Vary: Accept-Encoding` to
    /// responses that could have been compressed.
    pub fn encode_response(
        &self,
        _chosen: Option<Encoding>,
        _method: &http::Method,
        res: Response<Body>,
    ) -> Response<Body> {
        res
    }
}
