//! A client's socket, in clear text or inside TLS, as the two halves the session reads and
//! writes through. An enum rather than a boxed trait object: the clear-text path stays a
//! direct call on the TCP socket.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// The half of a client's connection the proxy reads from.
#[derive(Debug)]
pub enum ClientRead {
    Plain(OwnedReadHalf),
    Tls(ReadHalf<TlsStream<TcpStream>>),
}

/// The half of a client's connection the proxy writes to.
#[derive(Debug)]
pub enum ClientWrite {
    Plain(OwnedWriteHalf),
    Tls(WriteHalf<TlsStream<TcpStream>>),
}

/// Splits a clear-text connection.
pub fn plain(stream: TcpStream) -> (ClientRead, ClientWrite) {
    let (read, write) = stream.into_split();
    (ClientRead::Plain(read), ClientWrite::Plain(write))
}

/// Splits an encrypted connection.
pub fn encrypted(stream: TlsStream<TcpStream>) -> (ClientRead, ClientWrite) {
    let (read, write) = tokio::io::split(stream);
    (ClientRead::Tls(read), ClientWrite::Tls(write))
}

impl ClientRead {
    /// Waits until the client may have sent something, without taking a buffer. A TLS
    /// connection may already hold decrypted bytes the socket no longer shows, so it returns
    /// at once (the read that follows waits instead).
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            ClientRead::Plain(read) => read.readable().await,
            ClientRead::Tls(_) => Ok(()),
        }
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientRead::Tls(_))
    }
}

impl AsyncRead for ClientRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientRead::Plain(read) => Pin::new(read).poll_read(cx, buf),
            ClientRead::Tls(read) => Pin::new(read).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientWrite::Plain(write) => Pin::new(write).poll_write(cx, buf),
            ClientWrite::Tls(write) => Pin::new(write).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientWrite::Plain(write) => Pin::new(write).poll_flush(cx),
            ClientWrite::Tls(write) => Pin::new(write).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientWrite::Plain(write) => Pin::new(write).poll_shutdown(cx),
            ClientWrite::Tls(write) => Pin::new(write).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientWrite::Plain(write) => Pin::new(write).poll_write_vectored(cx, bufs),
            ClientWrite::Tls(write) => Pin::new(write).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientWrite::Plain(write) => write.is_write_vectored(),
            ClientWrite::Tls(write) => write.is_write_vectored(),
        }
    }
}
