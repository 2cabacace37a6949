//! Each class of error, with its exact line:col, and warnings.

use std::path::Path;

use super::{FILE, LISTENER, error_lines, errors, ok};
use crate::{Severity, load};

#[test]
fn toml_syntax_error_stops_at_its_position() {
    let source = "[listener.web]\nbind = \"127.0.0.1:8080\n";
    let errs = errors(source);
    assert_eq!(errs.len(), 1);
    assert_eq!((errs[0].line, errs[0].col), (2, 23));
    assert!(errs[0].message.starts_with("TOML syntax error: "), "{}", errs[0].message);
    assert_eq!(errs[0].to_string(), format!("{FILE}:2:23: error: {}", errs[0].message));
}

#[test]
fn duplicate_keys_are_named() {
    let source = format!("{LISTENER}bind = \"127.0.0.1:9\"\n");
    assert_eq!(error_lines(&source), ["3:1: TOML syntax error: duplicate key `bind`"]);
}

#[test]
fn top_level_problems() {
    let source = format!("data_dir = \"\"\nvia = \"a/b\"\naccess_log = \"\"\n{LISTENER}");
    let lines = error_lines(&source);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert_eq!(lines[0], "1:12: `data_dir` must not be empty");
    assert!(lines[1].starts_with("2:7: `via` must be one token"), "{}", lines[1]);
    assert_eq!(lines[2], "3:14: `access_log` must be `stdout`, `stderr`, `off` or a file path");
}

#[test]
fn every_unknown_key_is_reported_with_a_hint() {
    let source = "\
listners = 1
[listener.web]
bind = \"127.0.0.1:8080\"
limits = { max_conections = 5, header_timeout = \"1s\" }
[[route]]
match = { path_prefx = \"/a\", frobnicate = true }
to = { echo = true }
";
    assert_eq!(
        error_lines(source),
        [
            "1:1: unknown key `listners`; did you mean `listener`?",
            "4:12: unknown key `max_conections` in `listener.web.limits`; did you mean `max_connections`?",
            "6:11: unknown key `path_prefx` in `route[0].match`; did you mean `path_prefix`?",
            "6:30: unknown key `frobnicate` in `route[0].match`; expected one of `host`, `path`, `path_prefix`, `path_regex`, `methods`, `headers`, `version`",
        ]
    );
}

#[test]
fn unknown_keys_in_table_headers() {
    let source = format!(
        "{LISTENER}[listener.web.tls_config]\ncert = \"x\"\n[upstream.a]\nendpoints = [\"a:1\"]\nbalanse = \"round_robin\"\n"
    );
    assert_eq!(
        error_lines(&source),
        [
            "3:15: unknown key `tls_config` in `listener.web`; did you mean `tls`?",
            "7:1: unknown key `balanse` in `upstream.a`; did you mean `balance`?",
        ]
    );
}

#[test]
fn type_errors_are_reported_where_the_value_is_and_do_not_stop_validation() {
    let source = "\
via = 5
[listener.web]
bind = 8080
limits = \"big\"
[upstream.a]
endpoints = [\"a:1\", 7]
[[route]]
to = \"a\"
[[route]]
match = { methods = \"GET\", headers = { x = 1 } }
to = { upstream = \"b\" }
";
    assert_eq!(
        error_lines(source),
        [
            "1:7: `via`: invalid type: integer `5`, expected a string",
            "3:8: `listener.web.bind`: invalid type: integer `8080`, expected a string",
            "4:10: `listener.web.limits`: invalid type: string \"big\", expected a table",
            "6:21: `upstream.a.endpoints[1]`: invalid type: integer `7`, expected an address string or a table like { address = \"host:port\", weight = 2 }",
            "8:6: `route[0].to`: invalid type: string \"a\", expected a table",
            "10:21: `route[1].match.methods`: invalid type: string \"GET\", expected an array",
            "10:44: `route[1].match.headers.x`: invalid type: integer `1`, expected a string (exact value) or `true` (header present)",
            "11:19: route `route-2`: unknown upstream `b` (defined: `a`)",
        ]
    );
}

#[test]
fn single_route_table_gets_a_hint() {
    let source = format!("{LISTENER}[route]\nto = {{ echo = true }}\n");
    assert_eq!(
        error_lines(&source),
        ["3:1: `route`: invalid type: table, expected an array; write each route as a `[[route]]` table"]
    );
}

#[test]
fn bad_durations_and_sizes() {
    let source = "\
shutdown_grace = \"30\"
[listener.web]
bind = \"127.0.0.1:8080\"
limits = { header_timeout = \"0s\", idle_timeout = \"1x\", max_header_bytes = \"4KiB\", max_body_bytes = \"10 parsecs\" }
[upstream.a]
endpoints = [\"a:1\"]
timeouts = { connect = \"1m1m\" }
pool = { idle_timeout = \"-1s\", max_idle_per_endpoint = -1 }
";
    assert_eq!(
        error_lines(source),
        [
            "1:18: `shutdown_grace`: invalid duration `30`: missing unit (ms, s, m, h or d); e.g. `250ms`, `30s`, `1m30s`, `1.5h`, `7d`",
            "4:29: listener `web`: `header_timeout` must be greater than zero",
            "4:50: listener `web`: `idle_timeout`: invalid duration `1x`: unknown unit `x` (use ms, s, m, h or d); e.g. `250ms`, `30s`, `1m30s`, `1.5h`, `7d`",
            "4:75: listener `web`: `max_header_bytes` must be between 8KiB and 1MiB, not 4096 bytes",
            "4:100: listener `web`: `max_body_bytes`: invalid size `10 parsecs`: unknown unit `parsecs` (use B, KB, MB, GB, KiB, MiB or GiB); e.g. `512`, `64KiB`, `10MiB`, `1GB`",
            "7:24: upstream `a`: `timeouts.connect`: invalid duration `1m1m`: units must go from largest to smallest, each at most once; e.g. `250ms`, `30s`, `1m30s`, `1.5h`, `7d`",
            "8:25: upstream `a`: `pool.idle_timeout`: invalid duration `-1s`: expected a number; e.g. `250ms`, `30s`, `1m30s`, `1.5h`, `7d`",
            "8:56: upstream `a`: `pool.max_idle_per_endpoint` must be between 0 and 4294967295, not -1",
        ]
    );
}

#[test]
fn unknown_references() {
    let source = format!(
        "{LISTENER}[upstream.api]\nendpoints = [\"a:1\"]\n[[route]]\nname = \"r\"\nlisteners = [\"web\", \"wbe\", \"zzz\"]\nto = {{ upstream = \"apx\" }}\n"
    );
    assert_eq!(
        error_lines(&source),
        [
            "7:21: route `r`: unknown listener `wbe`; did you mean `web`?",
            "7:28: route `r`: unknown listener `zzz` (defined: `web`)",
            "8:19: route `r`: unknown upstream `apx`; did you mean `api`?",
        ]
    );
    let source = format!("{LISTENER}[[route]]\nto = {{ upstream = \"api\" }}\n");
    assert_eq!(
        error_lines(&source),
        ["4:19: route `route-1`: unknown upstream `api` (no upstreams are defined)"]
    );
}

#[test]
fn path_matchers() {
    let source = format!(
        "{LISTENER}\
[[route]]
match = {{ path_regex = \"/a/(\" }}
to = {{ echo = true }}
[[route]]
match = {{ path = \"/a\", path_prefix = \"/b\", path_regex = \"x\" }}
to = {{ echo = true }}
[[route]]
match = {{ path_prefix = \"api\" }}
to = {{ echo = true }}
[[route]]
match = {{ path = \"/a?b=1\" }}
to = {{ echo = true }}
"
    );
    assert_eq!(
        error_lines(&source),
        [
            "4:24: route `route-1`: invalid `path_regex`: unclosed group",
            "7:38: route `route-2`: `path` and `path_prefix` cannot be combined; use only one",
            "7:57: route `route-2`: `path` and `path_regex` cannot be combined; use only one",
            "10:25: route `route-3`: invalid `path_prefix` `api`: must start with `/`",
            "13:18: route `route-4`: invalid `path` `/a?b=1`: must not contain a query (`?`) or fragment (`#`)",
        ]
    );
}

#[test]
fn listener_problems() {
    let source = "\
[admin]
bind = \"127.0.0.1:8080\"
[listener.web]
bind = \"127.0.0.1:8080\"
[listener.all]
bind = \"0.0.0.0:8080\"
[listener.named]
bind = \"localhost:80\"
[listener.v6]
bind = \"::1:80\"
[listener.sock]
bind = \"unix:\"
[listener.\"bad name\"]
bind = \"127.0.0.1:81\"
[listener.nobind]
trust_forwarded = true
[listener.tls]
bind = \"127.0.0.1:82\"
tls = { cert = \"/nonexistent/c.pem\" }
";
    assert_eq!(
        error_lines(source),
        [
            "4:8: listener `web`: bind address `127.0.0.1:8080` is already used by the admin listener (`127.0.0.1:8080`, line 2)",
            "6:8: listener `all`: bind address `0.0.0.0:8080` overlaps the admin listener (`127.0.0.1:8080`, line 2)",
            "8:8: listener `named`: invalid bind address `localhost:80`: listeners bind IP addresses, not names (e.g. `0.0.0.0:8080`, `127.0.0.1:8080`, `[::]:8080`)",
            "10:8: listener `v6`: invalid bind address `::1:80`: IPv6 addresses need brackets, e.g. `[::1]:8080`",
            "12:8: listener `sock`: `unix:` needs a socket path",
            "13:11: listener name `bad name` must be non-empty and use only letters, digits, `-`, `_` and `.`",
            "15:1: listener `nobind` needs `bind`, e.g. `0.0.0.0:8080` or `unix:/run/sumun.sock`",
            "19:7: listener `tls`: `tls` needs both `cert` and `key`; `key` is missing",
            "19:16: listener `tls`: tls cert `/nonexistent/c.pem`: no such file",
        ]
    );
}

#[test]
fn at_least_one_listener() {
    assert_eq!(error_lines("via = \"x\"\n"), ["1:1: at least one `[listener.NAME]` is required"]);
    assert_eq!(error_lines("listener = {}\n"), ["1:12: at least one `[listener.NAME]` is required"]);
}

#[test]
fn upstream_problems() {
    let source = format!(
        "{LISTENER}\
[upstream.a]
endpoints = []
[upstream.b]
balance = \"least_requests\"
[upstream.c]
endpoints = [\"http://x:1\", {{ weight = 0 }}, {{ address = \"x\" }}]
protocol = \"http2\"
[upstream.d]
endpoints = [\"x:1\"]
balance = \"round-robin\"
"
    );
    assert_eq!(
        error_lines(&source),
        [
            "4:13: upstream `a`: `endpoints` must not be empty",
            "5:1: upstream `b` needs `endpoints`, e.g. [\"127.0.0.1:3000\"]",
            "6:11: upstream `b`: unknown `balance` `least_requests`; did you mean `least_request`? (valid: `round_robin`, `random`, `least_request`, `ring_hash`, `rendezvous`)",
            "8:14: upstream `c`: invalid endpoint `http://x:1`: write the address without a scheme, e.g. `127.0.0.1:3000`",
            "8:39: upstream `c`: endpoint `weight` must be between 1 and 4294967295, not 0",
            "8:56: upstream `c`: invalid endpoint `x`: missing port; expected `HOST:PORT`, e.g. `127.0.0.1:3000`",
            "9:12: upstream `c`: unknown `protocol` `http2`; did you mean `http1`? (valid: `http1`, `h2c`)",
            "12:11: upstream `d`: unknown `balance` `round-robin`; did you mean `round_robin`? (valid: `round_robin`, `random`, `least_request`, `ring_hash`, `rendezvous`)",
        ]
    );
}

#[test]
fn route_problems() {
    let source = format!(
        "{LISTENER}\
[[route]]
name = \"a\"
match = {{ host = \"*\", methods = [], headers = {{ \"x-a\" = false, \"bad header\" = \"1\" }}, version = \"v2\" }}
to = {{ echo = false }}
[[route]]
name = \"a\"
to = {{ respond = {{ status = 700, headers = {{ \"Transfer-Encoding\" = \"chunked\" }} }} }}
[[route]]
to = {{ redirect = {{ location = \"https://x/\", status = 200 }} }}
rewrite = {{ strip_prefix = \"/a\", path = \"/b\" }}
[[route]]
to = {{}}
headers = {{ request = {{ set = {{ \"connection\" = \"close\", \"x-a\" = \"1\\r\\n\" }}, remove = [\"a:b\"] }} }}
[[route]]
to = {{ upstream = \"a\", echo = true }}
[[route]]
listeners = []
"
    );
    assert_eq!(
        error_lines(&source),
        [
            "5:18: route `a`: invalid `host` `*`: `*` alone matches every host; leave `host` out instead",
            "5:33: route `a`: `methods` is empty; omit it to match any method",
            "5:57: route `a`: header `x-a` = false is not supported; use `true` to require the header, or a string to require a value",
            "5:64: route `a`: `match.headers`: `bad header` is not a valid header name",
            "5:96: route `a`: write `version` without the `v`: \"2\"",
            "6:15: route `a`: `echo = false` is not a target; use `echo = true` or another target",
            "8:8: duplicate route name `a` (first used on line 3)",
            "9:29: route `a`: respond `status` must be between 100 and 599, not 700",
            "11:55: route `route-3`: redirect `status` must be 301, 302, 303, 307 or 308, not 200",
            "12:41: route `route-3`: `rewrite` takes `strip_prefix` or `path`, not both",
            "14:6: route `route-4`: `to` needs one of `upstream`, `topic`, `subscription`, `respond`, `redirect` or `echo`",
            "15:33: route `route-4`: `headers.request.set`: `connection` is managed by the proxy and cannot be set",
            "15:65: route `route-4`: `headers.request.set`: header `x-a`: value must not contain CR, LF, NUL or other control characters",
            "15:86: route `route-4`: `headers.request.remove`: `a:b` is not a valid header name",
            "17:31: route `route-5`: `to` has both `upstream` and `echo`; a route has one target",
            "18:1: route `route-6` needs `to`, e.g. `to = { upstream = \"api\" }`",
            "19:13: route `route-6`: `listeners` is empty; omit it to serve on every listener",
        ]
    );
}

#[test]
fn every_problem_is_collected_not_just_the_first() {
    let source = "\
bogus = 1
shutdown_grace = \"soon\"
[listener.web]
bind = \"nowhere\"
[[route]]
to = { upstream = \"nope\" }
";
    let lines = error_lines(source);
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert!(lines[0].starts_with("1:1: unknown key `bogus`"));
    assert!(lines[1].starts_with("2:18: `shutdown_grace`: invalid duration"));
    assert!(lines[2].starts_with("4:8: listener `web`: invalid bind address `nowhere`"));
    assert!(lines[3].starts_with("6:19: route `route-1`: unknown upstream `nope`"));
}

#[test]
fn unreadable_file_is_one_error_at_1_1() {
    let path = Path::new("/nonexistent/sumun.toml");
    let errs = load(path).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(
        errs[0].to_string(),
        "/nonexistent/sumun.toml:1:1: error: cannot read config file: no such file"
    );
}

#[test]
fn shadowed_routes_are_warnings() {
    let source = format!(
        "{LISTENER}\
[[route]]
name = \"api\"
match = {{ host = \"*.example.com\", path_prefix = \"/api\" }}
to = {{ echo = true }}

[[route]]
name = \"v1\"
match = {{ host = \"a.example.com\", path_prefix = \"/api/v1\", methods = [\"GET\"] }}
to = {{ echo = true }}

[[route]]
name = \"other\"
match = {{ host = \"a.example.com\", path_prefix = \"/apix\" }}
to = {{ echo = true }}

[[route]]
name = \"canary\"
match = {{ path = \"/c\", headers = {{ \"x-canary\" = \"1\" }} }}
to = {{ echo = true }}

[[route]]
name = \"c\"
match = {{ path = \"/c\" }}
to = {{ echo = true }}

[[route]]
name = \"all\"
to = {{ echo = true }}

[[route]]
name = \"after-all\"
match = {{ path = \"/z\" }}
to = {{ echo = true }}
"
    );
    let loaded = ok(&source);
    let warnings: Vec<String> = loaded
        .warnings
        .iter()
        .map(|w| {
            assert_eq!(w.severity, Severity::Warning);
            format!("{}:{}: {}", w.line, w.col, w.message)
        })
        .collect();
    assert_eq!(
        warnings,
        [
            "8:1: route `v1` can never match: route `api` (line 3) matches every request it does",
            "32:1: route `after-all` can never match: route `all` (line 28) matches every request it does",
        ]
    );
    assert_eq!(loaded.config.routes.len(), 7);
}

#[test]
fn listener_scoped_routes_do_not_shadow_other_listeners() {
    let source = "\
[listener.a]
bind = \"127.0.0.1:1\"
[listener.b]
bind = \"127.0.0.1:2\"
[[route]]
listeners = [\"a\"]
to = { echo = true }
[[route]]
to = { echo = true }
[[route]]
listeners = [\"b\"]
to = { echo = true }
";
    let warnings = ok(source).warnings;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].line, 10);
    assert!(warnings[0].message.contains("route `route-2` (line 8)"));
}

#[test]
fn default_route_names_count_as_taken() {
    let source = format!(
        "{LISTENER}[[route]]\nname = \"route-2\"\nto = {{ echo = true }}\n[[route]]\nmatch = {{ path = \"/b\" }}\nto = {{ echo = true }}\n[[route]]\nname = \"route-2\"\nmatch = {{ path = \"/c\" }}\nto = {{ echo = true }}\n"
    );
    assert_eq!(
        error_lines(&source),
        [
            "6:1: route 2 has the default name `route-2`, already used on line 3; give it a `name`",
            "10:8: duplicate route name `route-2` (first used on line 3)",
        ]
    );
}
