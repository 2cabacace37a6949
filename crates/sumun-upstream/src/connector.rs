//! Opens connections to endpoints: TCP (through hyper-util's connector: async DNS off the
//! runtime, nodelay) or unix sockets, each bounded by the connect timeout.

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, UnixStream};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The connect attempt did not finish within the configured timeout.
#[derive(Debug, thiserror::Error)]
#[error("connect timed out after {0:?}")]
pub struct ConnectTimedOut(pub Duration);

/// The endpoint could not be reached (refused, unreachable, name not resolved).
#[derive(Debug, thiserror::Error)]
#[error("connect failed: {0}")]
pub struct ConnectFailed(#[source] pub BoxError);

/// Connects to the endpoint a URI's host names: a synthetic host registered as a unix socket,
/// or a real `host:port`.
#[derive(Clone)]
pub struct Connector {
    tcp: HttpConnector,
    unix: Arc<HashMap<String, PathBuf>>,
    timeout: Duration,
}

impl Connector {
    pub fn new(unix: HashMap<String, PathBuf>, timeout: Duration, keepalive: Option<Duration>) -> Self {
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.set_keepalive(keepalive);
        tcp.enforce_http(true);
        Connector { tcp, unix: Arc::new(unix), timeout }
    }

    /// Connects to `uri`'s endpoint within the timeout.
    pub async fn connect(&self, uri: Uri) -> Result<UpstreamStream, BoxError> {
        let timeout = self.timeout;
        let unix = uri.host().and_then(|h| self.unix.get(h)).cloned();
        let mut tcp = self.tcp.clone();
        let fut = async move {
            match unix {
                Some(path) => match UnixStream::connect(path).await {
                    Ok(s) => Ok(UpstreamStream::Unix { inner: TokioIo::new(s) }),
                    Err(e) => Err(Box::new(ConnectFailed(Box::new(e))) as BoxError),
                },
                None => {
                    use tower::Service;
                    match tcp.call(uri).await {
                        Ok(s) => Ok(UpstreamStream::Tcp { inner: s }),
                        Err(e) => Err(Box::new(ConnectFailed(Box::new(e))) as BoxError),
                    }
                }
            }
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(Box::new(ConnectTimedOut(timeout))),
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection to an endpoint.
    #[project = StreamProj]
    pub enum UpstreamStream {
        Tcp { #[pin] inner: TokioIo<TcpStream> },
        Unix { #[pin] inner: TokioIo<UnixStream> },
    }
}

impl Read for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.project() {
            StreamProj::Tcp { inner } => inner.poll_read(cx, buf),
            StreamProj::Unix { inner } => inner.poll_read(cx, buf),
        }
    }
}

impl Write for UpstreamStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.project() {
            StreamProj::Tcp { inner } => inner.poll_write(cx, buf),
            StreamProj::Unix { inner } => inner.poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.project() {
            StreamProj::Tcp { inner } => inner.poll_flush(cx),
            StreamProj::Unix { inner } => inner.poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.project() {
            StreamProj::Tcp { inner } => inner.poll_shutdown(cx),
            StreamProj::Unix { inner } => inner.poll_shutdown(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamStream::Tcp { inner } => inner.is_write_vectored(),
            UpstreamStream::Unix { inner } => inner.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.project() {
            StreamProj::Tcp { inner } => inner.poll_write_vectored(cx, bufs),
            StreamProj::Unix { inner } => inner.poll_write_vectored(cx, bufs),
        }
    }
}
