//! `sumun topic publish` and `sumun dlq list|show|redrive`: thin clients of the admin API
//! (`POST /v1/topics/{topic}/messages`, `/v1/subscriptions/{name}/dlq…`). The admin address
//! comes from `--admin HOST:PORT` (or `unix:/path`), else from `[admin] bind` of `--config`.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// Where the admin API is.
#[derive(Args, Clone)]
pub struct AdminAddr {
    /// The admin listener: `127.0.0.1:9901` or `unix:/run/sumun-admin.sock`.
    #[arg(long, env = "SUMUN_ADMIN")]
    pub admin: Option<String>,
    /// Read the admin address from this config file's `[admin] bind`.
    #[arg(short, long)]
    pub config: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum TopicCommand {
    /// Publish one message (the body from --data, --file or standard input).
    Publish {
        #[command(flatten)]
        admin: AdminAddr,
        topic: String,
        /// The message body.
        #[arg(long, conflicts_with = "file")]
        data: Option<String>,
        /// Read the body from this file ("-" = standard input, the default).
        #[arg(long)]
        file: Option<PathBuf>,
        /// A request header, `Name: value` (repeatable): `ce-type: com.example.x`,
        /// `Content-Type: application/json`, `Idempotency-Key: …`, the topic's key header.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum DlqCommand {
    /// List a subscription's dead letters (oldest message first).
    List {
        #[command(flatten)]
        admin: AdminAddr,
        subscription: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Continue after this message id.
        #[arg(long)]
        after: Option<String>,
        /// Print the JSON answer instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter: its attempts and the message.
    Show {
        #[command(flatten)]
        admin: AdminAddr,
        subscription: String,
        id: String,
    },
    /// Send dead letters back to their subscription: by id, by filter, or all.
    Redrive {
        #[command(flatten)]
        admin: AdminAddr,
        subscription: String,
        /// Message ids (repeatable).
        #[arg(long = "id")]
        ids: Vec<String>,
        /// Every dead letter.
        #[arg(long, conflicts_with_all = ["ids", "status", "error", "since", "until"])]
        all: bool,
        /// Only those whose last attempt got this HTTP status.
        #[arg(long)]
        status: Option<u16>,
        /// Only those whose last error contains this text.
        #[arg(long)]
        error: Option<String>,
        /// Only those dead at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Only those dead before this RFC 3339 time.
        #[arg(long)]
        until: Option<String>,
    },
}

pub fn topic(cmd: TopicCommand) -> ExitCode {
    report(run_topic(cmd))
}

pub fn dlq(cmd: DlqCommand) -> ExitCode {
    report(run_dlq(cmd))
}

fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sumun: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_topic(cmd: TopicCommand) -> anyhow::Result<()> {
    let TopicCommand::Publish { admin, topic, data, file, headers } = cmd;
    let body = match (data, file) {
        (Some(d), _) => d.into_bytes(),
        (None, Some(p)) if p.as_os_str() != "-" => {
            std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?
        }
        _ => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf).context("reading standard input")?;
            buf
        }
    };
    let mut head = Vec::new();
    for h in headers {
        let (n, v) = h.split_once(':').ok_or_else(|| anyhow!("header `{h}` must be `Name: value`"))?;
        head.push((n.trim().to_owned(), v.trim().to_owned()));
    }
    let path = format!("/v1/topics/{}/messages", encode(&topic));
    let (status, text) = call(&admin, http::Method::POST, &path, head, body)?;
    println!("{text}");
    if status.is_success() { Ok(()) } else { bail!("publish refused: HTTP {status}") }
}

fn run_dlq(cmd: DlqCommand) -> anyhow::Result<()> {
    match cmd {
        DlqCommand::List { admin, subscription, limit, after, json } => {
            let mut path = format!("/v1/subscriptions/{}/dlq?limit={limit}", encode(&subscription));
            if let Some(a) = after {
                path.push_str(&format!("&after={}", encode(&a)));
            }
            let (status, text) = call(&admin, http::Method::GET, &path, Vec::new(), Vec::new())?;
            if !status.is_success() {
                bail!("HTTP {status}: {text}");
            }
            if json {
                println!("{text}");
                return Ok(());
            }
            let v: serde_json::Value =
                serde_json::from_str(&text).context("the admin API answered non-JSON")?;
            println!("{:<30}  {:<24}  {:>8}  {:>6}  LAST ERROR", "ID", "DEAD AT", "ATTEMPTS", "STATUS");
            for d in v["dead_letters"].as_array().into_iter().flatten() {
                println!(
                    "{:<30}  {:<24}  {:>8}  {:>6}  {}",
                    d["id"].as_str().unwrap_or(""),
                    d["dead_at"].as_str().unwrap_or(""),
                    d["attempts"],
                    d["last_status"].as_u64().map_or_else(|| "-".to_owned(), |s| s.to_string()),
                    d["last_error"].as_str().unwrap_or(""),
                );
            }
            if let Some(next) = v["next_after"].as_str() {
                println!("(more: --after {next})");
            }
            Ok(())
        }
        DlqCommand::Show { admin, subscription, id } => {
            let path = format!("/v1/subscriptions/{}/dlq/{}", encode(&subscription), encode(&id));
            let (status, text) = call(&admin, http::Method::GET, &path, Vec::new(), Vec::new())?;
            if !status.is_success() {
                bail!("HTTP {status}: {text}");
            }
            let v: serde_json::Value =
                serde_json::from_str(&text).context("the admin API answered non-JSON")?;
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or(text));
            Ok(())
        }
        DlqCommand::Redrive { admin, subscription, ids, all, status, error, since, until } => {
            let body = if all {
                serde_json::json!({ "all": true })
            } else if !ids.is_empty() {
                serde_json::json!({ "ids": ids })
            } else if status.is_some() || error.is_some() || since.is_some() || until.is_some() {
                serde_json::json!({ "filter": { "status": status, "error_contains": error, "since": since, "until": until } })
            } else {
                bail!(
                    "say what to redrive: --id ID, --all, or a filter (--status, --error, --since, --until)"
                );
            };
            let path = format!("/v1/subscriptions/{}/dlq/redrive", encode(&subscription));
            let head = vec![("content-type".to_owned(), "application/json".to_owned())];
            let (code, text) = call(&admin, http::Method::POST, &path, head, body.to_string().into_bytes())?;
            println!("{text}");
            if code.is_success() { Ok(()) } else { bail!("redrive refused: HTTP {code}") }
        }
    }
}

/// Percent-encodes a path segment or query value.
fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The admin address: `--admin`, else the config's `[admin] bind`.
fn admin_addr(a: &AdminAddr) -> anyhow::Result<String> {
    if let Some(addr) = &a.admin {
        return Ok(addr.clone());
    }
    let path = a.config.as_ref().ok_or_else(|| anyhow!("give --admin HOST:PORT or --config FILE"))?;
    let loaded = sumun_config::load(path).map_err(|d| {
        anyhow!("{} is not valid: {}", path.display(), d.first().map(ToString::to_string).unwrap_or_default())
    })?;
    let admin = loaded.config.admin.ok_or_else(|| anyhow!("{} has no [admin] listener", path.display()))?;
    Ok(admin.bind.to_string())
}

/// One request to the admin API (30 s at most); the status and the body as text.
fn call(
    admin: &AdminAddr,
    method: http::Method,
    path: &str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
) -> anyhow::Result<(http::StatusCode, String)> {
    let addr = admin_addr(admin)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        tokio::time::timeout(Duration::from_secs(30), send(&addr, method, path, headers, body))
            .await
            .map_err(|_| anyhow!("the admin API at {addr} did not answer in 30 s"))?
    })
}

async fn send(
    addr: &str,
    method: http::Method,
    path: &str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
) -> anyhow::Result<(http::StatusCode, String)> {
    let mut req = http::Request::builder().method(method).uri(path);
    let host = if addr.starts_with("unix:") { "localhost" } else { addr };
    req = req.header(http::header::HOST, host);
    for (n, v) in &headers {
        req = req.header(n.as_str(), v.as_str());
    }
    let req = req.body(Full::new(Bytes::from(body))).context("building the request")?;
    let res = match addr.strip_prefix("unix:") {
        Some(p) => {
            let s =
                tokio::net::UnixStream::connect(p).await.with_context(|| format!("connecting to {addr}"))?;
            exchange(s, req).await?
        }
        None => {
            let s = tokio::net::TcpStream::connect(addr)
                .await
                .with_context(|| format!("connecting to {addr}"))?;
            exchange(s, req).await?
        }
    };
    Ok(res)
}

async fn exchange<S>(s: S, req: http::Request<Full<Bytes>>) -> anyhow::Result<(http::StatusCode, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await?;
    tokio::spawn(conn);
    let res = sender.send_request(req).await?;
    let status = res.status();
    let body = http_body_util::Limited::new(res.into_body(), 64 << 20)
        .collect()
        .await
        .map_err(|e| anyhow!("reading the answer: {e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
