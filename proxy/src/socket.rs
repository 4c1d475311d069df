//! A TCP connection in clear text or inside TLS (as a server towards clients, as a client
//! towards shards), as the two halves the proxy reads and writes through. An enum rather than
//! a boxed trait object: the clear-text path stays a direct call on the TCP socket.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::TlsStream;

use crate::protocol::FrameReader;

/// The half of a connection the proxy reads from.
#[derive(Debug)]
pub enum SocketRead {
    Plain(OwnedReadHalf),
    Tls(ReadHalf<TlsStream<TcpStream>>),
}

/// The half of a connection the proxy writes to.
#[derive(Debug)]
pub enum SocketWrite {
    Plain(OwnedWriteHalf),
    Tls(WriteHalf<TlsStream<TcpStream>>),
}

/// Splits a clear-text connection.
pub fn plain(stream: TcpStream) -> (SocketRead, SocketWrite) {
    let (read, write) = stream.into_split();
    (SocketRead::Plain(read), SocketWrite::Plain(write))
}

/// Splits an encrypted connection.
pub fn encrypted(stream: impl Into<TlsStream<TcpStream>>) -> (SocketRead, SocketWrite) {
    let stream = stream.into();
    let (read, write) = tokio::io::split(stream);
    (SocketRead::Tls(read), SocketWrite::Tls(write))
}

impl SocketRead {
    /// Waits until the peer may have sent something, without taking a buffer. A TLS
    /// connection may already hold decrypted bytes the socket no longer shows, so it returns
    /// at once (the read that follows waits instead).
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            SocketRead::Plain(read) => read.readable().await,
            SocketRead::Tls(_) => Ok(()),
        }
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, SocketRead::Tls(_))
    }

    /// Reads what has arrived without waiting: `WouldBlock` when nothing has.
    pub fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            SocketRead::Plain(read) => read.try_read(buf),
            SocketRead::Tls(read) => {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                let mut buf = ReadBuf::new(buf);
                match Pin::new(read).poll_read(&mut cx, &mut buf) {
                    Poll::Ready(Ok(())) => Ok(buf.filled().len()),
                    Poll::Ready(Err(e)) => Err(e),
                    Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
                }
            }
        }
    }
}

impl FrameReader<SocketRead> {
    /// Waits until the peer may have sent something, holding no read buffer meanwhile: it is
    /// given back first if nothing is in it. A client waiting between requests, or in the
    /// middle of logging in, then costs no buffer, and the read that follows takes one.
    /// (Over TLS it returns at once, as [`SocketRead::readable`] does, and the read waits.)
    pub async fn await_input(&mut self) -> io::Result<()> {
        if self.is_empty() {
            self.release();
            self.get_ref().readable().await?;
        }
        Ok(())
    }
}

impl AsyncRead for SocketRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SocketRead::Plain(read) => Pin::new(read).poll_read(cx, buf),
            SocketRead::Tls(read) => Pin::new(read).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for SocketWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SocketWrite::Plain(write) => Pin::new(write).poll_write(cx, buf),
            SocketWrite::Tls(write) => Pin::new(write).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SocketWrite::Plain(write) => Pin::new(write).poll_flush(cx),
            SocketWrite::Tls(write) => Pin::new(write).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SocketWrite::Plain(write) => Pin::new(write).poll_shutdown(cx),
            SocketWrite::Tls(write) => Pin::new(write).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SocketWrite::Plain(write) => Pin::new(write).poll_write_vectored(cx, bufs),
            SocketWrite::Tls(write) => Pin::new(write).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            SocketWrite::Plain(write) => write.is_write_vectored(),
            SocketWrite::Tls(write) => write.is_write_vectored(),
        }
    }
}
