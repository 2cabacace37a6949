//! The pull protocol as HTTP sees it, shared by the admin API and a route with
//! `to = { subscription = … }`: `GET …/messages?max=N&wait=30s` and
//! `POST …/ack|nack|extend` with `{"ack_ids": [...], "delay"|"by": "30s"}`.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::subscription::{LeaseAction, Pulled};

/// Most messages one pull returns.
pub const MAX_PULL: usize = 1000;
/// Longest long-poll.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// Largest body of an ack/nack/extend call.
pub const MAX_COMMAND_BYTES: usize = 1024 * 1024;

/// `key=value` pairs of a query string, `%XX` and `+` decoded.
pub fn query(raw: Option<&str>) -> Vec<(String, String)> {
    raw.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex =
                    std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Whole seconds (`30`) or a duration (`250ms`, `30s`, `1m`).
pub fn duration(text: &str) -> Result<Duration, String> {
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    sumun_config::units::parse_duration(text)
}

/// `max` (default 10, at most [`MAX_PULL`]) and `wait` (default 0, capped at [`MAX_WAIT`]).
pub fn pull_params(raw_query: Option<&str>) -> Result<(usize, Duration), String> {
    let q = query(raw_query);
    let max = match param(&q, "max").map(str::parse::<usize>) {
        None => 10,
        Some(Ok(n)) if (1..=MAX_PULL).contains(&n) => n,
        Some(_) => return Err(format!("`max` must be between 1 and {MAX_PULL}")),
    };
    let wait = match param(&q, "wait") {
        None => Duration::ZERO,
        Some(w) => duration(w)?.min(MAX_WAIT),
    };
    Ok((max, wait))
}

/// The answer to a pull.
pub fn pulled_json(msgs: &[Pulled]) -> Value {
    json!({ "messages": msgs.iter().map(Pulled::to_json).collect::<Vec<_>>() })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settle {
    ack_ids: Vec<String>,
    #[serde(default)]
    delay: Option<String>,
    #[serde(default)]
    by: Option<String>,
}

/// Which settle call (`ack`, `nack`, `extend`): the ack ids and the action.
pub fn settle_command(kind: &str, body: &[u8]) -> Result<(Vec<String>, LeaseAction), String> {
    let cmd: Settle = serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
    if cmd.ack_ids.len() > MAX_PULL {
        return Err(format!("at most {MAX_PULL} ack ids per call"));
    }
    let action = match kind {
        "ack" => LeaseAction::Ack,
        "nack" => LeaseAction::Nack(cmd.delay.as_deref().map(duration).transpose()?),
        "extend" => match cmd.by.as_deref() {
            Some(by) => LeaseAction::Extend(duration(by)?),
            None => return Err("`extend` needs `by`, e.g. \"30s\"".into()),
        },
        other => return Err(format!("unknown call `{other}`")),
    };
    Ok((cmd.ack_ids, action))
}

/// The answer to a settle call: per ack id, whether it held the lease.
pub fn settle_json(ids: &[String], held: &[bool]) -> Value {
    let results: Vec<Value> = ids
        .iter()
        .zip(held)
        .map(|(id, ok)| {
            let why = if *ok { Value::Null } else { json!("unknown or expired lease") };
            json!({ "ack_id": id, "ok": ok, "error": why })
        })
        .collect();
    json!({ "results": results })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_and_parameters() {
        let q = query(Some("max=5&wait=30s&after=msg_%41+b&flag"));
        assert_eq!(param(&q, "max"), Some("5"));
        assert_eq!(param(&q, "after"), Some("msg_A b"));
        assert_eq!(param(&q, "flag"), Some(""));
        assert_eq!(decode("%zz%4"), "%zz%4");
        assert_eq!(pull_params(Some("max=5&wait=30s")), Ok((5, Duration::from_secs(30))));
        assert_eq!(pull_params(None), Ok((10, Duration::ZERO)));
        assert_eq!(pull_params(Some("wait=10m")), Ok((10, MAX_WAIT)));
        assert!(pull_params(Some("max=0")).is_err() && pull_params(Some("wait=soon")).is_err());
    }

    #[test]
    fn settle_commands() {
        let (ids, a) = settle_command("nack", br#"{"ack_ids":["0-1-a"],"delay":"2s"}"#).unwrap();
        assert_eq!(ids, ["0-1-a"]);
        assert!(matches!(a, LeaseAction::Nack(Some(d)) if d == Duration::from_secs(2)));
        assert!(matches!(settle_command("ack", br#"{"ack_ids":[]}"#).unwrap().1, LeaseAction::Ack));
        assert!(settle_command("extend", br#"{"ack_ids":[]}"#).is_err());
        assert!(settle_command("ack", br#"{"ack_id":[]}"#).is_err());
        assert_eq!(settle_json(&["a".into()], &[false])["results"][0]["error"], "unknown or expired lease");
    }
}
