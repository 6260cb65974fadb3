//! The single bridge between blocking archive I/O (`Read`/`Write`, tar, flate2) and
//! the async gRPC streams: a `Write` that hands out fixed-size chunks through a
//! bounded channel, a `Read` that consumes chunks from one, and [`feed`], the one loop
//! that moves chunks from the network into that `Read` (both peers use it). The
//! channel bound is what keeps memory flat however large the archive is.

use std::fmt::Display;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};

/// A chunk travelling from the network to a [`ChunkReader`]; an `Err` ends the
/// stream with the network's error instead of a clean end of file.
pub type IncomingChunk = Result<Vec<u8>, io::Error>;

/// How many chunks may wait in a channel: a few MiB in flight at most.
pub const CHANNEL_CHUNKS: usize = 4;

/// A `Write` that cuts its bytes into chunks of `chunk_size` and sends each through a
/// bounded channel, blocking while the channel is full. Must be used off the async
/// runtime (`spawn_blocking`). Call [`ChunkWriter::finish`] to send the last chunk.
pub struct ChunkWriter {
    sender: mpsc::Sender<Vec<u8>>,
    pending: Vec<u8>,
    chunk_size: usize,
    bytes_sent: u64,
}

impl ChunkWriter {
    pub fn new(sender: mpsc::Sender<Vec<u8>>, chunk_size: usize) -> Self {
        assert!(chunk_size > 0, "chunk size must be positive");
        Self { sender, pending: Vec::with_capacity(chunk_size), chunk_size, bytes_sent: 0 }
    }

    /// Sends what is left and returns the number of bytes sent in all.
    pub fn finish(mut self) -> io::Result<u64> {
        if !self.pending.is_empty() {
            let last = std::mem::take(&mut self.pending);
            self.send(last)?;
        }
        Ok(self.bytes_sent)
    }

    fn send(&mut self, chunk: Vec<u8>) -> io::Result<()> {
        self.bytes_sent += chunk.len() as u64;
        self.sender.blocking_send(chunk).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the stream was closed"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let written = data.len();
        while !data.is_empty() {
            let room = self.chunk_size - self.pending.len();
            let (now, later) = data.split_at(room.min(data.len()));
            self.pending.extend_from_slice(now);
            data = later;
            if self.pending.len() == self.chunk_size {
                let full = std::mem::replace(&mut self.pending, Vec::with_capacity(self.chunk_size));
                self.send(full)?;
            }
        }
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Chunks leave when full or at `finish`; a flush must not send tiny messages.
        Ok(())
    }
}

/// A `Read` over chunks arriving through a channel. Must be used off the async
/// runtime. A sender that is dropped ends the stream; an `Err` chunk fails the read.
pub struct ChunkReader {
    receiver: mpsc::Receiver<IncomingChunk>,
    current: Vec<u8>,
    offset: usize,
}

impl ChunkReader {
    pub fn new(receiver: mpsc::Receiver<IncomingChunk>) -> Self {
        Self { receiver, current: Vec::new(), offset: 0 }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.offset == self.current.len() {
            match self.receiver.blocking_recv() {
                None => return Ok(0),
                Some(Err(error)) => return Err(error),
                Some(Ok(chunk)) => {
                    self.current = chunk;
                    self.offset = 0;
                }
            }
        }
        let n = buf.len().min(self.current.len() - self.offset);
        buf[..n].copy_from_slice(&self.current[self.offset..self.offset + n]);
        self.offset += n;
        Ok(n)
    }
}

/// How feeding a [`ChunkReader`] from the network ended.
#[derive(Debug)]
pub enum Fed<E> {
    /// The stream ended cleanly: the reader sees the end of the data.
    Complete,
    /// The stream failed with this error: the reader sees a read error.
    Failed(E),
    /// Nothing arrived for the idle limit: the reader sees a read error.
    Stalled,
    /// Less than the minimum rate arrived (a trickle that never idles): the reader
    /// sees a read error.
    TooSlow,
    /// The reader stopped first (it refused the data); its own error says why.
    ReaderStopped,
}

/// How fast a peer must send: something every `idle` (when set), and past `grace`, at
/// least `min_bytes_per_second` on average since the start (0: no rate). A trickle of
/// 16 bytes every few seconds never idles, but holds what it holds for hours; the rate
/// cuts it. The one place that decides whether an incoming stream is too slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    pub idle: Option<Duration>,
    pub min_bytes_per_second: u64,
    pub grace: Duration,
}

impl Pace {
    /// No limit at all.
    pub const UNBOUNDED: Pace = Pace { idle: None, min_bytes_per_second: 0, grace: Duration::ZERO };

    /// Only an idle limit.
    pub fn idle(limit: Duration) -> Pace {
        Pace { idle: Some(limit), min_bytes_per_second: 0, grace: Duration::ZERO }
    }

    /// Whether `bytes` received since `started` are fewer than the rate asks for now.
    pub fn too_slow(&self, started: Instant, bytes: u64) -> bool {
        let elapsed = started.elapsed();
        if self.min_bytes_per_second == 0 || elapsed < self.grace {
            return false;
        }
        let wanted = u128::from(self.min_bytes_per_second) * elapsed.as_millis() / 1000;
        u128::from(bytes) < wanted
    }

    /// How long to wait for the next piece: the idle limit, and no longer than until
    /// the rate could next be missed (its check then runs even while nothing comes).
    pub fn wait(&self) -> Option<Duration> {
        match (self.idle, self.min_bytes_per_second) {
            (idle, 0) => idle,
            (Some(idle), _) => Some(idle.min(self.grace.max(Duration::from_secs(1)))),
            (None, _) => Some(self.grace.max(Duration::from_secs(1))),
        }
    }
}

/// Moves chunks from `incoming` (the network) into `chunks` (a [`ChunkReader`]'s
/// channel) until the stream ends, fails, stalls or trickles ([`Pace`]), or the reader
/// stops. The reader sees a clean end of file only after a clean end of stream.
pub async fn feed<S, E>(incoming: S, chunks: mpsc::Sender<IncomingChunk>, pace: Pace) -> Fed<E>
where
    S: Stream<Item = Result<Vec<u8>, E>>,
    E: Display,
{
    tokio::pin!(incoming);
    let started = Instant::now();
    let (mut bytes, mut last) = (0u64, Instant::now());
    loop {
        if pace.too_slow(started, bytes) {
            let slow = io::Error::new(io::ErrorKind::TimedOut, "the peer sends too slowly");
            let _ = chunks.send(Err(slow)).await;
            return Fed::TooSlow;
        }
        let next = match pace.wait() {
            Some(limit) => match tokio::time::timeout(limit, incoming.next()).await {
                Ok(next) => next,
                Err(_) if pace.idle.is_some_and(|idle| last.elapsed() >= idle) => {
                    let stalled = io::Error::new(io::ErrorKind::TimedOut, "the peer stopped sending");
                    let _ = chunks.send(Err(stalled)).await;
                    return Fed::Stalled;
                }
                Err(_) => continue,
            },
            None => incoming.next().await,
        };
        match next {
            None => return Fed::Complete,
            Some(Ok(chunk)) => {
                bytes += chunk.len() as u64;
                last = Instant::now();
                if chunks.send(Ok(chunk)).await.is_err() {
                    return Fed::ReaderStopped;
                }
            }
            Some(Err(error)) => {
                let _ = chunks.send(Err(io::Error::other(format!("the peer stopped sending: {error}")))).await;
                return Fed::Failed(error);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_cuts_exact_chunks_and_sends_the_rest_on_finish() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut writer = ChunkWriter::new(tx, 4);
        writer.write_all(b"abcdefghij").unwrap();
        assert_eq!(writer.finish().unwrap(), 10);
        let mut chunks = Vec::new();
        while let Ok(chunk) = rx.try_recv() {
            chunks.push(chunk);
        }
        assert_eq!(chunks, vec![b"abcd".to_vec(), b"efgh".to_vec(), b"ij".to_vec()]);
    }

    #[test]
    fn writer_reports_a_closed_stream() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let mut writer = ChunkWriter::new(tx, 2);
        let error = writer.write_all(b"abcd").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::BrokenPipe);
    }

    #[tokio::test]
    async fn feed_ends_as_the_stream_ends_and_the_reader_sees_why() {
        let (tx, mut rx) = mpsc::channel(16);
        let items = vec![Ok::<_, String>(b"a".to_vec()), Ok(b"b".to_vec())];
        assert!(matches!(feed(tokio_stream::iter(items), tx, Pace::UNBOUNDED).await, Fed::Complete));
        assert_eq!(
            (rx.recv().await.unwrap().unwrap(), rx.recv().await.unwrap().unwrap()),
            (b"a".to_vec(), b"b".to_vec())
        );
        assert!(rx.recv().await.is_none(), "a clean end");

        let (tx, mut rx) = mpsc::channel(16);
        let items = vec![Ok(b"a".to_vec()), Err("reset".to_string())];
        assert!(matches!(feed(tokio_stream::iter(items), tx, Pace::UNBOUNDED).await, Fed::Failed(e) if e == "reset"));
        rx.recv().await.unwrap().unwrap();
        assert!(rx.recv().await.unwrap().unwrap_err().to_string().contains("reset"));

        let (tx, mut rx) = mpsc::channel(16);
        let stalled = tokio_stream::pending::<Result<Vec<u8>, String>>();
        assert!(matches!(feed(stalled, tx, Pace::idle(Duration::from_millis(20))).await, Fed::Stalled));
        assert_eq!(rx.recv().await.unwrap().unwrap_err().kind(), io::ErrorKind::TimedOut);

        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let items = vec![Ok::<_, String>(b"a".to_vec())];
        assert!(matches!(feed(tokio_stream::iter(items), tx, Pace::UNBOUNDED).await, Fed::ReaderStopped));
    }
    #[tokio::test]
    async fn feeding_cuts_a_trickle_that_never_idles() {
        let (tx, _rx) = mpsc::channel(64);
        // 1 byte every 5 ms never idles for 50 ms, but is far below 10 KB/s.
        let trickle = tokio_stream::iter(0..1000).then(|_| async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok::<_, String>(vec![0u8])
        });
        let pace = Pace {
            idle: Some(Duration::from_millis(50)),
            min_bytes_per_second: 10_000,
            grace: Duration::from_millis(100),
        };
        assert!(matches!(feed(trickle, tx, pace).await, Fed::TooSlow));
        let fast = Pace { min_bytes_per_second: 10, ..pace };
        let started = Instant::now() - Duration::from_secs(2);
        assert!(!fast.too_slow(started, 20) && fast.too_slow(started, 19));
        assert!(!pace.too_slow(Instant::now(), 0), "not within the grace");
    }

    #[test]
    fn reader_joins_chunks_and_surfaces_network_errors() {
        let (tx, rx) = mpsc::channel(16);
        tx.try_send(Ok(b"ab".to_vec())).unwrap();
        tx.try_send(Ok(Vec::new())).unwrap();
        tx.try_send(Ok(b"c".to_vec())).unwrap();
        tx.try_send(Err(io::Error::other("connection reset"))).unwrap();
        let mut reader = ChunkReader::new(rx);
        let mut got = Vec::new();
        let error = reader.read_to_end(&mut got).unwrap_err();
        assert_eq!(got, b"abc");
        assert_eq!(error.to_string(), "connection reset");
    }
}
