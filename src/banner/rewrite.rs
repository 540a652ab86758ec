//! The streaming splice: upstream bytes -> decoder -> lol_html (banner after `<body …>`,
//! `<meta>` CSP edited) -> encoder -> client bytes, one upstream chunk at a time.

use crate::banner::csp;
use crate::banner::encoding::{Coding, Decoder, Encoder, OutCoding};
use crate::banner::nonce::Nonce;
use crate::sync::lock;
use lol_html::html_content::ContentType;
use lol_html::html_content::Element;
use lol_html::send::SendHandlerTypes;
use lol_html::send::{HtmlRewriter, Settings};
use lol_html::{ElementContentHandlers, MemorySettings, OutputSink, Selector};
use std::borrow::Cow;
use std::io::{self, Write};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// lol_html's own buffer limit: a tag or attribute larger than this stops the rewriting; the
/// rest of the page passes through unchanged (graceful bail-out).
const REWRITER_MEMORY: usize = 4 * 1024 * 1024;
/// Decoded bytes one upstream chunk may become: `EXPANSION_BURST` plus `MAX_RATIO` times the
/// compressed bytes of the chunk handed to the decoder so far, and never more than
/// `MAX_EXPANSION_PER_CHUNK`. More is a decompression bomb and ends the response.
///
/// Why per chunk, and this small: a body filter gives the client one buffer per upstream
/// chunk, so for a client that takes no encoding every decoded byte of a chunk is held at
/// once. With a flat 32 MiB per chunk, one impersonated gzip bomb grew the proxy's RSS by
/// 74 MB and 16 at once by 295 MB, and the allocator kept it after the responses were cut
/// off. Checked whenever the decoder writes (at most 32 KiB at a time) while it is fed
/// `DECODE_SLICE`s, a gzip bomb (deflate reaches 1032:1) is now cut after about 300 KiB.
/// Honest HTML stays below: rustdoc's most repetitive pages (40:1 with gzip -9) decode at most
/// 2.5 MiB from a 64 KiB chunk, Pingora's read size, and a table numbering every row 3 MiB
/// (47:1). 100:1 is also Envoy's default `max_inflate_ratio`. And an honest upstream rarely
/// compresses these pages at all: impersonated document requests ask it for identity.
const EXPANSION_BURST: usize = 256 * 1024;
const MAX_RATIO: usize = 100;
pub const MAX_EXPANSION_PER_CHUNK: usize = 4 * 1024 * 1024;
/// Compressed bytes handed to the decoder at a time, so that the ratio is checked against
/// what it has actually been given.
const DECODE_SLICE: usize = 1024;
/// How much the rewriter is fed at a time (it is ended right after `<body>`).
const REWRITE_SLICE: usize = 1024;
/// Decoded bytes allowed per response.
pub const MAX_DECODED: u64 = 2 * 1024 * 1024 * 1024;

type SendElement<'r, 't> = Element<'r, 't, SendHandlerTypes>;

/// The selectors, parsed once per process instead of once per response.
struct Selectors {
    meta: Selector,
    body: Selector,
}

static SELECTORS: LazyLock<Result<Selectors, String>> = LazyLock::new(|| {
    let parse = |s: &str| {
        s.parse::<Selector>()
            .map_err(|e| format!("selector {s:?}: {e}"))
    };
    Ok(Selectors {
        meta: parse("meta[http-equiv]")?,
        body: parse("body")?,
    })
});

#[derive(Debug, thiserror::Error)]
pub enum SpliceError {
    #[error("decompression bomb: the body expands beyond the proxy's limit")]
    Bomb,
    #[error("the upstream body is not valid {0:?}: {1}")]
    Decode(Coding, io::Error),
    #[error("rewriting failed: {0}")]
    Rewrite(String),
}

/// Renders the banner markup, given the script nonce when the page's CSP needs one.
pub type RenderBanner = Box<dyn Fn(Option<&str>) -> String + Send + Sync>;

/// What the banner handler needs; the markup is rendered when `<body>` is reached, because a
/// `<meta>` CSP in the head may still ask for the script nonce.
pub struct Splice {
    pub render: RenderBanner,
    pub authority: String,
    pub nonce: Nonce,
    /// Set when the CSP headers already need the nonce on the script.
    pub script_nonce: bool,
}

struct ToEncoder(Arc<Mutex<Encoder>>);

impl OutputSink for ToEncoder {
    fn handle_chunk(&mut self, chunk: &[u8]) {
        // An encoder error surfaces at `take()`/`finish()`; here it can only be held.
        let _ = lock(&self.0).write_all(chunk);
    }
}

/// The decoder's sink: counts, enforces the limits, feeds the rewriter (or, after a bail-out,
/// the encoder directly).
struct RewriteSink {
    rewriter: Option<HtmlRewriter<'static, ToEncoder>>,
    encoder: Arc<Mutex<Encoder>>,
    /// Set by the `<body>` handler: nothing after the banner needs parsing.
    inserted: Arc<AtomicBool>,
    /// Compressed bytes of the current upstream chunk handed to the decoder so far.
    chunk_in: usize,
    /// Decoded bytes of the current upstream chunk.
    chunk_out: usize,
    total: u64,
    bomb: bool,
    error: Option<String>,
}

impl Write for RewriteSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.chunk_out += buf.len();
        self.total += buf.len() as u64;
        let allowed = MAX_RATIO
            .saturating_mul(self.chunk_in)
            .saturating_add(EXPANSION_BURST)
            .min(MAX_EXPANSION_PER_CHUNK);
        if self.chunk_out > allowed || self.total > MAX_DECODED {
            self.bomb = true;
            return Err(io::Error::other("decompression limit"));
        }
        // Fed in slices, so that the rewriter stops soon after `<body>` even when the whole
        // page arrives in one chunk.
        let mut rest = buf;
        while let Some(r) = &mut self.rewriter {
            if rest.is_empty() {
                return Ok(buf.len());
            }
            let (slice, tail) = rest.split_at(rest.len().min(REWRITE_SLICE));
            rest = tail;
            if let Err(e) = r.write(slice) {
                // Memory limit with graceful bail-out: lol_html has flushed what it held;
                // the rest passes unchanged.
                tracing::warn!(error = %e, "banner rewriter bailed out; passing the rest through");
                crate::metrics::METRICS
                    .banner_skipped
                    .with_label_values(&["rewriter_bailout"])
                    .inc();
                self.rewriter = None;
                if !matches!(e, lol_html::errors::RewritingError::MemoryLimitExceeded(_)) {
                    self.error = Some(e.to_string());
                    return Err(io::Error::other("rewriter error"));
                }
            } else if self.inserted.load(Ordering::Relaxed) {
                // The banner is in and every rewrite happens at or before `<body>`: end the
                // rewriter (it emits what it still buffers, unchanged) and pass the rest of
                // the page straight through instead of parsing it.
                if let Some(r) = self.rewriter.take() {
                    r.end().map_err(|e| {
                        self.error = Some(e.to_string());
                        io::Error::other("rewriter error")
                    })?;
                }
            }
        }
        if !rest.is_empty() {
            lock(&self.encoder).write_all(rest)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub struct BannerStream {
    decoder: Option<Decoder<RewriteSink>>,
    encoder: Arc<Mutex<Encoder>>,
    coding: Coding,
    inserted: Arc<AtomicBool>,
}

impl BannerStream {
    pub fn new(coding: Coding, out: OutCoding, splice: Splice) -> io::Result<BannerStream> {
        let selectors = SELECTORS
            .as_ref()
            .map_err(|e| io::Error::other(e.clone()))?;
        let encoder = Arc::new(Mutex::new(Encoder::new(out)));
        let inserted = Arc::new(AtomicBool::new(false));
        let needs_nonce = Arc::new(AtomicBool::new(splice.script_nonce));
        let splice = Arc::new(splice);

        let (meta_splice, meta_nonce) = (splice.clone(), needs_nonce.clone());
        let (body_splice, body_nonce, body_inserted) =
            (splice.clone(), needs_nonce, inserted.clone());
        let settings = Settings::new_send()
            .append_element_content_handler((
                Cow::Borrowed(&selectors.meta),
                ElementContentHandlers::default().element(move |el: &mut SendElement| {
                    let is_csp = el
                        .get_attribute("http-equiv")
                        .is_some_and(|v| v.trim().eq_ignore_ascii_case("content-security-policy"));
                    if is_csp && let Some(content) = el.get_attribute("content") {
                        let edited =
                            csp::edit(&content, &meta_splice.authority, meta_splice.nonce.get());
                        if edited.script_nonce {
                            meta_nonce.store(true, Ordering::Relaxed);
                        }
                        el.set_attribute("content", &edited.policy)?;
                    }
                    Ok(())
                }),
            ))
            .append_element_content_handler((
                Cow::Borrowed(&selectors.body),
                ElementContentHandlers::default().element(move |el: &mut SendElement| {
                    if !body_inserted.swap(true, Ordering::Relaxed) {
                        let nonce = body_nonce
                            .load(Ordering::Relaxed)
                            .then(|| body_splice.nonce.get())
                            .flatten();
                        el.prepend(&(body_splice.render)(nonce), ContentType::Html);
                    }
                    Ok(())
                }),
            ))
            .with_memory_settings(
                MemorySettings::new()
                    .with_max_allowed_memory_usage(REWRITER_MEMORY)
                    .with_graceful_bail_out_on_memory_limit_exceeded(true),
            );
        let rewriter = HtmlRewriter::new(settings, ToEncoder(encoder.clone()));
        let sink = RewriteSink {
            rewriter: Some(rewriter),
            encoder: encoder.clone(),
            inserted: inserted.clone(),
            chunk_in: 0,
            chunk_out: 0,
            total: 0,
            bomb: false,
            error: None,
        };
        Ok(BannerStream {
            decoder: Some(Decoder::new(coding, sink)?),
            encoder,
            coding,
            inserted,
        })
    }

    pub fn inserted(&self) -> bool {
        self.inserted.load(Ordering::Relaxed)
    }

    fn classify(&mut self, e: io::Error) -> SpliceError {
        let sink = self.decoder.as_ref().and_then(|d| d.sink());
        match sink {
            Some(s) if s.bomb => SpliceError::Bomb,
            Some(RewriteSink {
                error: Some(msg), ..
            }) => SpliceError::Rewrite(msg.clone()),
            _ => SpliceError::Decode(self.coding, e),
        }
    }

    /// Feeds one upstream chunk; returns the client bytes ready now. After an error the
    /// stream's buffers are already released, and it takes nothing more.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, SpliceError> {
        let Some(decoder) = self.decoder.as_mut() else {
            return Ok(Vec::new());
        };
        if let Err(e) = feed(decoder, self.coding, chunk) {
            let e = self.classify(e);
            self.release();
            return Err(e);
        }
        let out = lock(&self.encoder).take();
        out.map_err(|e| {
            self.release();
            SpliceError::Rewrite(e.to_string())
        })
    }

    /// Frees the decoder, the rewriter and what the encoder holds now, instead of when the
    /// request's context goes (a cut-off response may hold a chunk's worth of decoded bytes).
    fn release(&mut self) {
        self.decoder = None;
        *lock(&self.encoder) = Encoder::Identity(Vec::new());
    }

    /// One call of the response body filter: replaces `body` with the client's bytes (none
    /// while they are not ready; an empty chunk would read as the end of a chunked body), and at
    /// the end counts whether the banner went in.
    pub fn filter(
        &mut self,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
    ) -> Result<(), SpliceError> {
        let mut out = match body.take() {
            Some(chunk) => self.push(&chunk),
            None => Ok(Vec::new()),
        };
        if end_of_stream && let Ok(bytes) = &mut out {
            match self.finish() {
                Ok(tail) => bytes.extend(tail),
                Err(e) => out = Err(e),
            }
            if self.inserted() {
                crate::metrics::METRICS.banners_spliced.inc();
            } else {
                crate::metrics::METRICS
                    .banner_skipped
                    .with_label_values(&["no_body_tag"])
                    .inc();
            }
        }
        match out {
            Ok(bytes) => {
                *body = (!bytes.is_empty()).then(|| bytes::Bytes::from(bytes));
                Ok(())
            }
            Err(e) => {
                crate::metrics::METRICS
                    .banner_skipped
                    .with_label_values(&["body_error"])
                    .inc();
                Err(e)
            }
        }
    }

    /// The upstream body ended: flush everything.
    pub fn finish(&mut self) -> Result<Vec<u8>, SpliceError> {
        let Some(decoder) = self.decoder.take() else {
            return Ok(Vec::new());
        };
        let sink = decoder
            .finish()
            .map_err(|e| SpliceError::Decode(self.coding, e))?;
        if let Some(rewriter) = sink.rewriter {
            rewriter
                .end()
                .map_err(|e| SpliceError::Rewrite(e.to_string()))?;
        }
        let mut guard = lock(&self.encoder);
        let encoder = std::mem::replace(&mut *guard, Encoder::Identity(Vec::new()));
        encoder
            .finish()
            .map_err(|e| SpliceError::Rewrite(e.to_string()))
    }
}

/// Decodes one upstream chunk into the sink, a `DECODE_SLICE` at a time when it is compressed,
/// telling the sink what the decoder has been given, and flushes.
fn feed(decoder: &mut Decoder<RewriteSink>, coding: Coding, chunk: &[u8]) -> io::Result<()> {
    if let Some(s) = decoder.sink_mut() {
        s.chunk_in = 0;
        s.chunk_out = 0;
    }
    // Identity cannot expand: no need to slice it.
    let slice = match coding {
        Coding::Identity => chunk.len().max(1),
        _ => DECODE_SLICE,
    };
    for piece in chunk.chunks(slice) {
        if let Some(s) = decoder.sink_mut() {
            s.chunk_in += piece.len();
        }
        decoder.write_all(piece)?;
    }
    decoder.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn splice(script_nonce: bool) -> Splice {
        Splice {
            render: Box::new(|nonce| {
                format!(
                    "<div id=\"sessiongate-banner\" data-n=\"{}\"></div>",
                    nonce.unwrap_or("-")
                )
            }),
            authority: "cafe.example".into(),
            nonce: "N".into(),
            script_nonce,
        }
    }

    fn run(coding: Coding, out: OutCoding, body: &[u8], chunk: usize) -> (Vec<u8>, bool) {
        let mut s = BannerStream::new(coding, out, splice(false)).expect("stream");
        let mut client = Vec::new();
        for c in body.chunks(chunk) {
            client.extend(s.push(c).expect("push"));
        }
        client.extend(s.finish().expect("finish"));
        (client, s.inserted())
    }

    #[test]
    fn splices_after_the_body_start_tag_across_chunk_boundaries() {
        let page = b"<!doctype html><html><head><title>t</title></head><body class=\"a\" data-x=\"1\"><p>hi</p></body></html>";
        for chunk in [1, 3, 17, 1000] {
            let (out, inserted) = run(Coding::Identity, OutCoding::Identity, page, chunk);
            assert!(inserted);
            let out = String::from_utf8(out).expect("utf8");
            assert!(
                out.contains("<body class=\"a\" data-x=\"1\"><div id=\"sessiongate-banner\" data-n=\"-\"></div><p>hi</p>"),
                "{out}"
            );
        }
    }

    #[test]
    fn no_body_no_banner() {
        let (out, inserted) = run(Coding::Identity, OutCoding::Identity, b"<p>fragment</p>", 4);
        assert!(!inserted);
        assert_eq!(out, b"<p>fragment</p>");
    }

    #[test]
    fn meta_csp_is_edited_and_can_ask_for_the_nonce() {
        let page = b"<html><head><meta http-equiv=\"Content-Security-Policy\" content=\"script-src 'nonce-p' 'strict-dynamic'\"></head><body></body></html>";
        let (out, _) = run(Coding::Identity, OutCoding::Identity, page, 5);
        let out = String::from_utf8(out).expect("utf8");
        assert!(
            out.contains("content=\"script-src 'nonce-p' 'strict-dynamic' 'nonce-N'\""),
            "{out}"
        );
        assert!(out.contains("data-n=\"N\""), "{out}");
    }

    #[test]
    fn gzip_bomb_ends_the_response() {
        let zeros = vec![0u8; 64 * 1024 * 1024];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&zeros).expect("gz");
        let bomb = gz.finish().expect("gz");
        let mut s =
            BannerStream::new(Coding::Gzip, OutCoding::Gzip, splice(false)).expect("stream");
        let err = s.push(&bomb).expect_err("bomb");
        assert!(matches!(err, SpliceError::Bomb), "{err}");
    }

    /// Pushes `body` in `chunk`-sized upstream chunks; the first error, or the client bytes.
    fn try_run(coding: Coding, body: &[u8], chunk: usize) -> Result<Vec<u8>, SpliceError> {
        let mut s = BannerStream::new(coding, OutCoding::Identity, splice(false)).expect("stream");
        let mut client = Vec::new();
        for c in body.chunks(chunk) {
            client.extend(s.push(c)?);
        }
        client.extend(s.finish()?);
        Ok(client)
    }

    const BOMB_PAGE_HEAD: &[u8] = b"<html><head></head><body><pre>";

    #[test]
    fn br_and_zstd_bombs_end_the_response_too() {
        let mut bomb = BOMB_PAGE_HEAD.to_vec();
        bomb.resize(16 * 1024 * 1024, b' ');
        let mut br = brotli::CompressorWriter::new(Vec::new(), 4096, 5, 22);
        br.write_all(&bomb).expect("br");
        let br = br.into_inner();
        let zs = zstd::encode_all(&bomb[..], 3).expect("zstd");
        for (coding, body) in [(Coding::Br, br), (Coding::Zstd, zs)] {
            let r = try_run(coding, &body, 64 * 1024).map(|out| out.len());
            assert!(matches!(r, Err(SpliceError::Bomb)), "{coding:?}: {r:?}");
        }
    }

    #[test]
    fn a_page_compressing_47_to_1_is_no_bomb() {
        // Every row numbered: the most repetitive kind of honest page.
        let mut page = String::from("<!DOCTYPE html><html><head></head><body><table>\n");
        for i in 0..40_000 {
            page.push_str(&format!(
                "<tr class=\"row\"><td class=\"qty\">1</td><td class=\"name\">Flat white, oat \
                 milk</td><td class=\"price\">3.40 EUR</td><td>{i}</td></tr>\n"
            ));
        }
        page.push_str("</table></body></html>");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(page.as_bytes()).expect("gz");
        let gz = gz.finish().expect("gz");
        assert!(
            page.len() / gz.len() > 40,
            "ratio {}",
            page.len() / gz.len()
        );
        let out = try_run(Coding::Gzip, &gz, 64 * 1024).expect("an honest page");
        assert_eq!(
            out.len(),
            page.len() + "<div id=\"sessiongate-banner\" data-n=\"-\"></div>".len()
        );
    }

    #[test]
    fn zstd_windows_beyond_8_mib_are_refused() {
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("zstd");
        enc.window_log(25).expect("window");
        enc.write_all(b"<html><body>hi</body></html>")
            .expect("zstd");
        let zs = enc.finish().expect("zstd");
        let r = try_run(Coding::Zstd, &zs, 1024).map(|out| out.len());
        assert!(
            matches!(r, Err(SpliceError::Decode(Coding::Zstd, _))),
            "{r:?}"
        );
    }

    #[test]
    fn garbage_gzip_is_a_decode_error() {
        let mut s =
            BannerStream::new(Coding::Gzip, OutCoding::Identity, splice(false)).expect("stream");
        let r = s.push(b"definitely not gzip").and_then(|_| s.finish());
        assert!(
            matches!(r, Err(SpliceError::Decode(Coding::Gzip, _))),
            "{r:?}"
        );
    }
}
