//! The `token-authority` binary: parse, check, start logging, bind, run.

use std::process::ExitCode;

use clap::Parser as _;
use token_authority::{
    config::{Cli, Command, Config},
    server::{self, Listeners},
    telemetry,
};

#[tokio::main]
async fn main() -> ExitCode {
    let Command::Serve(args) = Cli::parse().command;
    let config = match Config::try_from(args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(config.log_format);
    let listeners = match Listeners::bind(config.grpc_listen, config.http_listen).await {
        Ok(listeners) => listeners,
        Err(error) => {
            eprintln!(
                "error: cannot bind {} / {}: {error}",
                config.grpc_listen, config.http_listen
            );
            return ExitCode::FAILURE;
        }
    };
    match server::run(config, listeners, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGTERM (what Kubernetes sends) or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
