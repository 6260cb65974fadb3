//! How a tar stream is compressed on the wire: gzip (the contract, what the Python
//! peers send and read), zstd (several times faster at a similar ratio, negotiated with
//! our own peers), or none (loopback, where compressing only costs time). One encoder
//! and one decoder type, so packers and unpackers take the encoding as a value.

use std::io::{self, BufReader, Read, Write};

use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;

use crate::pargz::ParallelGzEncoder;

/// A stream encoding, by its name on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    #[default]
    Gzip,
    Zstd,
    Identity,
}

impl Encoding {
    /// The name peers use: `gzip`, `zstd`, `identity`.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Gzip => "gzip",
            Encoding::Zstd => "zstd",
            Encoding::Identity => "identity",
        }
    }

    /// The encoding a name stands for; empty is gzip (what every peer speaks).
    pub fn from_name(name: &str) -> Option<Encoding> {
        match name {
            "" | "gzip" => Some(Encoding::Gzip),
            "zstd" => Some(Encoding::Zstd),
            "identity" => Some(Encoding::Identity),
            _ => None,
        }
    }

    /// Wraps `out`; `level` is gzip's 0-9 (zstd uses its fast level 1 whatever it is).
    /// gzip uses every core (up to four) for several members.
    pub fn encoder<W: Write>(self, out: W, level: u32) -> io::Result<Encoder<W>> {
        self.encoder_on(out, level, cores())
    }

    /// [`Encoding::encoder`] on `threads` threads for gzip: one writes one member
    /// inline, as plain gzip does (the right choice when the peer shares this machine's
    /// cores).
    pub fn encoder_on<W: Write>(self, out: W, level: u32, threads: usize) -> io::Result<Encoder<W>> {
        Ok(match self {
            Encoding::Gzip if threads <= 1 => Encoder::Gzip(GzEncoder::new(out, Compression::new(level.min(9)))),
            Encoding::Gzip => {
                Encoder::ParallelGzip(ParallelGzEncoder::new(out, Compression::new(level.min(9)), threads))
            }
            Encoding::Zstd => Encoder::Zstd(zstd::Encoder::new(out, 1)?),
            Encoding::Identity => Encoder::Identity(out),
        })
    }

    pub fn decoder<R: Read>(self, input: R) -> io::Result<Decoder<R>> {
        Ok(match self {
            Encoding::Gzip => Decoder::Gzip(Box::new(MultiGzDecoder::new(input))),
            Encoding::Zstd => Decoder::Zstd(zstd::Decoder::new(input)?),
            Encoding::Identity => Decoder::Identity(input),
        })
    }
}

/// The cores to compress on: every one, up to four.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(4)
}

/// A compressing writer; [`Encoder::finish`] writes the stream's trailer.
pub enum Encoder<W: Write> {
    Gzip(GzEncoder<W>),
    /// Members compressed on several threads (`pargz.rs`).
    ParallelGzip(ParallelGzEncoder<W>),
    Zstd(zstd::Encoder<'static, W>),
    Identity(W),
}

impl<W: Write> Encoder<W> {
    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Gzip(encoder) => encoder.finish(),
            Encoder::ParallelGzip(encoder) => encoder.finish(),
            Encoder::Zstd(encoder) => encoder.finish(),
            Encoder::Identity(out) => Ok(out),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Gzip(encoder) => encoder.write(buf),
            Encoder::ParallelGzip(encoder) => encoder.write(buf),
            Encoder::Zstd(encoder) => encoder.write(buf),
            Encoder::Identity(out) => out.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Gzip(encoder) => encoder.flush(),
            Encoder::ParallelGzip(encoder) => encoder.flush(),
            Encoder::Zstd(encoder) => encoder.flush(),
            Encoder::Identity(out) => out.flush(),
        }
    }
}

/// A decompressing reader.
pub enum Decoder<R: Read> {
    /// Boxed: gzip's state is several times the others'. Several members read as one
    /// stream, as parallel gzip writes them.
    Gzip(Box<MultiGzDecoder<R>>),
    Zstd(zstd::Decoder<'static, BufReader<R>>),
    Identity(R),
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Gzip(decoder) => decoder.read(buf),
            Decoder::Zstd(decoder) => decoder.read(buf),
            Decoder::Identity(input) => input.read(buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_encoding_round_trips_and_names_parse_back() {
        let data: Vec<u8> = (0..100_000u32).flat_map(|n| (n % 251).to_le_bytes()).collect();
        for encoding in [Encoding::Gzip, Encoding::Zstd, Encoding::Identity] {
            assert_eq!(Encoding::from_name(encoding.name()), Some(encoding));
            let mut encoder = encoding.encoder_on(Vec::new(), 1, 3).unwrap();
            encoder.write_all(&data).unwrap();
            let encoded = encoder.finish().unwrap();
            let mut decoded = Vec::new();
            encoding.decoder(&encoded[..]).unwrap().read_to_end(&mut decoded).unwrap();
            assert_eq!(decoded, data, "{}", encoding.name());
        }
        assert_eq!(Encoding::from_name(""), Some(Encoding::Gzip));
        assert_eq!(Encoding::from_name("br"), None);
    }
}
