//! The `sessiongate` command: parses arguments, calls the library, maps errors to exit codes.

use clap::{Parser, Subcommand};

/// mimalloc instead of the system allocator: Pingora's tasks allocate on one worker thread and
/// free on another, and glibc's arena locks showed up under load (see bench/RESULTS.md).
/// Built without its transparent-huge-page hint (`no_thp`), see [`opt_out_of_huge_pages`].
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use sessiongate::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

/// Keeps the kernel from backing the heap with 2 MiB transparent huge pages, which it does on
/// hosts where THP is `always`: with huge pages, peak RSS under the bench load was 49 MiB instead
/// of 28 MiB and one 64 MB page through the banner cost 20–34 MB instead of 4–7 MB, for no
/// throughput gain. Best effort: with `MIMALLOC_ALLOW_THP=1` (mimalloc's own switch), or when a
/// kernel or seccomp policy refuses the `prctl`, the host's setting stays in place.
#[cfg(target_os = "linux")]
fn opt_out_of_huge_pages() {
    let allowed = std::env::var_os("MIMALLOC_ALLOW_THP").is_some_and(|v| v != "0");
    if !allowed {
        let _ = nix::sys::prctl::set_thp_disable(true);
    }
}

#[cfg(not(target_os = "linux"))]
fn opt_out_of_huge_pages() {}

#[derive(Parser)]
#[command(
    name = "sessiongate",
    version,
    about = "Reverse-proxy authentication sidecar"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the larger variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Serve until SIGTERM/SIGINT (graceful); SIGHUP reloads the config.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file: prints `ok`, or each error with its key path and line:column.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// All-in-one local demo on loopback: a sample app, a platform backend, the proxy.
    Demo {
        /// Port of the proxy (the app and backend take free ports).
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// Mint or inspect session tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum TokenCommand {
    /// Sign a token with claims from flags (key from an env var or a file).
    Mint {
        #[arg(long, default_value = "HS256")]
        alg: String,
        /// Environment variable holding the HS* secret.
        #[arg(long, conflicts_with = "key_file")]
        secret_env: Option<String>,
        /// PEM private key for RS*/PS*/ES*/EdDSA (or an HS* secret file).
        #[arg(long)]
        key_file: Option<PathBuf>,
        #[arg(long)]
        sub: String,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        email: Option<String>,
        /// Comma-separated roles.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// Lifetime, e.g. "30m".
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        #[arg(long)]
        iss: Option<String>,
        #[arg(long)]
        aud: Option<String>,
        /// Make it an impersonation token with this session id.
        #[arg(long)]
        imp_sid: Option<String>,
        #[arg(long)]
        imp_admin_id: Option<String>,
        #[arg(long)]
        imp_admin_email: Option<String>,
        #[arg(long)]
        imp_reason: Option<String>,
        /// Extra claim, `key=value` (JSON values are parsed). Repeatable.
        #[arg(long = "claim", value_parser = parse_claim)]
        claims: Vec<(String, String)>,
    },
    /// Decode a token and say whether (and why not) the config would accept it.
    Inspect {
        #[arg(long, short)]
        config: PathBuf,
        /// Also check the tenant binding of the site serving this host.
        #[arg(long)]
        host: Option<String>,
        token: String,
    },
}

fn parse_claim(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

/// Exit code for a bad config or bad arguments.
const EXIT_CONFIG: u8 = 2;

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

fn main() -> ExitCode {
    opt_out_of_huge_pages();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_CONFIG } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(_) => {
                println!("ok");
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Demo { port } => {
            init_logging();
            match sessiongate::demo::run(port) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("demo: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Token(cmd) => token(cmd),
        Command::Run { config: path } => {
            init_logging();
            match Config::load(&path) {
                Ok(config) => {
                    tracing::info!(listen = %config.listen, admin = %config.admin.addr, sites = config.sites.len(), "starting");
                    sessiongate::run(config, Some(path));
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    eprintln!("{errors}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
    }
}

fn token(cmd: TokenCommand) -> ExitCode {
    match cmd {
        TokenCommand::Mint {
            alg,
            secret_env,
            key_file,
            sub,
            tenant,
            email,
            roles,
            ttl,
            iss,
            aud,
            imp_sid,
            imp_admin_id,
            imp_admin_email,
            imp_reason,
            claims,
        } => {
            let key = match (secret_env, key_file) {
                (Some(name), _) => match std::env::var(&name) {
                    Ok(v) if !v.is_empty() => v.into_bytes(),
                    _ => {
                        eprintln!("--secret-env: environment variable {name} is not set");
                        return ExitCode::from(EXIT_CONFIG);
                    }
                },
                (None, Some(path)) => match std::fs::read(&path) {
                    Ok(k) => k,
                    Err(e) => {
                        eprintln!("--key-file: cannot read {}: {e}", path.display());
                        return ExitCode::from(EXIT_CONFIG);
                    }
                },
                (None, None) => {
                    eprintln!("give --secret-env NAME (HS*) or --key-file PEM");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let args = sessiongate::tools::MintArgs {
                alg,
                key,
                sub,
                tenant,
                email,
                roles,
                ttl,
                issuer: iss,
                audience: aud,
                imp_sid,
                imp_admin_id,
                imp_admin_email,
                imp_reason,
                claims,
            };
            match sessiongate::tools::mint(&args) {
                Ok(t) => {
                    println!("{t}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
        TokenCommand::Inspect {
            config,
            host,
            token,
        } => {
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let i = sessiongate::tools::inspect(&config, &token, host.as_deref());
            let show = |v: &Option<serde_json::Value>| {
                v.as_ref()
                    .and_then(|v| serde_json::to_string_pretty(v).ok())
                    .unwrap_or_else(|| "(undecodable)".into())
            };
            println!("header: {}", show(&i.header));
            println!("claims: {}", show(&i.claims));
            for n in &i.notes {
                println!("note: {n}");
            }
            match i.refusal {
                None => {
                    println!("accepted");
                    ExitCode::SUCCESS
                }
                Some(reason) => {
                    println!("refused: {reason}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
