//! The lrpymrpc reference server: it really does the job (a fresh job directory per
//! upload, pip into a Python environment (cached per certificate and pinned REPO_URL),
//! the command in a process group, results streamed back) over mutual TLS. A library
//! with a thin binary, so tests start it in-process with [`run`] on port 0. Its rooms,
//! from the wire down: `rpc` (the services), `jobs` (the job table, results, spools),
//! `execute` (the Execute step and the action cache's path), `executor` (where
//! processes run: local, sandbox, Slurm), `resources` (cores, memory and licenses, and
//! the queue for them), `store` (what is kept between jobs), `net`
//! (sockets), `config`, `cli`; `state` is what every call shares, `error` the one
//! mapping of errors to statuses.

/// The server's name as users see it: in its usage, errors and logs, the notes it
/// adds to a job's output (`[lrpymrpc-server] ...`) and its capabilities. The crate
/// and the folder keep their first name (`mock-server`), and the binary answers to
/// `lrpymrpc-mock-server` too, which existing units and scripts type.
pub const SERVER_NAME: &str = "lrpymrpc-server";

/// The file in the job root a running server holds locked (one server per root).
pub use jobs::root_lock::LOCK_FILE as ROOT_LOCK_FILE;
pub use jobs::spool_file::SPOOLS_DIR;

pub mod cli;
pub mod config;
mod error;
mod execute;
pub mod executor;
mod jobs;
mod net;
pub mod resources;
mod rpc;
mod state;
mod store;
pub mod web;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use std::pin::Pin;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use tonic::transport::Server;
use tracing::{info, warn};

pub use config::{Config, ConfigError, TlsMaterial};
use lrpymrpc_proto::file_service_server::FileServiceServer;
use lrpymrpc_proto::v1::extensions_server::ExtensionsServer;

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot prepare the job root `{root}`: {source}")]
    Setup { root: std::path::PathBuf, source: std::io::Error },
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    #[error("--metrics-listen {address}: cannot listen there: {source}")]
    Metrics { address: std::net::SocketAddr, source: std::io::Error },
    #[error("--status-listen {address}: cannot listen there: {source}")]
    StatusPage { address: std::net::SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
}

/// Samples the server's use for the status page's history, now and every
/// `--status-sample-every` (the file written off the async threads).
async fn sample_forever(state: Arc<state::State>, history: Arc<web::history::History>) {
    let mut ticks = tokio::time::interval(state.config.status_sample_every.max(std::time::Duration::from_millis(100)));
    loop {
        ticks.tick().await;
        let sample = web::history::Sample::now(state.resources.capacity(), &state.resources.snapshot());
        let history = history.clone();
        let _ = tokio::task::spawn_blocking(move || history.record(sample)).await;
    }
}

/// Serves jobs on `listener` until `shutdown` completes; then takes no new jobs, lets
/// running ones finish (their Check and Download included) for up to
/// `shutdown_grace`, stops the commands still running, closes the connections and
/// returns.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let root = config.root.clone();
    let (state, swept) = state::State::new(config).map_err(|source| ServeError::Setup { root, source })?;
    if !swept.is_empty() {
        info!(swept = swept.len(), "removed job directories an earlier run left behind");
    }
    let state = Arc::new(state);
    let adoptable = std::mem::take(&mut *state.adoptable.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
    if !adoptable.is_empty() {
        info!(jobs = adoptable.len(), "taking on the durable jobs an earlier server left");
    }
    execute::adopt::adopt_all(&state, adoptable);
    // Their commands may still run in the farm's queue (the earlier server was killed).
    if let Some(farm) = state.farm.clone() {
        tokio::spawn(async move { farm.cancel_left_behind(&swept).await });
    }
    let reaper = tokio::spawn(reap_forever(state.clone()));
    let metrics = match state.config.metrics_listen {
        Some(address) => {
            let listener =
                web::metrics::bind(address).await.map_err(|source| ServeError::Metrics { address, source })?;
            info!(address = %listener.local_addr().unwrap_or(address), "serving metrics at /metrics");
            let refresh_state = state.clone();
            let refresh = Arc::new(move || refresh_gauges(&refresh_state));
            Some(tokio::spawn(web::metrics::serve(listener, state.metrics.clone(), refresh)))
        }
        None => None,
    };
    let status_page = match state.config.status_listen {
        Some(address) => {
            let listener =
                web::http::bind(address).await.map_err(|source| ServeError::StatusPage { address, source })?;
            let bound = listener.local_addr().unwrap_or(address);
            web::serve::announce(bound, state.config.tls.is_some());
            let _ = state.status_page.set(bound);
            let history = Arc::new(web::history::History::open(Some(&state.config.root)));
            let sampler = tokio::spawn(sample_forever(state.clone(), history.clone()));
            let page = tokio::spawn(web::serve::serve(listener, state.clone(), history));
            Some((sampler, page))
        }
        None => None,
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<FileServiceServer<rpc::files::Service>>().await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serve = serve(listener, &state, health_service, async {
        let _ = stopped.await;
    })?;
    tokio::pin!(serve);
    let outcome = tokio::select! {
        outcome = &mut serve => outcome,
        () = shutdown => drain(&state, &health, &mut serve, stop).await,
    };
    reaper.abort();
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    if let Some((sampler, page)) = status_page {
        sampler.abort();
        page.abort();
    }
    outcome.map_err(ServeError::from)
}

/// The gRPC server: `FileService`, the extension service unless `--legacy-protocol`,
/// on `listener` with mutual TLS when configured; it ends when `stopped` completes.
fn serve<'a>(
    listener: TcpListener,
    state: &'a Arc<state::State>,
    health: tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    stopped: impl Future<Output = ()> + Send + 'a,
) -> Result<Serving<'a>, ServeError> {
    let config = &state.config;
    let mut builder = Server::builder()
        .max_concurrent_streams(config.max_streams_per_connection)
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(lrpymrpc_proto::KEEPALIVE_TIMEOUT));
    // The receive windows stay hyper's (1 MiB): enough for a LAN; through a 20 ms
    // round trip they held uploads to 26 MiB/s, and 4 MiB windows cost clients on
    // this machine 1.3 MB of peak RSS at 2 GB (docs/benchmarks.md).
    // A legacy server knows nothing of the extension service: clients see UNIMPLEMENTED.
    let extensions =
        (!config.legacy_protocol).then(|| ExtensionsServer::new(rpc::extensions::ExtensionService::new(state.clone())));
    let router = builder
        .add_service(FileServiceServer::new(rpc::files::Service::new(state.clone())))
        .add_optional_service(extensions)
        .add_service(health);
    // serve_with_incoming ignores the builder's TCP settings: the incoming stream sets
    // them. Without TCP_NODELAY, each small response waits out a delayed ACK (40 ms).
    Ok(match &config.tls {
        // Client certificates are mandatory: the handshake fails before any RPC, so no
        // byte of an unauthenticated upload reaches the disk.
        Some(tls) => {
            let acceptor = net::listener::tls_acceptor(tls, config.health_without_auth).map_err(ServeError::Tls)?;
            let limits = net::listener::HandshakeLimits {
                max_in_progress: config.max_handshakes,
                max_per_address: config.max_handshakes_per_address,
                timeout: config.tls_handshake_timeout,
                keepalive: config.keepalive_interval,
            };
            let incoming = net::listener::accept_tls(listener, acceptor, limits, state.metrics.clone());
            Box::pin(router.serve_with_incoming_shutdown(incoming, stopped))
        }
        None => {
            let incoming =
                TcpIncoming::from(listener).with_nodelay(Some(true)).with_keepalive(Some(config.keepalive_interval));
            Box::pin(router.serve_with_incoming_shutdown(incoming, stopped))
        }
    })
}

/// The running gRPC server.
type Serving<'a> = Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send + 'a>>;

/// Draining shutdown: no new jobs; running ones may still Check and Download on their
/// connections until they are done or the grace is over; then their commands are
/// stopped, and the connections get [`DRAIN_AFTER_STOP`] to close.
async fn drain(
    state: &state::State,
    health: &tonic_health::server::HealthReporter,
    serve: &mut Pin<&mut Serving<'_>>,
    stop: tokio::sync::oneshot::Sender<()>,
) -> Result<(), tonic::transport::Error> {
    state.draining.store(true, std::sync::atomic::Ordering::SeqCst);
    // Load balancers and scripts see it first: no new jobs here.
    health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
    health.set_not_serving::<FileServiceServer<rpc::files::Service>>().await;
    if state.config.keep_jobs_on_exit {
        // The runs go on under their supervisors; their spools are on disk. The next
        // server on this root takes them on (`execute/adopt.rs`).
        info!(
            running = state.running(),
            "shutting down: running jobs are left for the next server (--keep-jobs-on-exit)"
        );
        // What the next server could not take on is stopped now, not left to nobody.
        state.stop_those_not_outliving().await;
        // Connections are closed now, not drained: their clients reconnect to the
        // next server and resume there.
        let _ = stop.send(());
        return tokio::time::timeout(KEEP_JOBS_EXIT, serve.as_mut()).await.unwrap_or(Ok(()));
    }
    info!(active = state.jobs.active(), "shutting down: no new jobs; running jobs may finish");
    let deadline = tokio::time::Instant::now() + state.config.shutdown_grace;
    let mut stopped_commands = false;
    loop {
        if state.jobs.active() == 0 {
            break;
        }
        let now = tokio::time::Instant::now();
        if now >= deadline + DRAIN_AFTER_STOP {
            break;
        }
        if now >= deadline && !stopped_commands {
            warn!(running = state.running(), "shutdown grace over: stopping the commands still running");
            state.stop_all();
            stopped_commands = true;
        }
        tokio::select! {
            outcome = serve.as_mut() => return outcome,
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    let _ = stop.send(());
    let served = tokio::time::timeout(DRAIN_AFTER_STOP, serve.as_mut()).await.unwrap_or(Ok(()));
    if let Some(spares) = &state.spares {
        // Spare trees are only for this run's next jobs. Serving is over: blocking
        // this thread for the removal holds up nothing.
        spares.clear();
    }
    served
}

/// After stopping commands (and after the last call), how long connections get to close.
const DRAIN_AFTER_STOP: Duration = Duration::from_secs(5);
/// With `--keep-jobs-on-exit`: how long the connections get to close before the server
/// exits (their calls are not waited for: their jobs go on, followed again elsewhere).
const KEEP_JOBS_EXIT: Duration = Duration::from_millis(200);

/// The gauges read when metrics are scraped.
fn refresh_gauges(state: &state::State) {
    let metrics = &state.metrics;
    metrics.jobs_running.set(i64::try_from(state.running()).unwrap_or(i64::MAX));
    metrics.jobs_waiting.set(i64::try_from(state.jobs.waiting()).unwrap_or(i64::MAX));
    let (capacity, now) = (state.resources.capacity(), state.resources.snapshot());
    metrics.cores_in_use.set(i64::from(capacity.cpus.saturating_sub(now.free_cpus)));
    let memory_in_use = capacity.memory_bytes.saturating_sub(now.free_memory_bytes);
    metrics.memory_in_use_bytes.set(i64::try_from(memory_in_use).unwrap_or(i64::MAX));
    for (name, total) in &capacity.licenses {
        let held = total.saturating_sub(now.free_licenses.get(name).copied().unwrap_or(0));
        let pool = crate::net::metrics::Pool { license: name.clone() };
        metrics.licenses_in_use.get_or_create(&pool).set(i64::from(held));
    }
    metrics.steps_waiting_for_resources.set(i64::from(now.waiting));
    if let Some(store) = &state.store {
        metrics.store_bytes.set(i64::try_from(store.total_bytes()).unwrap_or(i64::MAX));
    }
}

/// Removes finished and forgotten jobs as they fall due.
async fn reap_forever(state: Arc<state::State>) {
    let interval = state.jobs.reap_interval();
    loop {
        tokio::time::sleep(interval).await;
        for (job, why, dir) in state.jobs.reap() {
            let _ = tokio::task::spawn_blocking(move || jobs::remove_job_files(&dir)).await;
            info!(job = %job, reason = ?why, "job directory removed");
        }
        state.spools.retain(|id| state.jobs.contains(id));
    }
}
