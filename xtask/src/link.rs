//! A slow link on loopback, for benchmarks of what a real network costs: a TCP proxy
//! that holds every byte for a fixed one-way delay in each direction (as a wide-area
//! link does), while passing as many bytes as the peers' flow control lets through.
//! This machine's kernel has no `netem`, so the delay is made in user space.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A proxy listening on `listen` (port 0: a free one) that forwards to `target` with
/// `one_way` delay; it serves connections until the process ends.
pub struct SlowLink {
    pub addr: SocketAddr,
}

impl SlowLink {
    pub fn start(listen: SocketAddr, target: SocketAddr, one_way: Duration) -> anyhow::Result<SlowLink> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(target) else { continue };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (Ok(client_read), Ok(server_read)) = (client.try_clone(), server.try_clone()) else { continue };
                std::thread::spawn(move || delay_line(client_read, server, one_way));
                std::thread::spawn(move || delay_line(server_read, client, one_way));
            }
        });
        Ok(SlowLink { addr })
    }
}

/// This machine's first IPv4 address that is not loopback (`hostname -I`), for a
/// client that must see its server as on another machine; `None` without one.
pub fn local_network_address() -> Option<std::net::IpAddr> {
    let output = std::process::Command::new("hostname").arg("-I").output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace()
        .filter_map(|word| word.parse::<std::net::IpAddr>().ok())
        .find(|ip| ip.is_ipv4() && !ip.is_loopback())
}

/// Copies `from` to `to`, each read delivered `delay` after it arrived, in order.
fn delay_line(mut from: TcpStream, to: TcpStream, delay: Duration) {
    // Bounded: a reader far ahead of the delay waits, and TCP pushes back on the sender.
    let (tx, rx) = mpsc::sync_channel::<(Instant, Vec<u8>)>(4096);
    let writer = std::thread::spawn(move || {
        let mut to = to;
        for (due, bytes) in rx {
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if to.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    let mut buffer = vec![0; 64 * 1024];
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send((Instant::now() + delay, buffer[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.join();
}
