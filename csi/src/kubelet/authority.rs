//! Makes the kubelet's registration requests acceptable to our HTTP/2 server.
//!
//! The kubelet dials a plugin's registration socket with its bare path as the gRPC target and no
//! authority override (`pluginmanager/operationexecutor`, Kubernetes 1.36), so grpc-go sends the
//! socket's path as the HTTP/2 `:authority`. hyper's HTTP/2 (h2) refuses that as a malformed
//! authority and resets the stream (PROTOCOL_ERROR; hyperium/h2#487 and hyperium/hyper#3750 are
//! open). The kubelet's CSI client sets `localhost` itself (kubernetes/kubernetes#112597), so only
//! this socket needs the fix: every connection passes through [`front`], which rewrites the
//! `:authority` in the request header blocks the client sends to `localhost` and copies everything
//! else unchanged, both ways.

use std::io;

use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The HTTP/2 client connection preface.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The smallest SETTINGS_MAX_FRAME_SIZE a peer may set (and h2's default): rewritten blocks are
/// split at this size.
const MAX_FRAME: usize = 16_384;
/// Header blocks larger than this are refused (h2's own default limit on a header list is 16 MiB;
/// the kubelet's requests are a few hundred bytes).
const MAX_BLOCK: usize = 1 << 20;

/// The value the rewritten requests carry.
const AUTHORITY: &[u8] = b"localhost";

#[derive(Debug, thiserror::Error)]
pub enum FrontError {
    #[error("the client did not start with the HTTP/2 connection preface")]
    NoPreface,
    #[error("a malformed HTTP/2 frame: {0}")]
    Malformed(&'static str),
    #[error("an undecodable header block: {0:?}")]
    Hpack(loona_hpack::decoder::DecoderError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// One frame as read: its type, flags, stream and payload.
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

async fn read_frame(r: &mut (impl AsyncRead + Unpin)) -> Result<Option<Frame>, FrontError> {
    let mut head = [0u8; 9];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Some(Frame { kind: head[3], flags: head[4], stream, payload }))
}

fn frame_bytes(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The header block fragment of a HEADERS frame, without padding and priority fields.
fn fragment(frame: &Frame) -> Result<&[u8], FrontError> {
    let mut body = frame.payload.as_slice();
    let mut pad = 0usize;
    if frame.flags & PADDED != 0 {
        let (&n, rest) = body.split_first().ok_or(FrontError::Malformed("HEADERS padding"))?;
        pad = usize::from(n);
        body = rest;
    }
    if frame.flags & PRIORITY != 0 {
        body = body.get(5..).ok_or(FrontError::Malformed("HEADERS priority"))?;
    }
    body.get(..body.len().checked_sub(pad).ok_or(FrontError::Malformed("HEADERS padding"))?)
        .ok_or(FrontError::Malformed("HEADERS padding"))
}

/// Rewrites one connection's client-to-server frames: header blocks decoded, `:authority` set to
/// `localhost`, encoded again (with this connection's own encoder, whose table the server's
/// decoder follows) and sent as HEADERS plus CONTINUATION frames; every other frame unchanged.
struct Rewriter {
    decoder: Decoder<'static>,
    encoder: Encoder<'static>,
}

impl Rewriter {
    fn new() -> Self {
        Rewriter { decoder: Decoder::new(), encoder: Encoder::new() }
    }

    /// The frames that carry `block` (a complete header block) for `stream`, rewritten.
    fn headers(&mut self, stream: u32, end_stream: bool, block: &[u8]) -> Result<Vec<u8>, FrontError> {
        let mut fields = self.decoder.decode(block).map_err(FrontError::Hpack)?;
        for (name, value) in &mut fields {
            if name.as_slice() == b":authority" {
                *value = AUTHORITY.to_vec();
            }
        }
        let encoded = self.encoder.encode(fields.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let chunks: Vec<&[u8]> = if encoded.is_empty() { vec![&[]] } else { encoded.chunks(MAX_FRAME).collect() };
        let mut out = Vec::with_capacity(encoded.len() + 9 * chunks.len());
        for (i, chunk) in chunks.iter().enumerate() {
            let last = if i + 1 == chunks.len() { END_HEADERS } else { 0 };
            if i == 0 {
                let end = if end_stream { END_STREAM } else { 0 };
                out.extend(frame_bytes(HEADERS, end | last, stream, chunk));
            } else {
                out.extend(frame_bytes(CONTINUATION, last, stream, chunk));
            }
        }
        Ok(out)
    }
}

/// Copies `client`'s bytes to `server`, rewriting request header blocks, until the client closes.
async fn client_to_server(
    client: &mut (impl AsyncRead + Unpin),
    server: &mut (impl AsyncWrite + Unpin),
) -> Result<(), FrontError> {
    let mut preface = [0u8; 24];
    client.read_exact(&mut preface).await?;
    if &preface != PREFACE {
        return Err(FrontError::NoPreface);
    }
    server.write_all(&preface).await?;
    let mut rewriter = Rewriter::new();
    while let Some(frame) = read_frame(client).await? {
        if frame.kind != HEADERS {
            if frame.kind == CONTINUATION {
                return Err(FrontError::Malformed("CONTINUATION without HEADERS"));
            }
            server.write_all(&frame_bytes(frame.kind, frame.flags, frame.stream, &frame.payload)).await?;
            continue;
        }
        let mut block = fragment(&frame)?.to_vec();
        let mut done = frame.flags & END_HEADERS != 0;
        while !done {
            let next = read_frame(client).await?.ok_or(FrontError::Malformed("header block cut short"))?;
            if next.kind != CONTINUATION || next.stream != frame.stream {
                return Err(FrontError::Malformed("HEADERS not followed by its CONTINUATION"));
            }
            block.extend_from_slice(&next.payload);
            if block.len() > MAX_BLOCK {
                return Err(FrontError::Malformed("header block too large"));
            }
            done = next.flags & END_HEADERS != 0;
        }
        let frames = rewriter.headers(frame.stream, frame.flags & END_STREAM != 0, &block)?;
        server.write_all(&frames).await?;
    }
    server.shutdown().await?;
    Ok(())
}

/// Connects `client` to `server` until either side closes: client frames through the rewriter,
/// server bytes unchanged.
pub async fn front<C, S>(client: C, server: S) -> Result<(), FrontError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut server_read, mut server_write) = tokio::io::split(server);
    let up = client_to_server(&mut client_read, &mut server_write);
    let down = async {
        tokio::io::copy(&mut server_read, &mut client_write).await?;
        client_write.shutdown().await?;
        Ok::<(), FrontError>(())
    };
    tokio::select! {
        r = up => r,
        r = down => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request's header block as grpc-go sends it when dialled with a bare socket path.
    fn kubelet_request(encoder: &mut Encoder<'_>) -> Vec<u8> {
        encoder.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", b"/pluginregistration.Registration/GetInfo"),
            (b":authority", b"/var/lib/kubelet/plugins_registry/thinpool.csi.io-reg.sock"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ])
    }

    async fn rewrite(input: Vec<u8>) -> Result<Vec<u8>, FrontError> {
        let mut out = Vec::new();
        client_to_server(&mut input.as_slice(), &mut out).await?;
        Ok(out)
    }

    fn blocks(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut frames = Vec::new();
        let mut rest = &bytes[24..];
        while !rest.is_empty() {
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            frames.push((rest[3], rest[4], stream, rest[9..9 + len].to_vec()));
            rest = &rest[9 + len..];
        }
        frames
    }

    #[tokio::test]
    async fn the_authority_becomes_localhost_and_everything_else_stays() {
        let mut client = Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame_bytes(0x4, 0, 0, &[0, 4, 0, 0, 0xff, 0xff])); // SETTINGS
                                                                         // Two requests on one connection: the second refers to the first's table entries.
        for stream in [1u32, 3] {
            let block = kubelet_request(&mut client);
            // Split across HEADERS + CONTINUATION, padded and with priority, as a client may.
            let (a, b) = block.split_at(block.len() / 2);
            let mut first = vec![2u8];
            first.extend_from_slice(&[0, 0, 0, 0, 15]);
            first.extend_from_slice(a);
            first.extend_from_slice(&[0, 0]);
            input.extend(frame_bytes(HEADERS, PADDED | PRIORITY, stream, &first));
            input.extend(frame_bytes(CONTINUATION, END_HEADERS, stream, b));
            input.extend(frame_bytes(0x0, END_STREAM, stream, b"\0\0\0\0\0")); // DATA
        }
        let out = rewrite(input).await.unwrap();
        assert_eq!(&out[..24], PREFACE);
        let frames = blocks(&out);
        let kinds: Vec<u8> = frames.iter().map(|f| f.0).collect();
        assert_eq!(kinds, [0x4, HEADERS, 0x0, HEADERS, 0x0]);
        assert_eq!(frames[0].3, [0, 4, 0, 0, 0xff, 0xff]);
        assert_eq!(frames[2], (0x0, END_STREAM, 1, b"\0\0\0\0\0".to_vec()));
        let mut server = Decoder::new();
        for (_, flags, stream, block) in [&frames[1], &frames[3]] {
            assert_eq!(*flags, END_HEADERS);
            assert!([1, 3].contains(stream));
            let fields = server.decode(block).unwrap();
            let get = |n: &[u8]| fields.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
            assert_eq!(get(b":authority").as_deref(), Some(AUTHORITY));
            assert_eq!(get(b":path").as_deref(), Some(&b"/pluginregistration.Registration/GetInfo"[..]));
            assert_eq!(fields.len(), 6);
        }
    }

    #[tokio::test]
    async fn large_header_blocks_are_split_into_frames_the_server_accepts() {
        let mut client = Encoder::new();
        let big = vec![b'x'; 40_000];
        let block = client.encode([(&b":authority"[..], &b"/a/b.sock"[..]), (b"x-big", &big)]);
        let mut input = PREFACE.to_vec();
        for chunk in block.chunks(MAX_FRAME).enumerate() {
            let (i, c) = chunk;
            let last = (i + 1) * MAX_FRAME >= block.len();
            let flags = if last { END_HEADERS } else { 0 } | if i == 0 { END_STREAM } else { 0 };
            input.extend(frame_bytes(if i == 0 { HEADERS } else { CONTINUATION }, flags, 5, c));
        }
        let frames = blocks(&rewrite(input).await.unwrap());
        assert!(frames.iter().all(|f| f.3.len() <= MAX_FRAME));
        assert_eq!(frames[0].1, END_STREAM);
        assert_eq!(frames.last().map(|f| f.1), Some(END_HEADERS));
        let block: Vec<u8> = frames.iter().flat_map(|f| f.3.clone()).collect();
        let fields = Decoder::new().decode(&block).unwrap();
        assert_eq!(fields[0], (b":authority".to_vec(), AUTHORITY.to_vec()));
        assert_eq!(fields[1].1.len(), 40_000);
    }

    #[tokio::test]
    async fn anything_but_http2_is_refused() {
        assert!(matches!(rewrite(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()).await, Err(FrontError::NoPreface)));
        let mut cut = PREFACE.to_vec();
        cut.extend(frame_bytes(HEADERS, 0, 1, &[0x82]));
        assert!(rewrite(cut).await.is_err(), "a header block without its end");
        let mut garbage = PREFACE.to_vec();
        garbage.extend(frame_bytes(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff, 0xff]));
        assert!(matches!(rewrite(garbage).await, Err(FrontError::Hpack(_))));
    }
}
