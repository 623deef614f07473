//! Plain HTTP/1.1 keep-alive connections, parked while idle.
//!
//! hyper keeps a connection's buffers for its whole life: an 8 KiB read buffer, an
//! 8 KiB buffer for response heads, its dispatcher's state, so an idle keep-alive
//! connection held some 40 KiB of the gateway's memory (nginx: 0.5 KiB). A
//! connection idle for [`PARK_AFTER`] is parked instead: hyper is told to stop at
//! the idle point and hands back the socket and any bytes it had read ahead;
//! everything else is freed. The socket is then only watched for readability, and
//! the next request starts a fresh hyper connection on it, the bytes read ahead
//! first ([`Rewind`]). A connection that is busy is never parked, so a steady
//! stream of requests pays nothing for this; a connection parked and woken pays
//! one hyper connection set-up.
//!
//! Only plain TCP: under TLS, rustls may hold decrypted bytes that socket
//! readability would not show, so TLS connections keep hyper's buffers.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Activity;

/// How long an HTTP/1.1 connection is idle (no request in flight, no answer being
/// written) before it is parked.
pub const PARK_AFTER: Duration = Duration::from_secs(2);

/// An IO that first yields `pre` (bytes read ahead by an earlier hyper connection),
/// then reads from `inner`; writes go straight to `inner`. Every read that yields
/// bytes is told to the connection's [`Activity`] (a request head's clock).
pub struct Rewind<I> {
    pre: Bytes,
    pub inner: I,
    activity: Arc<Activity>,
}

impl<I> Rewind<I> {
    pub(super) fn new(pre: Bytes, inner: I, activity: Arc<Activity>) -> Rewind<I> {
        Rewind {
            pre,
            inner,
            activity,
        }
    }

    /// Bytes read ahead and not yet handed out.
    pub fn has_buffered(&self) -> bool {
        !self.pre.is_empty()
    }

    /// The IO and what is still read ahead.
    pub fn into_parts(self) -> (Bytes, I) {
        (self.pre, self.inner)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            self.activity.note_read();
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.note_read();
        }
        read
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What a parked connection has read ahead: hyper's unparsed `read_buf`, then
/// what is `unread` of the [`Rewind`] it was given. Copied out (and both dropped
/// here): `read_buf` is a view of hyper's 8 KiB read buffer and would keep all of
/// it alive for as long as the connection is parked.
pub fn read_ahead(read_buf: Bytes, unread: Bytes) -> Bytes {
    if read_buf.is_empty() && unread.is_empty() {
        return Bytes::new();
    }
    let mut both = Vec::with_capacity(read_buf.len() + unread.len());
    both.extend_from_slice(&read_buf);
    both.extend_from_slice(&unread);
    Bytes::from(both)
}

/// What the client's first bytes say the protocol is (plain listeners).
#[derive(Debug, PartialEq, Eq)]
pub enum Sniffed {
    Http1,
    /// The HTTP/2 connection preface (h2c with prior knowledge).
    Http2,
    /// Too few bytes yet to tell (a prefix of the preface).
    Unsure,
}

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// `PRI` is no HTTP/1.1 method, so bytes that stray from the preface are HTTP/1.
pub fn sniff(first: &[u8]) -> Sniffed {
    let n = first.len().min(PREFACE.len());
    if first[..n] != PREFACE[..n] {
        Sniffed::Http1
    } else if n == PREFACE.len() {
        Sniffed::Http2
    } else {
        Sniffed::Unsure
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn the_preface_is_http2_and_anything_else_http1() {
        assert_eq!(sniff(PREFACE), Sniffed::Http2);
        assert_eq!(
            sniff(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nmore"),
            Sniffed::Http2
        );
        assert_eq!(sniff(b"POST /api HTTP/1.1\r\n"), Sniffed::Http1);
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Sniffed::Http1);
        assert_eq!(sniff(b"PRI * HTTP/1.1\r\n"), Sniffed::Http1);
        assert_eq!(sniff(b"P"), Sniffed::Unsure);
        assert_eq!(sniff(b"PRI * HT"), Sniffed::Unsure);
        assert_eq!(sniff(b"PA"), Sniffed::Http1);
    }

    #[test]
    fn read_ahead_keeps_the_order_and_none_of_hypers_buffer() {
        let mut hyper_buf = bytes::BytesMut::with_capacity(8192);
        hyper_buf.extend_from_slice(b"GET / HT");
        let read_buf = hyper_buf.freeze();
        let probe = read_buf.clone();
        let ahead = read_ahead(read_buf, Bytes::new());
        assert_eq!(&ahead[..], b"GET / HT");
        // A copy of its own: nothing but `probe` holds the 8 KiB buffer now.
        assert!(probe.is_unique());
        let both = read_ahead(probe, Bytes::from_static(b"TP/1.1\r\n"));
        assert_eq!(&both[..], b"GET / HTTP/1.1\r\n");
        assert!(read_ahead(Bytes::new(), Bytes::new()).is_empty());
    }

    #[tokio::test]
    async fn rewind_reads_what_was_read_ahead_first_then_the_socket() {
        let (client, mut server) = tokio::io::duplex(64);
        let activity = Arc::new(Activity::new());
        let mut io = Rewind::new(Bytes::from_static(b"GET / HT"), client, activity.clone());
        assert!(io.has_buffered());
        server.write_all(b"TP/1.1\r\n").await.unwrap();
        let mut got = vec![0u8; 16];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"GET / HTTP/1.1\r\n");
        assert!(!io.has_buffered());
        // What it handed out started a request head's clock.
        assert!(activity.head_deadline(Duration::from_secs(1)).is_some());
        io.write_all(b"answer").await.unwrap();
        let mut back = [0u8; 6];
        server.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"answer");
    }
}
