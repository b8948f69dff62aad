//! HTTP/1.x on the wire, both halves: the client's requests (`request`, `server`) and the
//! providers' responses (`response`), with the body framing they share (`body`).
//!
//! Heads are parsed by `httparse` into one exact-size copy with header offsets (`Fields`): no
//! header map is built or hashed, and a value is shared with the head, never copied. Reads
//! land in stack space that lives only while a read is polled, so a connection that waits — a
//! stream between two events, a client between two requests — holds no read buffer.

pub mod body;
mod fields;
pub mod request;
pub mod response;
pub mod server;

pub use fields::{length_bit, FieldIter, Fields};

use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

/// What one read takes from a socket, in stack space: a burst of streamed events, a request
/// head, or a slice of a large body.
const READ: usize = 16 << 10;

/// Why a message could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// The socket failed.
    Io(std::io::ErrorKind),
    /// The peer closed the connection before the head or the framed body ended.
    Closed,
    /// What the peer sent is not valid HTTP/1.
    Protocol(&'static str),
}

/// One read into `rb`; nothing filled means the end of the stream.
fn poll_read<S: AsyncRead + Unpin>(
    io: &mut S,
    rb: &mut ReadBuf<'_>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), ReadError>> {
    Pin::new(io)
        .poll_read(cx, rb)
        .map_err(|e| ReadError::Io(e.kind()))
}

/// Whether the bytes just appended to a buffer (from `seen` on, which starts two bytes before
/// them) complete an empty line: only then is a head worth parsing again. A peer trickling its
/// head a byte at a time would otherwise cost a parse of the whole head per byte.
///
/// It stops at the first empty line, visiting only line ends (`memchr`): the buffer usually
/// holds a body after the head, and a byte-by-byte window scan of it was ~10% of the
/// instructions a proxied request cost.
fn ends_head(buf: &[u8], seen: usize) -> bool {
    let tail = &buf[seen..];
    memchr::memchr_iter(b'\n', tail)
        .any(|i| matches!(&tail[i + 1..], [b'\n', ..] | [b'\r', b'\n', ..]))
}

#[cfg(test)]
pub(crate) mod test_io {
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::AsyncRead;

    /// Hands out its bytes `step` at a time, then reports the end (or an error): every way a
    /// message can be split across reads.
    pub struct Trickle {
        pub data: Vec<u8>,
        pub at: usize,
        pub step: usize,
        pub fail_at_end: bool,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if self.at == self.data.len() && self.fail_at_end {
                return Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()));
            }
            let n = self
                .step
                .min(self.data.len() - self.at)
                .min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.data[at..at + n]);
            self.at += n;
            Poll::Ready(Ok(()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ends_head;

    #[test]
    fn an_empty_line_ends_a_head_wherever_the_reads_split_it() {
        let head = b"POST / HTTP/1.1\r\nhost: a\r\n\r\n{\"body\":\"\\n\"}";
        let end = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        for cut in 0..head.len() {
            // The bytes before `cut` were seen without an empty line; the rest arrive now.
            let seen = cut.saturating_sub(2);
            assert_eq!(ends_head(&head[..], seen), cut < end, "cut at {cut}");
        }
        assert!(ends_head(b"GET / HTTP/1.1\nhost: a\n\n", 0), "bare LF");
        assert!(ends_head(b"GET / HTTP/1.1\r\nhost: a\n\r\n", 0), "mixed");
        assert!(!ends_head(b"GET / HTTP/1.1\r\nhost: a\r\n\r", 0), "not yet");
        assert!(!ends_head(b"GET / HTTP/1.1\r\nhost: a\r\n", 0));
        assert!(!ends_head(b"", 0));
    }
}
