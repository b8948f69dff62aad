//! A message body's framing (RFC 9112 §6): a length, chunked coding (extensions and trailers
//! skipped, with bounds), or until the connection closes — one decoder for requests and
//! responses.
//!
//! Reads land in stack space that lives only while a read is polled; what the body carries is
//! copied out once, exactly sized, and nothing stays buffered between reads (only the rare
//! partial chunk-size line). Cancel-safe: state changes only after a read returned.

use super::{poll_read, ReadError, READ};
use bytes::{Bytes, BytesMut};
use std::mem::MaybeUninit;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

/// Longest chunk-size line (with extensions) and trailer section accepted.
pub(super) const MAX_CHUNK_LINE: usize = 4 << 10;
pub(super) const MAX_TRAILERS: usize = 16 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// Bytes of body left.
    Length(u64),
    Chunked(Chunk),
    /// Until the provider closes the connection.
    Close,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunk {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines (skipped), `seen` bytes of them so far.
    Trailers(usize),
}

impl Framing {
    /// A body of `len` bytes.
    pub(super) fn length(len: u64) -> Self {
        if len == 0 {
            Self::Done
        } else {
            Self::Length(len)
        }
    }

    pub(super) fn chunked() -> Self {
        Self::Chunked(Chunk::Size)
    }
}

/// One message's body as it arrives.
#[derive(Debug)]
pub struct Body {
    framing: Framing,
    /// Read but not yet decoded: what arrived with the head, an incomplete chunk-size line or
    /// CRLF, or what arrived past the body's end. Usually empty, and then it holds no memory.
    pending: BytesMut,
    keep_alive: bool,
    /// Bytes arrived past the end of the framed body.
    overread: bool,
}

impl Body {
    /// A body framed by `framing`; `rest` holds what was read past the head. `keep_alive`: the
    /// peer lets the connection carry another message once this one ends.
    pub(super) fn new(framing: Framing, keep_alive: bool, rest: BytesMut) -> Self {
        Self {
            keep_alive: keep_alive && framing != Framing::Close,
            overread: framing == Framing::Done && !rest.is_empty(),
            pending: rest,
            framing,
        }
    }

    /// What arrived past the body's end (a pipelined next request), once the body is done.
    pub fn take_rest(&mut self) -> BytesMut {
        if self.is_done() {
            std::mem::take(&mut self.pending)
        } else {
            BytesMut::new()
        }
    }

    pub fn is_done(&self) -> bool {
        self.framing == Framing::Done
    }

    /// The connection may serve another request: the body was read to its end, nothing
    /// beyond it arrived (more bytes than framed mean the framing is not to be trusted) and
    /// the provider did not ask to close.
    pub fn reusable(&self) -> bool {
        self.is_done() && !self.overread && self.keep_alive
    }

    /// The next piece of the body; `Ok(None)` at its end.
    pub async fn next<S: AsyncRead + Unpin>(
        &mut self,
        io: &mut S,
    ) -> Result<Option<Bytes>, ReadError> {
        std::future::poll_fn(|cx| self.poll_next(io, cx)).await
    }

    /// The body bytes of what is buffered or can be read now, in one piece (a burst of
    /// chunks is one piece, its framing removed). Cancel-safe: nothing is read unless it is
    /// decoded in the same call.
    pub fn poll_next<S: AsyncRead + Unpin>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, ReadError>> {
        if !self.pending.is_empty() {
            let pending = std::mem::take(&mut self.pending);
            if let Some(piece) = self.decode(&pending)? {
                return Poll::Ready(Ok(Some(piece)));
            }
        }
        loop {
            if self.framing == Framing::Done {
                return Poll::Ready(Ok(None));
            }
            let mut space = [MaybeUninit::<u8>::uninit(); READ];
            let mut rb = ReadBuf::uninit(&mut space);
            ready!(poll_read(io, &mut rb, cx))?;
            let read = rb.filled();
            if read.is_empty() {
                if self.framing != Framing::Close {
                    return Poll::Ready(Err(ReadError::Closed));
                }
                self.framing = Framing::Done;
                continue;
            }
            let piece = if self.pending.is_empty() {
                self.decode(read)?
            } else {
                let mut joined = std::mem::take(&mut self.pending);
                joined.extend_from_slice(read);
                self.decode(&joined)?
            };
            if let Some(piece) = piece {
                return Poll::Ready(Ok(Some(piece)));
            }
        }
    }

    /// Runs the framing over `input`: its body bytes, copied out in one exact-size piece
    /// (`None` if it held none); an incomplete tail is kept in `pending` for the next read.
    fn decode(&mut self, mut input: &[u8]) -> Result<Option<Bytes>, ReadError> {
        let mut out: Vec<u8> = Vec::new();
        let mut data = |d: &[u8], left: usize| {
            if out.capacity() == 0 {
                out.reserve_exact(d.len() + left);
            }
            out.extend_from_slice(d);
        };
        while !input.is_empty() {
            match self.framing {
                Framing::Done => {
                    self.overread = true;
                    break;
                }
                Framing::Close => {
                    data(input, 0);
                    input = &[];
                }
                Framing::Length(left) => {
                    let n = input.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    data(&input[..n], 0);
                    input = &input[n..];
                    let left = left - n as u64;
                    self.framing = if left == 0 {
                        Framing::Done
                    } else {
                        Framing::Length(left)
                    };
                }
                Framing::Chunked(Chunk::Size) => match httparse::parse_chunk_size(input) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        input = &input[used..];
                        self.framing = Framing::Chunked(if size == 0 {
                            Chunk::Trailers(0)
                        } else {
                            Chunk::Data(size)
                        });
                    }
                    Ok(httparse::Status::Partial) if input.len() < MAX_CHUNK_LINE => break,
                    _ => return Err(ReadError::Protocol("invalid chunk size")),
                },
                Framing::Chunked(Chunk::Data(left)) => {
                    let n = input.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    // Room for the rest of this read too: later chunks of a burst join it.
                    data(&input[..n], input.len() - n);
                    input = &input[n..];
                    let left = left - n as u64;
                    self.framing = Framing::Chunked(if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    });
                }
                Framing::Chunked(Chunk::DataEnd) => {
                    if input.len() < 2 {
                        break;
                    }
                    if &input[..2] != b"\r\n" {
                        return Err(ReadError::Protocol("chunk data longer than its size"));
                    }
                    input = &input[2..];
                    self.framing = Framing::Chunked(Chunk::Size);
                }
                Framing::Chunked(Chunk::Trailers(seen)) => {
                    let Some(eol) = input.windows(2).position(|w| w == b"\r\n") else {
                        if seen + input.len() > MAX_TRAILERS {
                            return Err(ReadError::Protocol("trailers too large"));
                        }
                        break;
                    };
                    input = &input[eol + 2..];
                    // An empty line ends the message.
                    self.framing = if eol == 0 {
                        Framing::Done
                    } else {
                        Framing::Chunked(Chunk::Trailers(seen + eol + 2))
                    };
                }
            }
        }
        if !input.is_empty() {
            self.pending.extend_from_slice(input);
        }
        Ok((!out.is_empty()).then(|| Bytes::from(out)))
    }
}
