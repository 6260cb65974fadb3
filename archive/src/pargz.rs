//! Parallel gzip: the stream is cut into blocks, each compressed as a gzip member of its
//! own on a thread of its own, and the members are written in order. RFC 1952 allows a
//! stream of several members; gzip, Python's `gzip` and `tarfile`, and flate2's
//! `MultiGzDecoder` read them as one. Deflate's window is 32 KiB, so blocks of 256 KiB
//! cost a fraction of a percent in size; two blocks in flight keep both cores of a
//! small build machine busy at a bounded memory cost.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::thread::JoinHandle;

use flate2::Compression;
use flate2::write::GzEncoder;

/// Bytes compressed as one member.
const BLOCK_BYTES: usize = 256 * 1024;

pub struct ParallelGzEncoder<W: Write> {
    out: W,
    level: Compression,
    block: Vec<u8>,
    /// Members being compressed, oldest first.
    in_flight: VecDeque<JoinHandle<io::Result<Vec<u8>>>>,
    max_in_flight: usize,
}

impl<W: Write> ParallelGzEncoder<W> {
    pub fn new(out: W, level: Compression, threads: usize) -> ParallelGzEncoder<W> {
        ParallelGzEncoder {
            out,
            level,
            block: Vec::with_capacity(BLOCK_BYTES),
            in_flight: VecDeque::new(),
            max_in_flight: threads.max(1),
        }
    }

    /// Hands the current block to a thread; writes the oldest member when too many
    /// are in flight.
    fn dispatch(&mut self) -> io::Result<()> {
        if self.block.is_empty() {
            return Ok(());
        }
        while self.in_flight.len() >= self.max_in_flight {
            self.write_oldest()?;
        }
        let block = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK_BYTES));
        let level = self.level;
        self.in_flight.push_back(std::thread::spawn(move || {
            let mut encoder = GzEncoder::new(Vec::with_capacity(block.len() / 2), level);
            encoder.write_all(&block)?;
            encoder.finish()
        }));
        Ok(())
    }

    fn write_oldest(&mut self) -> io::Result<()> {
        let Some(worker) = self.in_flight.pop_front() else { return Ok(()) };
        let member = worker.join().map_err(|_| io::Error::other("a compressing thread panicked"))??;
        self.out.write_all(&member)
    }

    /// Compresses what is left, writes every member in order, and returns the output.
    /// An empty stream is still one (empty) member, as gzip writes it.
    pub fn finish(mut self) -> io::Result<W> {
        let nothing_written = self.block.is_empty() && self.in_flight.is_empty();
        self.dispatch()?;
        while !self.in_flight.is_empty() {
            self.write_oldest()?;
        }
        if nothing_written {
            let empty = GzEncoder::new(Vec::new(), self.level).finish()?;
            self.out.write_all(&empty)?;
        }
        Ok(self.out)
    }
}

impl<W: Write> Write for ParallelGzEncoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let take = buf.len().min(BLOCK_BYTES - self.block.len());
        self.block.extend_from_slice(&buf[..take]);
        if self.block.len() == BLOCK_BYTES {
            self.dispatch()?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use flate2::read::MultiGzDecoder;

    use super::*;

    #[test]
    fn members_read_back_as_one_stream_in_order() {
        let data: Vec<u8> = (0..3_000_000u32).map(|n| (n % 7919 % 256) as u8).collect();
        for (bytes, threads) in [(&data[..], 2), (&data[..1000], 3), (&[][..], 2)] {
            let mut encoder = ParallelGzEncoder::new(Vec::new(), Compression::new(1), threads);
            for piece in bytes.chunks(70_000) {
                encoder.write_all(piece).unwrap();
            }
            let encoded = encoder.finish().unwrap();
            let mut decoded = Vec::new();
            MultiGzDecoder::new(&encoded[..]).read_to_end(&mut decoded).unwrap();
            assert_eq!(decoded, bytes);
        }
    }
}
