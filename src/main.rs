//! The CLI (SPEC §9): parse arguments, load and validate the config (exit 2 on any
//! configuration problem, before a port is bound), then run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use smh_gateway::access_log::AccessLog;
use smh_gateway::config::{Config, ConfigError};
use smh_gateway::log;
use smh_gateway::server::{Reloader, Server, StartError};
use smh_gateway::token::{TokenSpec, mint, parse_permissions};

/// mimalloc: fewer cycles per request than glibc malloc for the many small,
/// short-lived allocations of a request (headers, strings, futures); see
/// `src/alloc.rs` for how it is called.
#[global_allocator]
static GLOBAL: smh_gateway::alloc::Allocator = smh_gateway::alloc::Allocator;

/// Exit status for any configuration problem.
const EXIT_CONFIG: u8 = 2;

#[derive(Parser)]
#[command(
    name = "smh-gateway",
    version,
    about = "A verifying reverse proxy in front of Smart Media Hosting (SMH)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        #[arg(long, default_value = "config/gateway.toml")]
        config: PathBuf,
    },
    /// Validate a config file (keys, env vars, files); exit 0, or 2 naming the key.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Mint a token with a configured HMAC key; prints the JWT alone.
    Token {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        kid: String,
        #[arg(long)]
        library: String,
        /// A space the token covers; repeat for several.
        #[arg(long = "space")]
        spaces: Vec<String>,
        #[arg(long)]
        user: Option<String>,
        /// Comma-separated SMH grants, e.g. upload_file,begin_upload.
        #[arg(long)]
        permissions: String,
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// The gateway and a built-in mock SMH upstream on loopback, with curl examples.
    Demo {
        /// The upstream credential mode: `passthrough`, or `library_secret` (the
        /// gateway mints SMH tokens with library secrets; the mock checks them).
        #[arg(long, default_value = "passthrough", value_parser = ["passthrough", "library_secret"])]
        credential: String,
    },
    /// Print the effective route table (the built-in rows with the config's
    /// `[[routes.rules]]` applied) as Markdown.
    Routes {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// The mock SMH upstream alone.
    MockUpstream {
        #[arg(long, default_value = "127.0.0.1:18080")]
        listen: std::net::SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Token {
            config,
            kid,
            library,
            spaces,
            user,
            permissions,
            ttl,
        } => {
            let spec = TokenSpec {
                kid,
                library,
                spaces,
                user,
                permissions: parse_permissions(&permissions),
                ttl,
            };
            match Config::load(&config).and_then(|c| mint(&c, &spec)) {
                Ok(token) => {
                    println!("{}", token.expose());
                    ExitCode::SUCCESS
                }
                Err(e) => config_failure(&e),
            }
        }
        Command::Serve { config } => serve(&config),
        Command::Routes { config } => routes(config.as_deref()),
        Command::Demo { credential } => runtime().block_on(async {
            let credential = match credential.as_str() {
                "library_secret" => smh_gateway::demo::DemoCredential::LibrarySecret,
                _ => smh_gateway::demo::DemoCredential::Passthrough,
            };
            match smh_gateway::demo::run(credential).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("demo failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }),
        Command::MockUpstream { listen } => runtime().block_on(async {
            match smh_gateway::mock_upstream::MockUpstream::start(listen).await {
                Ok(mock) => {
                    log::info(&format!("mock SMH upstream listening on {}", mock.addr()));
                    let _ = tokio::signal::ctrl_c().await;
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cannot listen on {listen}: {e}");
                    ExitCode::FAILURE
                }
            }
        }),
    }
}

/// The async runtime. `TOKIO_WORKER_THREADS` sets the worker count, as with
/// `#[tokio::main]` (default: one per core). With exactly one worker the
/// current-thread scheduler runs everything on the main thread, which spares the
/// hand-offs between the main thread and a lone worker.
fn runtime() -> tokio::runtime::Runtime {
    let one_worker = std::env::var("TOKIO_WORKER_THREADS").is_ok_and(|v| v.trim() == "1");
    let mut builder = if one_worker {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all().build().expect("tokio runtime")
}

fn config_failure(e: &ConfigError) -> ExitCode {
    eprintln!("config error: {e}");
    ExitCode::from(EXIT_CONFIG)
}

fn check(path: &Path) -> ExitCode {
    let result = Config::load(path).and_then(smh_gateway::server::check);
    match result {
        Ok(()) => {
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => config_failure(&e),
    }
}

fn routes(path: Option<&Path>) -> ExitCode {
    let rules = match path.map(Config::load).transpose() {
        Ok(config) => config.map(|c| c.routes.rules).unwrap_or_default(),
        Err(e) => return config_failure(&e),
    };
    match smh_gateway::proxy::route::Router::new(&rules) {
        Ok(router) => {
            print!("{}", router.markdown());
            ExitCode::SUCCESS
        }
        Err((i, field, message)) => {
            eprintln!(
                "config error: {}: routes.rules[{i}].{field}: {message}",
                path.map(|p| p.display().to_string()).unwrap_or_default()
            );
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn serve(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return config_failure(&e),
    };
    runtime().block_on(async move {
        let server = match Server::bind(config, AccessLog::stdout()).await {
            Ok(s) => s,
            Err(StartError::Config(e)) => return config_failure(&e),
            Err(e) => {
                log::error(&e.to_string());
                return ExitCode::FAILURE;
            }
        };
        // The SIGHUP handler is in place before the gateway says it is listening:
        // a reload sent the moment it is up (a test, a deploy script) must reload,
        // not meet the default action, which ends the process.
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
        log::info(&format!(
            "listening on {} (admin {})",
            server.local_addr(),
            server.admin_addr()
        ));
        if let Ok(hup) = hup {
            tokio::spawn(reload_on_sighup(hup, server.reloader(), path.to_path_buf()));
        }
        server.run(terminate()).await;
        log::info("stopped");
        ExitCode::SUCCESS
    })
}

/// SIGTERM or SIGINT.
async fn terminate() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => log::info("SIGTERM: draining"),
        _ = int.recv() => log::info("SIGINT: draining"),
    }
}

/// SIGHUP re-reads the config and applies it ([`Reloader`] counts and logs the
/// outcome); an invalid file, or one that changes a key needing a restart, leaves
/// the running config in place.
async fn reload_on_sighup(mut hup: tokio::signal::unix::Signal, reloader: Reloader, path: PathBuf) {
    while hup.recv().await.is_some() {
        log::info(&format!("SIGHUP: reloading {}", path.display()));
        let _ = reloader.reload_file(&path);
    }
}
