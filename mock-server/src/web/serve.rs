//! The status page's routes (`--status-listen ADDR`), served through `http.rs` (its
//! bounds: [`MAX_CONNECTIONS`] connections, the time limits) over HTTPS with the
//! server's own certificate (no client certificate asked: a browser has none). Every
//! response carries a Content-Security-Policy that allows scripts and styles from this
//! server only (no inline script, no other origin), `nosniff` and no referrer. At most
//! [`MAX_EVENT_STREAMS`] live event streams at once, each ending after
//! [`EVENT_STREAM_LIFETIME`] (a browser reconnects) or as soon as its viewer leaves.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State as Shared};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};

use super::history::History;
use super::pages;
use crate::config::TlsMaterial;
use crate::rpc::extensions::{Viewer, status_now};
use crate::state::State;

/// Connections open at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Live event streams at once (each is a connection too).
pub const MAX_EVENT_STREAMS: usize = 32;
/// How long one event stream lasts before the browser is asked to reconnect.
pub const EVENT_STREAM_LIFETIME: Duration = Duration::from_secs(3600);
/// How often an event stream sends the overview anew.
pub const PUSH_EVERY: Duration = Duration::from_secs(2);
/// The TLS handshake's and the request head's time limit.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
const LIVE_JS: &str = include_str!("assets/live.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// What the handlers share.
#[derive(Clone)]
struct Page {
    state: Arc<State>,
    history: Arc<History>,
    streams: Arc<Semaphore>,
}

/// Serves the status page on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, state: Arc<State>, history: Arc<History>) {
    let tls = match state.config.tls.as_ref().map(acceptor) {
        Some(Ok(acceptor)) => Some(acceptor),
        Some(Err(error)) => {
            warn!(%error, "the status page is not served: its TLS could not be set up");
            return;
        }
        None => None,
    };
    let page = Page { state, history, streams: Arc::new(Semaphore::new(MAX_EVENT_STREAMS)) };
    let router = Router::new()
        .route("/", get(overview))
        .route("/events", get(events))
        .route("/job/{id}/{secret}", get(job_page))
        .route("/job/{id}/{secret}/events", get(job_events))
        .route("/live.js", get(|| async { asset(LIVE_JS, "text/javascript; charset=utf-8") }))
        .route("/style.css", get(|| async { asset(STYLE_CSS, "text/css; charset=utf-8") }))
        .fallback(not_found)
        .with_state(page)
        .layer(axum::middleware::map_response(secure_headers));
    let limits = super::http::Limits {
        what: "status page",
        connections: MAX_CONNECTIONS,
        request_timeout: REQUEST_TIMEOUT,
        max_head_bytes: 16 * 1024,
    };
    super::http::serve(listener, router, tls, limits).await;
}

/// HTTPS with the server's own certificate; no client certificate asked.
fn acceptor(material: &TlsMaterial) -> Result<tokio_rustls::TlsAcceptor, String> {
    let (certs, key) = crate::net::listener::server_identity(material)?;
    let mut config = rustls::ServerConfig::builder_with_provider(lrpymrpc_certs::provider::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("the server certificate and key do not fit: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn asset(body: &'static str, kind: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

fn html(markup: maud::Markup) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], markup.into_string()).into_response()
}

/// The one answer for anything that is not a page: the same for a page that never
/// existed and one the asker may not see.
async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "not found\n").into_response()
}

fn overview_markup(page: &Page) -> maud::Markup {
    let status = status_now(&page.state, Viewer::Public);
    pages::overview(&status, &page.history.samples())
}

async fn overview(Shared(page): Shared<Page>) -> Response {
    let body = maud::html! { div id="live" { (overview_markup(&page)) } };
    html(pages::page(&format!("{} status", crate::SERVER_NAME), body))
}

/// The overview anew every [`PUSH_EVERY`], as server-sent events (`event: overview`,
/// the fragment's HTML as data).
async fn events(Shared(page): Shared<Page>) -> Response {
    let Ok(permit) = page.streams.clone().try_acquire_owned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many live views open; reload later\n").into_response();
    };
    let stream = overview_stream(page, permit);
    Sse::new(stream).into_response()
}

fn overview_stream(
    page: Page,
    permit: OwnedSemaphorePermit,
) -> impl tokio_stream::Stream<Item = Result<Event, Infallible>> + Send {
    let ends = tokio::time::Instant::now() + EVENT_STREAM_LIFETIME;
    let ticks = tokio_stream::wrappers::IntervalStream::new(tokio::time::interval(PUSH_EVERY));
    tokio_stream::StreamExt::map_while(ticks, move |tick| {
        let _held = &permit;
        (tick < ends).then(|| Ok(Event::default().event("overview").data(overview_markup(&page).into_string())))
    })
}

/// Logs where the page is served.
pub fn announce(address: SocketAddr, tls: bool) {
    let scheme = if tls { "https" } else { "http" };
    info!(address = %address, "serving the status page at {scheme}://{address}/");
}

/// The most output records a job's page shows when opened (the newest).
const PAGE_RECORDS: usize = 2000;

/// Job `id`'s spool when `secret` is its page's: anything else is the one 404.
fn job_spool(page: &Page, id: &str, secret: &str) -> Option<Arc<crate::jobs::spool::Spool>> {
    if !page.state.job_links.check(id, secret) {
        return None;
    }
    page.state.spools.all().into_iter().find(|spool| spool.started.id == id)
}

/// What the job's page says of where it stands.
fn job_state(page: &Page, spool: &crate::jobs::spool::Spool) -> String {
    let (end, _, ran) = spool.summary();
    match (end, page.state.jobs.waiting_for(&spool.started.id).or_else(|| spool.farm_queued())) {
        (Some(end), _) => format!("ended: {end} after {}", lrpymrpc_units::human_duration(ran)),
        (None, Some(reason)) => reason,
        (None, None) => format!("running for {}", lrpymrpc_units::human_duration(ran)),
    }
}

/// A job's own page: its command, where it stands and its output so far, then live.
async fn job_page(Shared(page): Shared<Page>, Path((id, secret)): Path<(String, String)>) -> Response {
    let Some(spool) = job_spool(&page, &id, &secret) else { return not_found().await };
    let (records, last) = spool.last_records(PAGE_RECORDS);
    let lines: Vec<String> = records.into_iter().filter_map(Result::ok).map(|record| record.message).collect();
    let started = &spool.started;
    let run_name = started.attach.as_ref().map(|attach| attach.run_name.clone()).unwrap_or_default();
    let events = format!("/job/{id}/{secret}/events?after={last}");
    let body = pages::job(&pages::JobView {
        cn: started.owner.as_deref().unwrap_or(""),
        run_name: &run_name,
        command: &started.command,
        state: &job_state(&page, &spool),
        lines: &lines,
        events: &events,
    });
    html(pages::page("lrpymrpc job", body))
}

/// A job's output after `?after=N` as server-sent events (`line`, each line's text;
/// `end`, how it ended), until it ends.
async fn job_events(
    Shared(page): Shared<Page>,
    Path((id, secret)): Path<(String, String)>,
    uri: axum::http::Uri,
) -> Response {
    let Some(spool) = job_spool(&page, &id, &secret) else { return not_found().await };
    let Ok(permit) = page.streams.clone().try_acquire_owned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many live views open; reload later\n").into_response();
    };
    let after = uri
        .query()
        .and_then(|query| query.split('&').find_map(|pair| pair.strip_prefix("after=")))
        .and_then(|after| after.parse::<u64>().ok())
        .unwrap_or(0);
    let mut records = page.state.spools.watch(spool.clone(), after);
    let (events, sent) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(64);
    tokio::spawn(async move {
        let _held = permit;
        let forward = async {
            while let Some(record) = records.recv().await {
                let Ok(record) = record else { continue };
                if events.send(Ok(Event::default().event("line").data(record.message))).await.is_err() {
                    return;
                }
            }
            let end = Event::default().event("end").data(job_state(&page, &spool));
            let _ = events.send(Ok(end)).await;
        };
        // A viewer that left frees its place at once, even while the job prints nothing.
        tokio::select! {
            _ = tokio::time::timeout(EVENT_STREAM_LIFETIME, forward) => {}
            () = events.closed() => {}
        }
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(sent)).into_response()
}
