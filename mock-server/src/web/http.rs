//! The server's one HTTP stack, for every page it serves beside gRPC (the status page,
//! `/metrics`): axum routers on hyper's HTTP/1.1, one request per connection, over TLS
//! when given. Bounded the same way for each listener: at most `connections` open at
//! once, and when every place is taken the connection that has been waiting longest
//! for its request head (a slowloris, or an idle socket) is closed to make room, so
//! idle connections cannot keep a reader out (logged at most once a second, with the
//! count); a time limit on the TLS handshake and on the request head; a request head
//! larger than `max_head_bytes` is refused (431).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::warn;

use crate::net::listener::ClosedAtCap;

/// One listener's bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How logs name the listener.
    pub what: &'static str,
    /// Connections open at once.
    pub connections: usize,
    /// The TLS handshake's and the request head's time limit.
    pub request_timeout: Duration,
    /// The most bytes of a request head.
    pub max_head_bytes: usize,
}

/// Connections still waiting for their request head, oldest first.
type Waiting = Mutex<Vec<(u64, tokio::sync::oneshot::Sender<()>)>>;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Serves `router` on `listener` (through `tls` when given) until the task is dropped.
pub async fn serve(listener: TcpListener, router: Router, tls: Option<tokio_rustls::TlsAcceptor>, limits: Limits) {
    let open = Arc::new(Semaphore::new(limits.connections.max(1)));
    let waiting: Arc<Waiting> = Arc::default();
    let pushed_out: Arc<Mutex<ClosedAtCap>> = Arc::default();
    let mut next_id = 0u64;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                // Out of descriptors, say: a moment, not a busy loop.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // Full: the oldest connection still waiting for its request makes room.
        let permit = match open.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let oldest = {
                    let mut waiting = lock(&waiting);
                    (!waiting.is_empty()).then(|| waiting.remove(0))
                };
                let Some((_, close)) = oldest else { continue };
                let _ = close.send(());
                match tokio::time::timeout(Duration::from_millis(200), open.clone().acquire_owned()).await {
                    Ok(Ok(permit)) => permit,
                    _ => continue,
                }
            }
        };
        next_id += 1;
        let id = next_id;
        let (close, closed) = tokio::sync::oneshot::channel();
        lock(&waiting).push((id, close));
        let (router, tls, waiting, pushed_out) = (router.clone(), tls.clone(), waiting.clone(), pushed_out.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let served = async {
                match tls {
                    Some(tls) => match tokio::time::timeout(limits.request_timeout, tls.accept(stream)).await {
                        Ok(Ok(stream)) => serve_connection(stream, router, waiting.clone(), id, limits).await,
                        _ => warn!(peer = %peer, "{} handshake failed or too slow", limits.what),
                    },
                    None => serve_connection(stream, router, waiting.clone(), id, limits).await,
                }
            };
            tokio::select! {
                () = served => {}
                // (Its sender is dropped once the request head is read: not a push.)
                Ok(()) = closed => {
                    let reason = format!("{} full: pushed out by a newer connection", limits.what);
                    lock(&pushed_out).note_as(peer, &reason, "connection closed before its request");
                }
            }
            lock(&waiting).retain(|(waiting, _)| *waiting != id);
        });
    }
}

/// One request on `stream`; the connection counts as waiting until its head is read.
async fn serve_connection<S>(stream: S, router: Router, waiting: Arc<Waiting>, id: u64, limits: Limits)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let router = hyper_util::service::TowerToHyperService::new(router);
    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        // The head is read: this connection is no longer one to push out.
        lock(&waiting).retain(|(waiting, _)| *waiting != id);
        hyper::service::Service::call(&router, request)
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.request_timeout)
        .max_buf_size(limits.max_head_bytes.max(8192))
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    let _ = connection.await;
}

/// Binds an address for one of these listeners.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}
