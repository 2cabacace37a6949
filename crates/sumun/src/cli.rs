//! Command-line surface and `sumun check`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "sumun", version, about = "An edge gateway: proxy, cache, protect, queue.")]
pub struct Cli {
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SUMUN_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log filter: a level (error, warn, info, debug, trace) or tracing directives.
    #[arg(long, global = true, default_value = "info", env = "SUMUN_LOG_LEVEL")]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve {
        /// Configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// Worker threads (default: one per CPU). 1 runs everything on one thread.
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Validate a configuration file: every problem as file:line:col.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Identity passport utilities.
    Passport {
        #[command(subcommand)]
        command: PassportCommand,
    },
    /// Topics: publish a message through the admin API.
    Topic {
        #[command(subcommand)]
        command: crate::bus_cli::TopicCommand,
    },
    /// A subscription's dead-letter queue: list, show, redrive.
    Dlq {
        #[command(subcommand)]
        command: crate::bus_cli::DlqCommand,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
pub enum PassportCommand {
    /// Write a new Ed25519 signing key (PKCS#8 PEM, mode 0600) for `[passport] signing_key`.
    Keygen {
        /// The file to create; an existing file is never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn init_logging(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(&cli.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// `sumun check`: exit 0 when valid (warnings allowed), 1 with every problem printed.
pub fn check(path: &Path) -> ExitCode {
    match sumun_config::load(path) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                println!("{w}");
            }
            // Build the runtime too: TLS material that does not parse is a config error.
            match sumun_gateway::Runtime::build(loaded.config, None) {
                Ok(_) => {
                    println!("{}: ok", path.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    println!("{}: error: {e}", path.display());
                    ExitCode::FAILURE
                }
            }
        }
        Err(diags) => {
            for d in &diags {
                println!("{d}");
            }
            ExitCode::FAILURE
        }
    }
}

/// `sumun passport keygen`: creates `out` (0600, refusing to overwrite) with a new key and
/// prints its `kid`.
pub fn passport_keygen(out: &Path) -> ExitCode {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let (pem, kid) = match sumun_gateway::protect::passport::generate_signing_key_pem() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("sumun: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut file = match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(out) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            eprintln!("sumun: {} already exists; not overwriting it", out.display());
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("sumun: cannot create {}: {e}", out.display());
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = file.write_all(pem.as_bytes()).and_then(|()| file.sync_all()) {
        // Never leave a truncated key behind.
        let _ = std::fs::remove_file(out);
        eprintln!("sumun: cannot write {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    println!("wrote {} (kid {kid})", out.display());
    ExitCode::SUCCESS
}
