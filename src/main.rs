//! `model-bridge`: CLI → load config → build the pingora server → run.

use clap::{Parser, Subcommand};
use model_bridge::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "model-bridge",
    version,
    about = "OpenAI-compatible LLM gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (data plane and ops plane).
    Serve {
        /// Gateway config file.
        #[arg(long, short, default_value = "config/gateway.toml")]
        config: PathBuf,
    },
    /// Validate a config file; exits 1 with `file:line: key: reason` lines on errors.
    Check {
        /// Gateway config file.
        #[arg(long, short, default_value = "config/gateway.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} providers, {} models)",
                    config.display(),
                    c.providers.len(),
                    c.models.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve { config } => {
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            match model_bridge::proxy::serve(cfg, &config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("model-bridge: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
