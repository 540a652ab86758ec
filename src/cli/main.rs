//! The `sessiongate` command: parses arguments, calls the library, maps errors to exit codes.
//! `run` and `check` are the library's; `demo` and `token mint|inspect` live beside this file.

mod demo;
mod token;

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
    /// Validate a config file and its `sites_dir`: prints `ok` (and, on stderr, each site with
    /// the file it came from), or each error with its file, key path and line:column.
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
    Mint(token::MintArgs),
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
            Ok(config) => {
                // The verdict alone on stdout, for scripts; the sites it found, for people.
                println!("ok");
                let width = config.sites.iter().map(|s| s.name.len()).max().unwrap_or(0);
                for site in &config.sites {
                    eprintln!("site {:width$}  {}", site.name, site.file);
                }
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Demo { port } => {
            init_logging();
            match demo::run(port) {
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
                    tracing::info!(listen = ?config.listen, tls = ?config.tls.as_ref().map(|t| t.addr), admin = %config.admin.addr, sites = config.sites.len(), "starting");
                    match sessiongate::run(config, Some(sessiongate::ConfigSource::file(path))) {
                        Ok(()) => ExitCode::SUCCESS,
                        Err(e) => {
                            eprintln!("cannot start: {e}");
                            ExitCode::FAILURE
                        }
                    }
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
        TokenCommand::Mint(args) => {
            match token::signing_key(&args).and_then(|key| token::mint(&args, &key)) {
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
            let i = token::inspect(&config, &token, host.as_deref());
            let show = |v: &Option<serde_json::Value>| {
                v.as_ref()
                    .and_then(|v| serde_json::to_string_pretty(v).ok())
                    .unwrap_or_else(|| "(undecodable)".into())
            };
            println!("header: {}", show(&i.header));
            println!("claims: {}", show(&i.claims));
            for (field, value, from) in &i.fields {
                println!("field: {field} = {value:?} (from {from})");
            }
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
