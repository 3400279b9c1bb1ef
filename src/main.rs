//! The `flashgate` binary: parse the command line, start logging, dispatch.

use clap::Parser;

// glibc's malloc and free were a fifth of a hold's instructions (callgrind, scripts/cost.sh);
// jemalloc takes a hold's instructions down by about a sixth without raising the peak memory of
// the 5,000-buyer run (mimalloc saved a little more but raised it by half: README "Performance").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = flashgate::cli::Cli::parse();
    // Kept until the command ends: dropping it flushes the spans not yet exported.
    let _telemetry = match flashgate::telemetry::init(cli.log_format) {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("error: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match flashgate::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", describe(&err));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each said once: many errors already include their
/// cause's text in their own message.
fn describe(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}
