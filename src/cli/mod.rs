//! The commands of the `token-authority` binary, from parsed arguments to an exit code:
//! `serve`, `keys`, `bench`, `policy check`, `audit verify`. Errors are printed here, once,
//! as one `error:` line with their causes (`telemetry::chain`); a configuration refused before start (a bad flag, or a shared
//! database that refuses the replica) exits 2, other failures 1.

use std::process::ExitCode;

pub mod keys;

use token_authority_jose::clock::Clock;

use crate::{
    callers::commands,
    config::{AuditCommand, Command, Config, KeysCommand, PolicyCommand},
    server::{self, Listeners},
    telemetry,
};

/// Runs one parsed command to its exit code: what `main` does after parsing.
pub fn run(command: Command) -> ExitCode {
    // Files libraries create under the data directory (sled's) are owner-only too.
    crate::store::file_modes::restrict_umask();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!(
                "error: cannot start the async runtime: {}",
                telemetry::chain(&error)
            );
            return ExitCode::FAILURE;
        }
    };
    match command {
        Command::Serve(args) => runtime.block_on(serve(args)),
        Command::Keys(command) => keys(&command),
        Command::Bench(args) => runtime.block_on(bench(args)),
        Command::Policy(PolicyCommand::Check { file }) => {
            report(runtime.block_on(commands::policy_check(&file)))
        }
        Command::Audit(AuditCommand::Verify(args)) => {
            report(runtime.block_on(commands::audit_verify(&args)))
        }
    }
}

/// Prints a command's report: stdout and exit 0, or stderr and exit 1.
fn report(result: Result<String, String>) -> ExitCode {
    match result {
        Ok(text) => {
            println!("{}", text.trim_end());
            ExitCode::SUCCESS
        }
        Err(text) => {
            eprintln!("{}", text.trim_end());
            ExitCode::FAILURE
        }
    }
}

async fn bench(args: crate::config::BenchArgs) -> ExitCode {
    match crate::bench::run(&args).await {
        Ok(report) if args.json => match serde_json::to_string(&report) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {}", telemetry::chain(&error));
                ExitCode::FAILURE
            }
        },
        Ok(report) => {
            print!("{}", crate::bench::render(&report));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {}", telemetry::chain(&error));
            ExitCode::FAILURE
        }
    }
}

fn keys(command: &KeysCommand) -> ExitCode {
    let result = match command {
        KeysCommand::List(args) => keys::list(args),
        KeysCommand::Import(args) => keys::import(args, Clock::system()),
        KeysCommand::Rewrap(args) => keys::rewrap(args),
        KeysCommand::Migrate(args) => keys::migrate(args),
    };
    report(result.map_err(|error| format!("error: {}", telemetry::chain(&error))))
}

async fn serve(args: crate::config::ServeArgs) -> ExitCode {
    let config = match Config::try_from(args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {}", telemetry::chain(&error));
            return ExitCode::from(2);
        }
    };
    let traces = match telemetry::init(config.log_format, config.traces.as_ref()) {
        Ok(traces) => traces,
        Err(error) => {
            eprintln!("error: {}", telemetry::chain(&error));
            return ExitCode::from(2);
        }
    };
    let code = serve_with(config, traces.is_some()).await;
    if let Some(traces) = traces {
        traces.shutdown().await;
    }
    code
}

async fn serve_with(config: Config, tracing: bool) -> ExitCode {
    if tracing {
        tracing::info!(endpoint = ?config.traces.as_ref().map(|t| &t.endpoint), "exporting traces over OTLP");
    }
    let shutdown = match shutdown_signal() {
        Ok(shutdown) => shutdown,
        Err(error) => {
            eprintln!(
                "error: cannot install the SIGTERM/SIGINT handlers: {}",
                telemetry::chain(&error)
            );
            return ExitCode::FAILURE;
        }
    };
    let listeners = match Listeners::bind(config.grpc_listen, config.http_listen).await {
        Ok(listeners) => listeners,
        Err(error) => {
            eprintln!(
                "error: cannot bind {} / {}: {}",
                config.grpc_listen,
                config.http_listen,
                telemetry::chain(&error)
            );
            return ExitCode::FAILURE;
        }
    };
    match server::run(config, listeners, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{}", telemetry::chain(&error));
            eprintln!("error: {}", telemetry::chain(&error));
            ExitCode::from(error.exit_code())
        }
    }
}

/// Completes on SIGTERM (what Kubernetes sends) or SIGINT. The handlers are installed when
/// this is called, not when the future is first polled: a signal that arrives while the
/// server is still starting is not lost (nor does it kill the process undrained).
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    #[cfg(unix)]
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = terminate.recv() => {},
            _ = interrupt.recv() => {},
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    })
}
