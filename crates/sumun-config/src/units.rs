//! Durations (`"250ms"`, `"1m30s"`), sizes (`"64KiB"`) and secrets (`"env:NAME"`,
//! `"file:PATH"`) as written in config files.

use std::time::Duration;

use crate::model::Secret;

const DURATION_EXAMPLES: &str = "e.g. `250ms`, `30s`, `1m30s`, `1.5h`, `7d`";
const SIZE_EXAMPLES: &str = "e.g. `512`, `64KiB`, `10MiB`, `1GB`";

/// Parses a duration: one or more `<number><unit>` groups, largest unit first, where the
/// number is an integer or decimal and the unit is `ms`, `s`, `m`, `h` or `d`.
/// Zero is accepted here; callers refuse it where it makes no sense.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let fail = |why: &str| Err(format!("invalid duration `{text}`: {why}; {DURATION_EXAMPLES}"));
    let s = text.trim();
    if s.is_empty() {
        return fail("empty");
    }
    let mut rest = s;
    let mut total_nanos: u128 = 0;
    let mut last_unit: Option<u128> = None;
    while !rest.is_empty() {
        let (number, after) = split_number(rest);
        if number.is_empty() {
            return fail("expected a number");
        }
        let unit_len = after.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            "d" => 86_400 * 1_000_000_000,
            "" => return fail("missing unit (ms, s, m, h or d)"),
            _ => return fail(&format!("unknown unit `{unit}` (use ms, s, m, h or d)")),
        };
        if last_unit.is_some_and(|last| unit_nanos >= last) {
            return fail("units must go from largest to smallest, each at most once");
        }
        last_unit = Some(unit_nanos);
        let Some(nanos) = scale(number, unit_nanos) else {
            return fail("malformed or too large number");
        };
        total_nanos = match total_nanos.checked_add(nanos) {
            Some(t) => t,
            None => return fail("too large"),
        };
        rest = after;
    }
    let Ok(secs) = u64::try_from(total_nanos / 1_000_000_000) else {
        return fail("too large");
    };
    // The remainder is below 10^9, so it always fits.
    let sub = u32::try_from(total_nanos % 1_000_000_000).unwrap_or(0);
    Ok(Duration::new(secs, sub))
}

/// Parses a size in bytes: a plain integer, or a number followed by `B`, `KB`, `MB`, `GB`
/// (powers of 1000) or `KiB`, `MiB`, `GiB` (powers of 1024). Fractions of a byte round down.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let fail = |why: &str| Err(format!("invalid size `{text}`: {why}; {SIZE_EXAMPLES}"));
    let s = text.trim();
    let (number, unit) = split_number(s);
    if number.is_empty() {
        return fail("expected a number");
    }
    let multiplier: u128 = match unit.trim_start() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return fail(&format!("unknown unit `{other}` (use B, KB, MB, GB, KiB, MiB or GiB)"));
        }
    };
    let Some(bytes) = scale(number, multiplier) else {
        return fail("malformed or too large number");
    };
    match u64::try_from(bytes) {
        Ok(bytes) => Ok(bytes),
        Err(_) => fail("too large"),
    }
}

/// Resolves a secret written as `env:NAME` (the environment variable must be set) or
/// `file:PATH` (the file's content, trailing newlines removed). A relative PATH is relative
/// to the process's working directory. Literal values are refused so secrets stay out of
/// config files; the error never repeats the text it was given.
pub fn resolve_secret(spec: &str) -> Result<Secret, String> {
    if let Some(name) = spec.strip_prefix("env:") {
        if name.is_empty() {
            return Err("`env:` needs a variable name, e.g. `env:API_TOKEN`".into());
        }
        return match std::env::var(name) {
            Ok(value) => Ok(Secret(value)),
            Err(std::env::VarError::NotPresent) => Err(format!("environment variable `{name}` is not set")),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(format!("environment variable `{name}` is not valid UTF-8"))
            }
        };
    }
    if let Some(path) = spec.strip_prefix("file:") {
        if path.is_empty() {
            return Err("`file:` needs a path, e.g. `file:/run/secrets/token`".into());
        }
        return match std::fs::read_to_string(path) {
            Ok(content) => Ok(Secret(content.trim_end_matches(['\n', '\r']).to_string())),
            Err(e) => Err(format!("cannot read secret file `{path}`: {}", io_reason(&e))),
        };
    }
    Err("a secret must be written as `env:NAME` or `file:PATH`".into())
}

/// A short, stable description of an I/O failure (without the OS error number).
pub(crate) fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => {
            let text = e.to_string();
            match text.find(" (os error") {
                Some(i) => text[..i].to_string(),
                None => text,
            }
        }
    }
}

/// Splits `"1.5GiB"` into `("1.5", "GiB")`.
fn split_number(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    s.split_at(end)
}

/// `number` (digits, optionally `.` and more digits) times `unit`, exactly, with any fraction
/// of the smallest unit dropped. None if malformed or overflowing.
fn scale(number: &str, unit: u128) -> Option<u128> {
    let (int, frac) = match number.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (number, None),
    };
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut value = int.parse::<u128>().ok()?.checked_mul(unit)?;
    if let Some(frac) = frac {
        if frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // Digits past the 18th cannot change the result for units up to a day in nanoseconds.
        let frac = &frac[..frac.len().min(18)];
        let digits = frac.parse::<u128>().ok()?;
        let denominator = 10u128.pow(u32::try_from(frac.len()).ok()?);
        value = value.checked_add(digits.checked_mul(unit)? / denominator)?;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(ms(250)));
        assert_eq!(parse_duration("30s"), Ok(ms(30_000)));
        assert_eq!(parse_duration("5m"), Ok(ms(300_000)));
        assert_eq!(parse_duration("2h"), Ok(ms(7_200_000)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("1m30s"), Ok(ms(90_000)));
        assert_eq!(parse_duration("1h2m3s4ms"), Ok(ms(3_723_004)));
        assert_eq!(parse_duration("1.5s"), Ok(ms(1_500)));
        assert_eq!(parse_duration("0.25h"), Ok(ms(900_000)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration(" 10s "), Ok(ms(10_000)));
        assert_eq!(parse_duration("1.0000000001s"), Ok(Duration::new(1, 0)));
    }

    #[test]
    fn bad_durations() {
        for bad in
            ["", "5", "s", "5x", "5 s", "-5s", "1.s", ".5s", "1..5s", "30s1m", "1s1s", "5us", "1m30", "5S"]
        {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.starts_with(&format!("invalid duration `{bad}`")), "{err}");
        }
        assert!(parse_duration("5").unwrap_err().contains("missing unit"));
        assert!(parse_duration("5us").unwrap_err().contains("unknown unit `us`"));
        assert!(parse_duration("30s1m").unwrap_err().contains("largest to smallest"));
    }

    #[test]
    fn duration_overflow_is_an_error() {
        assert!(parse_duration("99999999999999999999999999999999999999999d").is_err());
        assert!(parse_duration("213503982334602d").unwrap_err().contains("too large"));
        assert!(parse_duration("213503982334601d").is_ok());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("10MiB"), Ok(10 * 1024 * 1024));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1KB"), Ok(1_000));
        assert_eq!(parse_size("3MB"), Ok(3_000_000));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("1.5KiB"), Ok(1_536));
        assert_eq!(parse_size("10 MiB"), Ok(10 << 20));
        assert_eq!(parse_size("0.1KiB"), Ok(102));
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn bad_sizes() {
        for bad in ["", "KiB", "10kib", "10KiBs", "-1", "1e3", "1.KiB", "10TB"] {
            let err = parse_size(bad).expect_err(bad);
            assert!(err.starts_with(&format!("invalid size `{bad}`")), "{err}");
        }
        assert!(parse_size("18446744073709551616").unwrap_err().contains("too large"));
        assert!(parse_size("17179869184GiB").unwrap_err().contains("too large"));
    }

    #[test]
    fn secrets_from_env() {
        // Nothing sets this variable; tests must not mutate the environment (threads).
        let name = "SUMUN_CONFIG_TEST_SECRET_ENV";
        assert_eq!(
            resolve_secret(&format!("env:{name}")).unwrap_err(),
            format!("environment variable `{name}` is not set")
        );
        assert!(resolve_secret("env:").unwrap_err().contains("variable name"));
        // PATH is always set in test environments.
        let path = resolve_secret("env:PATH").unwrap();
        assert_eq!(path.0, std::env::var("PATH").unwrap());
        assert_eq!(format!("{path:?}"), "Secret(***)");
    }

    #[test]
    fn secrets_from_files() {
        let dir = std::env::temp_dir().join(format!("sumun-config-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "s3cret\r\n\n").unwrap();
        let secret = resolve_secret(&format!("file:{}", file.display())).unwrap();
        assert_eq!(secret, Secret("s3cret".into()));
        std::fs::write(&file, "  keep spaces  ").unwrap();
        let secret = resolve_secret(&format!("file:{}", file.display())).unwrap();
        assert_eq!(secret.0, "  keep spaces  ");
        let missing = resolve_secret(&format!("file:{}", dir.join("nope").display()));
        assert!(missing.unwrap_err().ends_with("no such file"));
        assert!(resolve_secret("file:").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn literal_secrets_are_refused_without_echoing_them() {
        let err = resolve_secret("hunter2").unwrap_err();
        assert!(err.contains("`env:NAME` or `file:PATH`"));
        assert!(!err.contains("hunter2"));
        assert!(resolve_secret("ENV:X").is_err());
    }
}
