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
    /// Apply the ClickHouse schema migrations (idempotent).
    Migrate {
        /// Gateway config file (its `[clickhouse]` section).
        #[arg(long, short, default_value = "config/gateway.toml")]
        config: PathBuf,
    },
    /// Manage virtual API keys in the key store (bootstrap without the admin API).
    Keys {
        /// Gateway config file (names the key store, orgs and roles).
        #[arg(long, short, default_value = "config/gateway.toml", global = true)]
        config: PathBuf,
        #[command(subcommand)]
        action: KeysAction,
    },
}

#[derive(Subcommand)]
enum KeysAction {
    /// Create a key; prints it once, with its record, as JSON.
    Create(model_bridge::cli::keys::CreateArgs),
    /// List keys (never secrets), one JSON object per line.
    List {
        #[arg(long)]
        org: Option<String>,
    },
    /// Revoke a key by id; effective on its next request.
    Revoke { id: String },
    /// Print the SHA-256 of a key read from standard input (for `[[auth.keys]]` in config).
    Hash,
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
        Command::Keys { config, action } => {
            use model_bridge::cli::keys;
            let result = match action {
                KeysAction::Hash => {
                    let mut line = String::new();
                    let _ = std::io::stdin().read_line(&mut line);
                    println!("{}", model_bridge::auth::keys::hash(line.trim()));
                    Ok(())
                }
                action => match Config::load(&config) {
                    Err(e) => Err(e.to_string()),
                    Ok(cfg) => match action {
                        KeysAction::Create(a) => keys::create(&cfg, a),
                        KeysAction::List { org } => keys::list(&cfg, org.as_deref()),
                        KeysAction::Revoke { id } => keys::revoke(&cfg, &id),
                        KeysAction::Hash => Ok(()),
                    },
                },
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("model-bridge keys: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Migrate { config } => {
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let Some(ch) = cfg.clickhouse else {
                eprintln!(
                    "model-bridge migrate: {} has no [clickhouse] section",
                    config.display()
                );
                return ExitCode::FAILURE;
            };
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("model-bridge migrate: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(model_bridge::warehouse::migrate::run(&ch)) {
                Ok(r) => {
                    println!(
                        "ClickHouse {}.{} at {}: database {} — applied {:?}, already applied {:?}",
                        r.server.0, r.server.1, ch.url, ch.database, r.applied, r.already
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("model-bridge migrate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
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
