use clap::Parser;

use bucketfs::config::{Cli, Command};
use bucketfs::service;

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Mount(args) => {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(args.log_level.clone()));
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .init();
            match service::run_mount(args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("bucketfs: {e}");
                    service::EXIT_USAGE
                }
            }
        }
    };
    std::process::exit(code);
}
