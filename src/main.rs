use std::io::IsTerminal;

use clap::Parser;

use bucketfs::config::{Cli, Command};
use bucketfs::service;

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Mount(args) => {
            const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];
            if !LEVELS.contains(&args.log_level.to_ascii_lowercase().as_str()) {
                eprintln!(
                    "bucketfs: --log-level `{}` is not one of error, warn, info, debug, trace",
                    args.log_level
                );
                std::process::exit(service::EXIT_USAGE);
            }
            let filter =
                tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                    // fuser logs a harmless error when the kernel already unmounted; the AWS
                    // credential chain warns at length about each source it tries.
                    tracing_subscriber::EnvFilter::new(format!(
                        "{},fuser::mnt=off,fuser::reply=off,aws_config=error,aws_runtime=error",
                        args.log_level.to_ascii_lowercase()
                    ))
                });
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .init();
            let mut args = args;
            if let Err(e) = bucketfs::bucket::resolve_mount(&mut args) {
                eprintln!("bucketfs: {e}");
                std::process::exit(service::EXIT_USAGE);
            }
            match service::run_mount(args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("bucketfs: {e}");
                    service::EXIT_USAGE
                }
            }
        }
        other => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
                )
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .init();
            bucketfs::bucket::run(&other)
        }
    };
    std::process::exit(code);
}
