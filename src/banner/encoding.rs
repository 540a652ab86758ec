//! Content codings: what the upstream sent (decoded, bounded) and what the client gets
//! (gzip or br at fast levels when it asked, identity otherwise).

use flate2::FlushCompress;
use std::io::{self, Write};

/// An upstream `Content-Encoding` the proxy can decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Identity,
    Gzip,
    Deflate,
    Br,
    Zstd,
}

impl Coding {
    /// `None`: an encoding the proxy does not know (or a stack of several): pass through.
    pub fn parse(value: Option<&str>) -> Option<Coding> {
        let v = value
            .map(|v| v.trim().to_ascii_lowercase())
            .unwrap_or_default();
        match v.as_str() {
            "" | "identity" => Some(Coding::Identity),
            "gzip" | "x-gzip" => Some(Coding::Gzip),
            "deflate" => Some(Coding::Deflate),
            "br" => Some(Coding::Br),
            "zstd" => Some(Coding::Zstd),
            _ => None,
        }
    }
}

/// What the client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutCoding {
    Identity,
    Gzip,
    Br,
}

impl OutCoding {
    pub fn header(self) -> Option<&'static str> {
        match self {
            OutCoding::Identity => None,
            OutCoding::Gzip => Some("gzip"),
            OutCoding::Br => Some("br"),
        }
    }
}

/// Picks br, then gzip, from `Accept-Encoding` (a coding with `q=0` is refused).
pub fn choose(accept_encoding: Option<&str>) -> OutCoding {
    let Some(ae) = accept_encoding else {
        return OutCoding::Identity;
    };
    let mut br = false;
    let mut gzip = false;
    let mut star = false;
    for item in ae.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
            })
            .next()
            .unwrap_or(1.0);
        let ok = q > 0.0;
        match name.as_str() {
            "br" => br = ok,
            "gzip" | "x-gzip" => gzip = ok,
            "*" => star = ok,
            _ => {}
        }
    }
    if br {
        OutCoding::Br
    } else if gzip || star {
        OutCoding::Gzip
    } else {
        OutCoding::Identity
    }
}

/// Compresses what the rewriter emits; `take` hands over what is ready (flushed, so the
/// client sees bytes while the upstream is still sending).
pub enum Encoder {
    Identity(Vec<u8>),
    /// zlib-ng writes the gzip header and trailer (CRC-32 fused with the compression) itself.
    Gzip(Box<(flate2::Compress, Vec<u8>)>),
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
}

impl Encoder {
    pub fn new(coding: OutCoding) -> Encoder {
        match coding {
            OutCoding::Identity => Encoder::Identity(Vec::new()),
            OutCoding::Gzip => Encoder::Gzip(Box::new((
                flate2::Compress::new_gzip(flate2::Compression::fast(), 15),
                Vec::new(),
            ))),
            // Quality 1, 22-bit window: the fast end of brotli, still smaller than gzip.
            OutCoding::Br => Encoder::Br(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                16 * 1024,
                1,
                22,
            ))),
        }
    }

    pub fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Encoder::Identity(v) => {
                v.extend_from_slice(data);
                Ok(())
            }
            Encoder::Gzip(g) => deflate(&mut g.0, &mut g.1, data, FlushCompress::None),
            Encoder::Br(e) => e.write_all(data),
        }
    }

    /// Flushes and returns the bytes ready so far.
    pub fn take(&mut self) -> io::Result<Vec<u8>> {
        match self {
            Encoder::Identity(v) => Ok(std::mem::take(v)),
            Encoder::Gzip(g) => {
                deflate(&mut g.0, &mut g.1, &[], FlushCompress::Sync)?;
                Ok(std::mem::take(&mut g.1))
            }
            Encoder::Br(e) => {
                e.flush()?;
                Ok(std::mem::take(e.get_mut()))
            }
        }
    }

    /// Ends the stream (trailers of gzip, the final brotli block).
    pub fn finish(self) -> io::Result<Vec<u8>> {
        match self {
            Encoder::Identity(v) => Ok(v),
            Encoder::Gzip(mut g) => {
                deflate(&mut g.0, &mut g.1, &[], FlushCompress::Finish)?;
                Ok(g.1)
            }
            Encoder::Br(e) => Ok(e.into_inner()),
        }
    }
}

/// Runs deflate over `input` into `out`, growing `out` as needed. With `Sync` or `Finish` it
/// returns once everything (and the sync marker or trailer) is out.
fn deflate(
    c: &mut flate2::Compress,
    out: &mut Vec<u8>,
    mut input: &[u8],
    flush: FlushCompress,
) -> io::Result<()> {
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(input.len() / 2 + 4096);
        }
        let before = c.total_in();
        let status = c
            .compress_vec(input, out, flush)
            .map_err(io::Error::other)?;
        input = &input[(c.total_in() - before) as usize..];
        let room_left = out.len() < out.capacity();
        match status {
            flate2::Status::StreamEnd => return Ok(()),
            // Everything consumed and deflate stopped with room to spare: the flush is done.
            _ if input.is_empty() && room_left && flush != FlushCompress::Finish => return Ok(()),
            flate2::Status::BufError if room_left => {
                return Err(io::Error::other("deflate made no progress"));
            }
            _ => {}
        }
    }
}

/// 8 MiB, the largest window an HTTP `zstd` body may use (RFC 9659).
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// A streaming decoder writing into `W`.
pub enum Decoder<W: Write> {
    Identity(W),
    Gzip(flate2::write::GzDecoder<W>),
    /// HTTP "deflate" is zlib-wrapped, but some servers send raw deflate: decided on the first
    /// two bytes.
    DeflatePending(Option<W>, Vec<u8>),
    Zlib(flate2::write::ZlibDecoder<W>),
    RawDeflate(flate2::write::DeflateDecoder<W>),
    Br(Box<brotli::DecompressorWriter<W>>),
    Zstd(zstd::stream::write::Decoder<'static, W>),
}

impl<W: Write> Decoder<W> {
    pub fn new(coding: Coding, sink: W) -> io::Result<Decoder<W>> {
        Ok(match coding {
            Coding::Identity => Decoder::Identity(sink),
            Coding::Gzip => Decoder::Gzip(flate2::write::GzDecoder::new(sink)),
            Coding::Deflate => Decoder::DeflatePending(Some(sink), Vec::new()),
            Coding::Br => Decoder::Br(Box::new(brotli::DecompressorWriter::new(sink, 16 * 1024))),
            Coding::Zstd => {
                let mut d = zstd::stream::write::Decoder::new(sink)?;
                // RFC 9659: the zstd content coding uses windows of at most 8 MiB. zstd's own
                // default would let a frame header make the decoder buffer up to 128 MiB.
                d.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
                Decoder::Zstd(d)
            }
        })
    }

    pub fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Decoder::Identity(w) => w.write_all(data),
            Decoder::Gzip(d) => d.write_all(data),
            Decoder::Zlib(d) => d.write_all(data),
            Decoder::RawDeflate(d) => d.write_all(data),
            Decoder::Br(d) => d.write_all(data),
            Decoder::Zstd(d) => d.write_all(data),
            Decoder::DeflatePending(sink, head) => {
                head.extend_from_slice(data);
                if head.len() < 2 {
                    return Ok(());
                }
                let sink = sink
                    .take()
                    .ok_or_else(|| io::Error::other("deflate decoder reused"))?;
                let (b0, b1) = (head[0], head[1]);
                let zlib = b0 & 0x0f == 8 && (u16::from(b0) << 8 | u16::from(b1)) % 31 == 0;
                let buffered = std::mem::take(head);
                *self = if zlib {
                    Decoder::Zlib(flate2::write::ZlibDecoder::new(sink))
                } else {
                    Decoder::RawDeflate(flate2::write::DeflateDecoder::new(sink))
                };
                self.write_all(&buffered)
            }
        }
    }

    /// The sink the decoded bytes go to.
    pub fn sink(&self) -> Option<&W> {
        match self {
            Decoder::Identity(s) => Some(s),
            Decoder::Gzip(d) => Some(d.get_ref()),
            Decoder::Zlib(d) => Some(d.get_ref()),
            Decoder::RawDeflate(d) => Some(d.get_ref()),
            Decoder::Br(d) => Some(d.get_ref()),
            Decoder::Zstd(d) => Some(d.get_ref()),
            Decoder::DeflatePending(s, _) => s.as_ref(),
        }
    }

    pub fn sink_mut(&mut self) -> Option<&mut W> {
        match self {
            Decoder::Identity(s) => Some(s),
            Decoder::Gzip(d) => Some(d.get_mut()),
            Decoder::Zlib(d) => Some(d.get_mut()),
            Decoder::RawDeflate(d) => Some(d.get_mut()),
            Decoder::Br(d) => Some(d.get_mut()),
            Decoder::Zstd(d) => Some(d.get_mut()),
            Decoder::DeflatePending(s, _) => s.as_mut(),
        }
    }

    /// Pushes out what the decoder holds (flate2 and zstd keep decoded bytes until the next
    /// write or a flush), so the client sees each upstream chunk as it comes.
    pub fn flush(&mut self) -> io::Result<()> {
        match self {
            Decoder::Identity(_) | Decoder::DeflatePending(..) => Ok(()),
            Decoder::Gzip(d) => d.flush(),
            Decoder::Zlib(d) => d.flush(),
            Decoder::RawDeflate(d) => d.flush(),
            Decoder::Br(d) => d.flush(),
            Decoder::Zstd(d) => d.flush(),
        }
    }

    /// Ends the compressed stream and returns the sink.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Decoder::Identity(w) => Ok(w),
            Decoder::Gzip(d) => d.finish(),
            Decoder::Zlib(d) => d.finish(),
            Decoder::RawDeflate(d) => d.finish(),
            Decoder::Br(d) => d
                .into_inner()
                .map_err(|_| io::Error::other("truncated brotli stream")),
            Decoder::Zstd(mut d) => {
                d.flush()?;
                Ok(d.into_inner())
            }
            Decoder::DeflatePending(sink, head) => {
                if head.is_empty() {
                    sink.ok_or_else(|| io::Error::other("deflate decoder reused"))
                } else {
                    Err(io::Error::other("truncated deflate stream"))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chooses_the_client_coding() {
        assert_eq!(choose(None), OutCoding::Identity);
        assert_eq!(choose(Some("gzip, deflate, br, zstd")), OutCoding::Br);
        assert_eq!(choose(Some("gzip")), OutCoding::Gzip);
        assert_eq!(choose(Some("br;q=0, gzip;q=0.5")), OutCoding::Gzip);
        assert_eq!(choose(Some("identity")), OutCoding::Identity);
        assert_eq!(choose(Some("gzip;q=0")), OutCoding::Identity);
        assert_eq!(choose(Some("*")), OutCoding::Gzip);
    }

    fn roundtrip(coding: Coding, compressed: &[u8]) -> Vec<u8> {
        let mut d = Decoder::new(coding, Vec::new()).expect("decoder");
        for chunk in compressed.chunks(7) {
            d.write_all(chunk).expect("write");
        }
        d.finish().expect("finish")
    }

    #[test]
    fn decodes_every_coding_in_small_chunks() {
        let text = b"<html><body>hello hello hello hello</body></html>".repeat(50);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&text).expect("gz");
        assert_eq!(roundtrip(Coding::Gzip, &gz.finish().expect("gz")), text);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&text).expect("zlib");
        assert_eq!(roundtrip(Coding::Deflate, &z.finish().expect("zlib")), text);
        let mut raw =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        raw.write_all(&text).expect("raw");
        assert_eq!(
            roundtrip(Coding::Deflate, &raw.finish().expect("raw")),
            text
        );
        let mut br = brotli::CompressorWriter::new(Vec::new(), 4096, 5, 22);
        br.write_all(&text).expect("br");
        assert_eq!(roundtrip(Coding::Br, &br.into_inner()), text);
        let zs = zstd::encode_all(&text[..], 3).expect("zstd");
        assert_eq!(roundtrip(Coding::Zstd, &zs), text);
    }

    #[test]
    fn encodes_streaming() {
        for coding in [OutCoding::Gzip, OutCoding::Br, OutCoding::Identity] {
            let mut e = Encoder::new(coding);
            let mut out = Vec::new();
            e.write_all(b"<p>one</p>").expect("w");
            let first = e.take().expect("take");
            assert!(!first.is_empty(), "{coding:?} flushes what it has");
            out.extend(first);
            e.write_all(b"<p>two</p>").expect("w");
            out.extend(e.finish().expect("finish"));
            let plain = match coding {
                OutCoding::Identity => out,
                OutCoding::Gzip => roundtrip(Coding::Gzip, &out),
                OutCoding::Br => roundtrip(Coding::Br, &out),
            };
            assert_eq!(plain, b"<p>one</p><p>two</p>");
        }
    }
}
