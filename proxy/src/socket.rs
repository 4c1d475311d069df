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
    /// (The socket's own read-readiness slot, the one its reads wait in, rather than
    /// `readable()`, whose future links a waiter into the socket's list and unlinks it when
    /// dropped: more work per request, for a wait only one task ever does.)
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            SocketRead::Plain(read) => {
                let stream: &TcpStream = read.as_ref();
                std::future::poll_fn(|cx| stream.poll_read_ready(cx)).await
            }
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

impl SocketWrite {
    /// Writes all of `bytes`. In clear text a socket nearly always takes a request or an
    /// answer whole at once: one `send` tried straight away, no write future made and polled;
    /// what it did not take (and everything over TLS) goes as `write_all` sends it.
    pub async fn send_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut rest = bytes;
        if let SocketWrite::Plain(write) = self {
            match write.try_write(rest) {
                Ok(sent) => rest = rest.get(sent..).unwrap_or_default(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if rest.is_empty() {
                return Ok(());
            }
        }
        tokio::io::AsyncWriteExt::write_all(self, rest).await
    }

    /// Flushes what TLS holds back; nothing to do in clear text.
    pub async fn flush_tls(&mut self) -> io::Result<()> {
        match self {
            SocketWrite::Plain(_) => Ok(()),
            SocketWrite::Tls(write) => tokio::io::AsyncWriteExt::flush(write).await,
        }
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

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    /// More than a small socket buffer takes at once goes out whole and in order: the first
    /// `send` takes part of it, the rest waits for room.
    #[tokio::test]
    async fn send_all_writes_what_the_socket_takes_and_then_the_rest() -> io::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let client = TcpStream::connect(listener.local_addr()?).await?;
        let (server, _) = listener.accept().await?;
        socket2::SockRef::from(&client).set_send_buffer_size(4096)?;
        socket2::SockRef::from(&server).set_recv_buffer_size(65536)?;
        let message: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let (mut read, _write) = plain(server);
        let reader = tokio::spawn(async move {
            let mut received = Vec::new();
            read.read_to_end(&mut received).await.map(|_| received)
        });
        let (_read, mut write) = plain(client);
        write.send_all(&message).await?;
        write.flush_tls().await?;
        drop(write);
        let received = reader.await.map_err(io::Error::other)??;
        assert_eq!(received.len(), message.len());
        assert!(
            received == message,
            "the bytes arrived changed or out of order"
        );
        Ok(())
    }

    /// The readiness wait returns once the peer has sent something, and the bytes are there.
    #[tokio::test]
    async fn readable_waits_for_the_peer() -> io::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let client = TcpStream::connect(listener.local_addr()?).await?;
        let (server, _) = listener.accept().await?;
        let (mut read, _server_write) = plain(server);
        let (_client_read, mut write) = plain(client);
        let mut buf = [0u8; 8];
        assert_eq!(
            read.try_read(&mut buf).map_err(|e| e.kind()),
            Err(io::ErrorKind::WouldBlock)
        );
        let waiting = tokio::spawn(async move {
            read.readable().await?;
            let mut buf = [0u8; 8];
            let n = read.try_read(&mut buf)?;
            Ok::<_, io::Error>(buf[..n].to_vec())
        });
        tokio::task::yield_now().await;
        write.send_all(b"hello").await?;
        assert_eq!(waiting.await.map_err(io::Error::other)??, b"hello");
        Ok(())
    }
}
