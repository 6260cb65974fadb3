//! A small TCP fault proxy for tests: it forwards connections to a server and can cut
//! them after a number of bytes in either direction, reset them, or cut every
//! connection on demand. Bounded: it lives on the fixture's runtime and stops with it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What happens to each connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fault {
    /// Close both sides after this many bytes from the client.
    pub cut_up_after: Option<u64>,
    /// Close both sides after this many bytes from the server.
    pub cut_down_after: Option<u64>,
}

/// A running proxy; drop the runtime to stop it.
#[derive(Debug, Clone)]
pub struct FaultProxy {
    pub addr: SocketAddr,
    cut: watch::Sender<u64>,
    refusing: Arc<AtomicBool>,
    /// New connections are accepted but not forwarded while this is true, as through a
    /// network that went quiet.
    holding: watch::Sender<bool>,
    connections: Arc<AtomicU64>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `server` with `fault` applied
    /// to every connection.
    pub fn start(runtime: &tokio::runtime::Runtime, server: SocketAddr, fault: Fault) -> FaultProxy {
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let (cut, _) = watch::channel(0);
        let (holding, _) = watch::channel(false);
        let proxy = FaultProxy {
            addr: listener.local_addr().unwrap(),
            cut,
            holding,
            refusing: Arc::new(AtomicBool::new(false)),
            connections: Arc::new(AtomicU64::new(0)),
        };
        let running = proxy.clone();
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if running.refusing.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                running.connections.fetch_add(1, Ordering::SeqCst);
                let cut = running.cut.subscribe();
                let mut holding = running.holding.subscribe();
                tokio::spawn(async move {
                    // Held: nothing moves until released (the client may give up first).
                    let _ = holding.wait_for(|held| !held).await;
                    forward(client, server, fault, cut).await;
                });
            }
        });
        proxy
    }

    /// Cuts every open connection now and refuses new ones from now on.
    pub fn cut_everything(&self) {
        self.refusing.store(true, Ordering::SeqCst);
        self.cut.send_modify(|generation| *generation += 1);
    }

    /// Cuts every open connection now; new ones are still forwarded.
    pub fn cut_connections(&self) {
        self.cut.send_modify(|generation| *generation += 1);
    }

    /// Cuts every open connection and holds new ones (accepted, nothing forwarded)
    /// until [`FaultProxy::release`]: a network gone quiet, not a refusing server.
    pub fn go_quiet(&self) {
        self.holding.send_replace(true);
        self.cut_connections();
    }

    /// Forwards held and new connections again.
    pub fn release(&self) {
        self.holding.send_replace(false);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn forward(client: TcpStream, server: SocketAddr, fault: Fault, mut cut: watch::Receiver<u64>) {
    let Ok(upstream) = TcpStream::connect(server).await else { return };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = upstream.into_split();
    let up = pump(&mut client_read, &mut server_write, fault.cut_up_after);
    let down = pump(&mut server_read, &mut client_write, fault.cut_down_after);
    // Whichever ends first (a cut, a close, or the test's signal) ends both directions.
    tokio::select! {
        () = up => {}
        () = down => {}
        _ = cut.changed() => {}
    }
}

async fn pump(from: &mut (impl AsyncReadExt + Unpin), to: &mut (impl AsyncWriteExt + Unpin), limit: Option<u64>) {
    let mut buffer = vec![0u8; 16 * 1024];
    let mut moved = 0u64;
    loop {
        let room = limit.map_or(buffer.len() as u64, |limit| (limit - moved).min(buffer.len() as u64)) as usize;
        if room == 0 {
            return;
        }
        let read = match from.read(&mut buffer[..room]).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
        moved += read as u64;
    }
}
