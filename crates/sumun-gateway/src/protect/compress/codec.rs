//! The codecs of async-compression (`async_compression::codecs`), driven synchronously one
//! body frame at a time: the streaming bodies decide when to flush, and every call writes
//! into a bounded scratch buffer, so no input can make a single call produce unbounded
//! output.
//!
//! Levels are for compressing on the fly. CPU per response for a 100 KiB JSON API listing
//! (one core, best of three runs; `flate2` on its zlib-rs backend, 2x faster than the
//! default miniz_oxide): gzip 5 → ratio 5.03 in ~0.7–0.9 ms (level 6: 5.08 in ~1.15 ms, 35 %
//! more CPU for 1 % smaller); brotli 4 → 5.45 in ~1.3–1.5 ms (3: 5.36 in ~0.8 ms; 5: 5.63
//! in ~3 ms; 11: 6.57 in ~180 ms, far too slow); zstd 3 → 5.27 in ~0.21 ms. Brotli and zstd
//! windows are 512 KiB: brotli's state grows with its window (2.5 MiB per stream at 512 KiB
//! against 9.5 MiB at the default 4 MiB), which matters with thousands of concurrent
//! responses, and the ratio on responses of a few hundred KiB does not change.

use std::io;

use async_compression::Level;
use async_compression::codecs::{
    BrotliDecoder, BrotliEncoder, DecodeV2, EncodeV2, GzipDecoder, GzipEncoder, ZlibDecoder, ZstdDecoder,
    ZstdEncoder,
};
use async_compression::core::util::{PartialBuffer, WriteBuffer};
use bytes::BytesMut;
use sumun_config::Encoding;

pub(super) const GZIP_LEVEL: i32 = 5;
pub(super) const BROTLI_QUALITY: i32 = 4;
/// log2 of the brotli window.
pub(super) const BROTLI_WINDOW_LOG: i32 = 19;
pub(super) const ZSTD_LEVEL: i32 = 3;
pub(super) const ZSTD_WINDOW_LOG: u32 = 19;
/// A compressed request asking for a larger zstd window is refused: 8 MiB is what RFC 8878
/// §3.1.1.1.2 asks HTTP decoders to support, and the window is memory the decoder holds.
const ZSTD_MAX_DECODE_WINDOW_LOG: u32 = 23;
/// Likewise for brotli, whose streams may declare up to 16 MiB (RFC 7932 §9.1): 4 MiB is the
/// window of every common encoder's default (`lgwin` 22), and a few header bytes must not be
/// able to make the decoder hold 16 MiB per request.
const BROTLI_MAX_DECODE_WINDOW_LOG: u32 = 22;

/// Size of the scratch buffer codecs write into.
pub(super) const SCRATCH: usize = 16 * 1024;

/// Calls a codec makes without consuming input or producing output before we call it stuck
/// (a codec bug must not become a busy loop).
const MAX_IDLE_CALLS: u32 = 4;

pub(super) fn coding_name(e: Encoding) -> &'static str {
    match e {
        Encoding::Zstd => "zstd",
        Encoding::Brotli => "br",
        Encoding::Gzip => "gzip",
    }
}

fn stuck() -> io::Error {
    io::Error::other("the codec made no progress")
}

/// A response compressor.
pub(super) enum Encoder {
    Gzip(GzipEncoder),
    // Boxed: brotli's state is large and the enum moves with the body.
    Brotli(Box<BrotliEncoder>),
    Zstd(ZstdEncoder),
}

impl Encoder {
    /// `size_hint`: the body's length when known (brotli sizes its tables by it).
    pub(super) fn new(encoding: Encoding, size_hint: Option<u64>) -> Encoder {
        match encoding {
            Encoding::Gzip => Encoder::Gzip(GzipEncoder::new(Level::Precise(GZIP_LEVEL).into())),
            Encoding::Brotli => {
                let mut params = async_compression::brotli::EncoderParams::default()
                    .quality(Level::Precise(BROTLI_QUALITY))
                    .window_size(BROTLI_WINDOW_LOG);
                if let Some(n) = size_hint.and_then(|n| usize::try_from(n).ok()) {
                    params = params.size_hint(n);
                }
                Encoder::Brotli(Box::new(BrotliEncoder::new(params)))
            }
            Encoding::Zstd => Encoder::Zstd(ZstdEncoder::new_with_params(
                ZSTD_LEVEL,
                &[async_compression::zstd::CParameter::window_log(ZSTD_WINDOW_LOG)],
            )),
        }
    }

    fn codec(&mut self) -> &mut dyn EncodeV2 {
        match self {
            Encoder::Gzip(c) => c,
            Encoder::Brotli(c) => &mut **c,
            Encoder::Zstd(c) => c,
        }
    }

    /// Compresses all of `input`, appending what the codec emits to `out`.
    pub(super) fn encode(&mut self, input: &[u8], scratch: &mut [u8], out: &mut BytesMut) -> io::Result<()> {
        let codec = self.codec();
        let mut input = PartialBuffer::new(input);
        let mut idle = 0;
        while !input.unwritten().is_empty() {
            let before = input.written_len();
            let mut wb = WriteBuffer::new_initialized(scratch);
            codec.encode(&mut input, &mut wb)?;
            out.extend_from_slice(wb.written());
            if input.written_len() == before && wb.written_len() == 0 {
                idle += 1;
                if idle > MAX_IDLE_CALLS {
                    return Err(stuck());
                }
            } else {
                idle = 0;
            }
        }
        Ok(())
    }

    /// Emits everything compressed so far (a sync flush: the stream goes on).
    pub(super) fn flush(&mut self, scratch: &mut [u8], out: &mut BytesMut) -> io::Result<()> {
        let codec = self.codec();
        drive(scratch, out, |wb| codec.flush(wb))
    }

    /// Ends the stream.
    pub(super) fn finish(&mut self, scratch: &mut [u8], out: &mut BytesMut) -> io::Result<()> {
        let codec = self.codec();
        drive(scratch, out, |wb| codec.finish(wb))
    }
}

/// Calls `step` until it reports done, appending its output.
fn drive(
    scratch: &mut [u8],
    out: &mut BytesMut,
    mut step: impl FnMut(&mut WriteBuffer<'_>) -> io::Result<bool>,
) -> io::Result<()> {
    let mut idle = 0;
    loop {
        let mut wb = WriteBuffer::new_initialized(scratch);
        let done = step(&mut wb)?;
        out.extend_from_slice(wb.written());
        if done {
            return Ok(());
        }
        if wb.written_len() == 0 {
            idle += 1;
            if idle > MAX_IDLE_CALLS {
                return Err(stuck());
            }
        } else {
            idle = 0;
        }
    }
}

/// A `Content-Encoding` sumun decodes in requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RequestCoding {
    Gzip,
    /// HTTP's `deflate` is the zlib format (RFC 9110 §8.4.1.2).
    Deflate,
    Brotli,
    Zstd,
}

impl RequestCoding {
    /// A coding name as it appears in `Content-Encoding` (case-insensitive); `x-gzip` is
    /// gzip (RFC 9110 §8.4.1.3).
    pub(super) fn parse(name: &str) -> Option<RequestCoding> {
        const NAMES: [(&str, RequestCoding); 5] = [
            ("gzip", RequestCoding::Gzip),
            ("x-gzip", RequestCoding::Gzip),
            ("deflate", RequestCoding::Deflate),
            ("br", RequestCoding::Brotli),
            ("zstd", RequestCoding::Zstd),
        ];
        NAMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, c)| *c)
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            RequestCoding::Gzip => "gzip",
            RequestCoding::Deflate => "deflate",
            RequestCoding::Brotli => "br",
            RequestCoding::Zstd => "zstd",
        }
    }

    /// What `Accept-Encoding` says on a 415 for an unsupported request coding.
    pub(super) const ACCEPTED: &'static str = "gzip, br, zstd, deflate";
}

/// One step of decoding.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Step {
    pub consumed: usize,
    pub produced: usize,
    /// The current member (gzip member, zstd frame, whole brotli or zlib stream) ended.
    pub done: bool,
}

/// A request decompressor.
pub(super) enum Decoder {
    Gzip(GzipDecoder),
    Zlib(ZlibDecoder),
    /// `checked`: the stream's window size (its first byte) was accepted.
    Brotli(Box<BrotliDecoder>, bool),
    Zstd(ZstdDecoder),
}

/// The window a brotli stream declares in its first byte (RFC 7932 §9.1, bits read from the
/// least significant), as log2; None for the large-window extension, which HTTP does not use.
pub(super) fn brotli_window_log(first: u8) -> Option<u32> {
    if first & 1 == 0 {
        return Some(16);
    }
    match (u32::from(first >> 1) & 7, u32::from(first >> 4) & 7) {
        (0, 1) => None,
        (0, 0) => Some(17),
        (0, m) => Some(8 + m),
        (n, _) => Some(17 + n),
    }
}

impl Decoder {
    pub(super) fn new(coding: RequestCoding) -> Decoder {
        match coding {
            RequestCoding::Gzip => Decoder::Gzip(GzipDecoder::new()),
            RequestCoding::Deflate => Decoder::Zlib(ZlibDecoder::new()),
            RequestCoding::Brotli => Decoder::Brotli(Box::new(BrotliDecoder::new()), false),
            RequestCoding::Zstd => Decoder::Zstd(ZstdDecoder::new_with_params(&[
                async_compression::zstd::DParameter::window_log_max(ZSTD_MAX_DECODE_WINDOW_LOG),
            ])),
        }
    }

    fn codec(&mut self) -> &mut dyn DecodeV2 {
        match self {
            Decoder::Gzip(c) => c,
            Decoder::Zlib(c) => c,
            Decoder::Brotli(c, _) => &mut **c,
            Decoder::Zstd(c) => c,
        }
    }

    /// Whether another member may follow the end of one: gzip members and zstd frames
    /// concatenate (RFC 1952 §2.2, RFC 8878 §3); brotli and zlib streams do not.
    pub(super) fn multi_member(&self) -> bool {
        matches!(self, Decoder::Gzip(_) | Decoder::Zstd(_))
    }

    /// Decodes from `input` into `out` (bounded by its length).
    pub(super) fn decode(&mut self, input: &[u8], out: &mut [u8]) -> io::Result<Step> {
        if let (Decoder::Brotli(_, checked @ false), Some(&first)) = (&mut *self, input.first()) {
            match brotli_window_log(first) {
                Some(log) if log <= BROTLI_MAX_DECODE_WINDOW_LOG => *checked = true,
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the stream's window is larger than 4 MiB",
                    ));
                }
            }
        }
        let mut pb = PartialBuffer::new(input);
        let mut wb = WriteBuffer::new_initialized(out);
        let done = self.codec().decode(&mut pb, &mut wb)?;
        Ok(Step { consumed: pb.written_len(), produced: wb.written_len(), done })
    }

    /// Output the codec still holds once its input ran out (after a call that filled the
    /// output buffer). zstd and brotli drain by decoding empty input (which also tells
    /// when the member ended); the flate family drains with a sync flush, which must not be
    /// asked to decode empty input (zlib reports that as an error).
    pub(super) fn drain(&mut self, out: &mut [u8]) -> io::Result<Step> {
        match self {
            Decoder::Brotli(..) | Decoder::Zstd(_) => self.decode(&[], out),
            Decoder::Gzip(_) | Decoder::Zlib(_) => {
                let mut wb = WriteBuffer::new_initialized(out);
                self.codec().flush(&mut wb)?;
                Ok(Step { consumed: 0, produced: wb.written_len(), done: false })
            }
        }
    }

    /// At the end of the input: the last output, and whether the stream was complete.
    /// Truncated input is an `UnexpectedEof` error.
    pub(super) fn finish(&mut self, out: &mut [u8]) -> io::Result<Step> {
        let mut wb = WriteBuffer::new_initialized(out);
        let done = self.codec().finish(&mut wb)?;
        Ok(Step { consumed: 0, produced: wb.written_len(), done })
    }

    pub(super) fn reinit(&mut self) -> io::Result<()> {
        self.codec().reinit()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A JSON-like sample that compresses about as well as real API responses.
    pub(crate) fn sample(len: usize) -> Vec<u8> {
        let mut s = Vec::with_capacity(len + 128);
        s.push(b'[');
        let mut i = 0u64;
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        while s.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let item = format!(
                r#"{{"id":{i},"uuid":"{x:016x}","name":"user-{}","active":{},"score":{}.{:02},"city":"{}"}},"#,
                x % 100_000,
                x % 3 == 0,
                x % 100,
                x % 97,
                ["Seoul", "Busan", "Paris", "Lima"][(x % 4) as usize]
            );
            s.extend_from_slice(item.as_bytes());
            i += 1;
        }
        s.truncate(len);
        s
    }

    pub(crate) fn compress(e: Encoding, data: &[u8], frame: usize, flush_each: bool) -> Vec<u8> {
        let mut enc = Encoder::new(e, None);
        let mut scratch = vec![0; SCRATCH];
        let mut out = BytesMut::new();
        for chunk in data.chunks(frame.max(1)) {
            enc.encode(chunk, &mut scratch, &mut out).unwrap();
            if flush_each {
                enc.flush(&mut scratch, &mut out).unwrap();
            }
        }
        enc.finish(&mut scratch, &mut out).unwrap();
        out.to_vec()
    }

    pub(crate) fn decompress(c: RequestCoding, data: &[u8]) -> io::Result<Vec<u8>> {
        let mut dec = Decoder::new(c);
        let mut out = vec![0; SCRATCH];
        let mut got = Vec::new();
        let mut input = data;
        let mut done = false;
        while !input.is_empty() {
            if done {
                dec.reinit()?;
            }
            let s = dec.decode(input, &mut out)?;
            input = &input[s.consumed..];
            got.extend_from_slice(&out[..s.produced]);
            done = s.done;
        }
        while !done {
            let s = dec.finish(&mut out)?;
            got.extend_from_slice(&out[..s.produced]);
            done = s.done;
        }
        Ok(got)
    }

    #[test]
    fn every_encoding_round_trips_in_frames() {
        let data = sample(100 * 1024);
        for (e, c) in [
            (Encoding::Gzip, RequestCoding::Gzip),
            (Encoding::Brotli, RequestCoding::Brotli),
            (Encoding::Zstd, RequestCoding::Zstd),
        ] {
            for flush in [false, true] {
                let z = compress(e, &data, 7000, flush);
                assert!(z.len() * 3 < data.len(), "{e:?} compresses JSON: {} -> {}", data.len(), z.len());
                assert_eq!(decompress(c, &z).unwrap(), data, "{e:?} flush={flush}");
            }
        }
    }

    #[test]
    fn flush_emits_everything_so_far() {
        for (e, c) in [
            (Encoding::Gzip, RequestCoding::Gzip),
            (Encoding::Brotli, RequestCoding::Brotli),
            (Encoding::Zstd, RequestCoding::Zstd),
        ] {
            let mut enc = Encoder::new(e, None);
            let mut scratch = vec![0; SCRATCH];
            let mut out = BytesMut::new();
            enc.encode(b"data: first event\n\n", &mut scratch, &mut out).unwrap();
            enc.flush(&mut scratch, &mut out).unwrap();
            // A decoder given only what was flushed sees the whole first event.
            let mut dec = Decoder::new(c);
            let mut buf = vec![0; SCRATCH];
            let s = dec.decode(&out, &mut buf).unwrap();
            assert_eq!(&buf[..s.produced], b"data: first event\n\n", "{e:?}");
        }
    }

    #[test]
    fn gzip_members_and_x_gzip() {
        let mut two = compress(Encoding::Gzip, b"hello ", 100, false);
        two.extend(compress(Encoding::Gzip, b"world", 100, false));
        assert_eq!(decompress(RequestCoding::Gzip, &two).unwrap(), b"hello world");
        assert_eq!(RequestCoding::parse("X-GZIP"), Some(RequestCoding::Gzip));
        assert_eq!(RequestCoding::parse("compress"), None);
    }

    #[test]
    fn deflate_is_zlib() {
        use std::io::Write;
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(b"zlib body").unwrap();
        let z = z.finish().unwrap();
        assert_eq!(decompress(RequestCoding::Deflate, &z).unwrap(), b"zlib body");
    }

    #[test]
    fn truncated_and_garbage_input_are_errors() {
        let z = compress(Encoding::Gzip, &sample(10_000), 1000, false);
        assert!(decompress(RequestCoding::Gzip, &z[..z.len() - 5]).is_err(), "truncated gzip");
        assert!(decompress(RequestCoding::Gzip, b"this is not gzip at all").is_err());
        let z = compress(Encoding::Zstd, &sample(10_000), 1000, false);
        assert!(decompress(RequestCoding::Zstd, &z[..z.len() / 2]).is_err(), "truncated zstd");
        assert!(decompress(RequestCoding::Zstd, b"\x28\xb5\x2f\xfd garbage garbage").is_err());
        let z = compress(Encoding::Brotli, &sample(10_000), 1000, false);
        assert!(decompress(RequestCoding::Brotli, &z[..z.len() / 2]).is_err(), "truncated br");
        assert!(decompress(RequestCoding::Deflate, b"\x78\x9c garbage").is_err());
    }
}
