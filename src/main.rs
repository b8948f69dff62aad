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
    /// Bring the spend rollups (usage_daily, usage_hourly) to the raw rows' totals for a range
    /// of days: corrects any key that differs (idempotent; prints how many did).
    Reconcile {
        #[arg(long, short, default_value = "config/gateway.toml")]
        config: PathBuf,
        /// First day, YYYY-MM-DD (default: the first day with rows).
        #[arg(long)]
        from: Option<String>,
        /// Last day, inclusive (default: the last day with rows).
        #[arg(long)]
        to: Option<String>,
    },
    /// Audit trail operations.
    Audit {
        #[arg(long, short, default_value = "config/gateway.toml", global = true)]
        config: PathBuf,
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Anonymise a user's usage rows in ClickHouse (right to erasure); audited.
    Erase {
        #[arg(long, short, default_value = "config/gateway.toml")]
        config: PathBuf,
        /// The user id (as authenticated, or as sent in OpenAI's `user` field).
        #[arg(long)]
        user: String,
        /// Only this org's rows.
        #[arg(long)]
        org: Option<String>,
    },
    /// Retention of warehouse rows.
    Retention {
        #[arg(long, short, default_value = "config/gateway.toml", global = true)]
        config: PathBuf,
        #[command(subcommand)]
        action: RetentionAction,
    },
    /// Reports over ClickHouse data.
    Report {
        #[arg(long, short, default_value = "config/gateway.toml", global = true)]
        config: PathBuf,
        #[command(subcommand)]
        what: ReportWhat,
    },
    /// Evaluations: run a dataset through the gateway and score it; compare two results.
    Eval {
        #[command(subcommand)]
        action: EvalAction,
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
enum EvalAction {
    /// Run (or resume) an eval spec through a running gateway, as `--key`. Exits 0 when every
    /// case is scored, 3 when the budget stopped it, 4 when some cases failed (resume sends
    /// them again), 2 on errors.
    Run {
        /// The eval spec (TOML).
        spec: PathBuf,
        /// Gateway config: its data plane, ops plane and ClickHouse (optional with --gateway).
        #[arg(long, short, default_value = "config/gateway.toml")]
        config: PathBuf,
        /// The data plane's URL (default: from the config).
        #[arg(long)]
        gateway: Option<String>,
        /// The ops plane's URL (receipts; default: from the config).
        #[arg(long)]
        ops: Option<String>,
        /// The virtual key or JWT to call as (default: $MODEL_BRIDGE_API_KEY).
        #[arg(long)]
        key: Option<String>,
        /// Resume this run: cases already scored are not sent again.
        #[arg(long)]
        resume: Option<String>,
        /// The run's USD cap, in place of the spec's.
        #[arg(long)]
        budget_usd: Option<String>,
        /// Where run files live.
        #[arg(long, default_value = "eval-runs")]
        dir: PathBuf,
    },
    /// Compare a candidate result with a baseline case by case; exits 1 on a regression
    /// beyond the margin (a CI gate), 0 otherwise, 2 on errors.
    Compare {
        /// The baseline run id.
        baseline: String,
        /// The candidate run id (may be the baseline's, with another target).
        candidate: String,
        #[arg(long)]
        baseline_target: Option<String>,
        #[arg(long)]
        candidate_target: Option<String>,
        /// A drop of a scorer's mean beyond this (0-1) is a regression when significant.
        #[arg(long, default_value_t = 0.0)]
        margin: f64,
        #[arg(long, default_value = "eval-runs")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ReportWhat {
    /// Per-variant results of an A/B experiment with significance tests and a verdict (JSON).
    Experiment {
        id: String,
        /// Only this org's traffic.
        #[arg(long)]
        org: Option<String>,
    },
    /// Spend from the rollup (the same answer as `GET /admin/v1/spend`), exact to the nano-USD.
    Spend {
        /// First day, YYYY-MM-DD (default: the first of this month).
        #[arg(long)]
        from: Option<String>,
        /// Last day, inclusive (default: today).
        #[arg(long)]
        to: Option<String>,
        /// Comma-separated: org, team, cost_center, department, project, key_id, model,
        /// provider, experiment, variant (and at most one of month, day, hour).
        #[arg(long, default_value = "")]
        group_by: String,
        /// Time bucket: month, day or hour (hours read the hourly rollup's retained weeks).
        #[arg(long)]
        period: Option<String>,
        /// Only this org (default: every org).
        #[arg(long)]
        org: Option<String>,
        /// Only this cost center (same as `--where cost_center=<id>`).
        #[arg(long)]
        cost_center: Option<String>,
        /// Filters, `dimension=value`; repeatable.
        #[arg(long = "where")]
        filters: Vec<String>,
        /// table, csv or json.
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Spend per cost center per month with allocations applied (the same answer as
    /// `GET /admin/v1/chargeback`), exact to the nano-USD.
    Chargeback {
        /// First day, YYYY-MM-DD (default: the first of this month).
        #[arg(long)]
        from: Option<String>,
        /// Last day, inclusive (default: today).
        #[arg(long)]
        to: Option<String>,
        /// Only this org (default: every org).
        #[arg(long)]
        org: Option<String>,
        /// table, csv or json.
        #[arg(long, default_value = "table")]
        format: String,
    },
}

#[derive(Subcommand)]
enum AuditAction {
    /// Recompute every audit hash chain from ClickHouse and check every row's signature;
    /// exits 1 at the first break.
    Verify {
        /// The audit public key (hex) recorded when the key was made; defaults to
        /// `[audit] verify_key`. Never take it from the database being checked.
        #[arg(long)]
        public_key: Option<String>,
    },
    /// Make an audit signing key pair (prints the secret seed and the public key).
    Keygen,
}

#[derive(Subcommand)]
enum RetentionAction {
    /// Drop monthly partitions older than `[clickhouse] usage_retention_months` /
    /// `audit_retention_months`.
    Apply,
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
    model_bridge::logging::init();
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
        Command::Migrate { config } => warehouse_cmd(&config, "migrate", |c| {
            model_bridge::cli::warehouse::run_migrate(c).map(|()| true)
        }),
        Command::Audit {
            config,
            action: AuditAction::Verify { public_key },
        } => warehouse_cmd(&config, "audit verify", |c| {
            model_bridge::cli::warehouse::audit_verify(c, public_key.as_deref())
        }),
        Command::Audit {
            action: AuditAction::Keygen,
            ..
        } => {
            let (seed, public) = model_bridge::warehouse::signing::keygen();
            println!("signing_key (keep secret; [audit] signing_key = \"${{MB_AUDIT_SIGNING_KEY}}\"):\n{seed}");
            println!("public key (give to auditors; [audit] verify_key):\n{public}");
            ExitCode::SUCCESS
        }
        Command::Report {
            config,
            what: ReportWhat::Experiment { id, org },
        } => warehouse_cmd(&config, "report experiment", |c| {
            model_bridge::cli::warehouse::report_experiment(c, &id, org.as_deref()).map(|()| true)
        }),
        Command::Report {
            config,
            what:
                ReportWhat::Spend {
                    from,
                    to,
                    group_by,
                    period,
                    org,
                    cost_center,
                    mut filters,
                    format,
                },
        } => warehouse_cmd(&config, "report spend", |c| {
            filters.extend(cost_center.map(|cc| format!("cost_center={cc}")));
            model_bridge::cli::warehouse::report_spend(
                c,
                model_bridge::cli::warehouse::SpendArgs {
                    from,
                    to,
                    group_by: &group_by,
                    period,
                    org,
                    filters,
                    format: &format,
                },
            )
            .map(|()| true)
        }),
        Command::Report {
            config,
            what:
                ReportWhat::Chargeback {
                    from,
                    to,
                    org,
                    format,
                },
        } => warehouse_cmd(&config, "report chargeback", |c| {
            model_bridge::cli::warehouse::report_chargeback(c, org.as_deref(), from, to, &format)
                .map(|()| true)
        }),
        Command::Eval { action } => {
            let done = match action {
                EvalAction::Run {
                    spec,
                    config,
                    gateway,
                    ops,
                    key,
                    resume,
                    budget_usd,
                    dir,
                } => model_bridge::cli::eval::run(model_bridge::cli::eval::RunArgs {
                    config,
                    spec,
                    gateway,
                    ops,
                    key,
                    resume,
                    budget_usd,
                    dir,
                }),
                EvalAction::Compare {
                    baseline,
                    candidate,
                    baseline_target,
                    candidate_target,
                    margin,
                    dir,
                } => model_bridge::cli::eval::compare(model_bridge::cli::eval::CompareArgs {
                    baseline,
                    candidate,
                    baseline_target,
                    candidate_target,
                    margin,
                    dir,
                }),
            };
            match done {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    eprintln!("eval: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Reconcile { config, from, to } => warehouse_cmd(&config, "reconcile", |c| {
            model_bridge::cli::warehouse::reconcile(c, from, to).map(|()| true)
        }),
        Command::Erase { config, user, org } => warehouse_cmd(&config, "erase", |c| {
            model_bridge::cli::warehouse::erase(c, &user, org.as_deref()).map(|()| true)
        }),
        Command::Retention {
            config,
            action: RetentionAction::Apply,
        } => warehouse_cmd(&config, "retention apply", |c| {
            model_bridge::cli::warehouse::retention_apply(c).map(|()| true)
        }),
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

/// Loads the config and runs a warehouse command: exit 0 on Ok(true), 1 otherwise.
fn warehouse_cmd(
    config: &std::path::Path,
    name: &str,
    f: impl FnOnce(&Config) -> Result<bool, String>,
) -> ExitCode {
    let cfg = match Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match f(&cfg) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("model-bridge {name}: {e}");
            ExitCode::FAILURE
        }
    }
}
