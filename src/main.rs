//! The `sessiongate` command: parses arguments, calls the library, maps errors to exit codes.

use clap::{Parser, Subcommand};
use sessiongate::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

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
