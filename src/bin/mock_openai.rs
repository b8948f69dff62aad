//! `mock-openai`: the mock OpenAI-compatible provider (see `model_bridge::mock`).

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Mock OpenAI-compatible provider for tests and benches")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18081")]
    listen: String,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[command(flatten)]
    knobs: model_bridge::mock::Knobs,
}

fn main() {
    model_bridge::logging::init_with_default("warn");
    let args = Args::parse();
    model_bridge::mock::run(&args.listen, args.threads, args.knobs);
}
