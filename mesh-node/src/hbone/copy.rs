//! Copying bytes between a TCP stream and an HTTP/2 CONNECT stream, both ways, with
//! half-close carried as END_STREAM and an abort carried as a stream reset / TCP RST.
use std::io;

use bytes::{Bytes, BytesMut};
use futures_util::future::poll_fn;
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

const CHUNK: usize = 64 * 1024;

/// Bytes carried each way: (tcp → h2, h2 → tcp). `tcp` is a TCP stream, or one wrapped
/// to count its bytes.
pub async fn bidirectional<S: AsyncRead + AsyncWrite + Unpin>(
    tcp: &mut S,
    send: SendStream<Bytes>,
    recv: RecvStream,
) -> io::Result<(u64, u64)> {
    let (r, w) = tokio::io::split(tcp);
    // The first error ends both directions (the other future is dropped).
    tokio::try_join!(tcp_to_h2(r, send), h2_to_tcp(recv, w))
}

fn h2_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        e.into_io().unwrap_or_else(|| io::Error::other("h2 i/o error"))
    } else if e.reason() == Some(h2::Reason::CANCEL) || e.is_reset() {
        io::Error::new(io::ErrorKind::ConnectionReset, e)
    } else {
        io::Error::other(e)
    }
}

async fn tcp_to_h2(mut r: impl AsyncRead + Unpin, mut send: SendStream<Bytes>) -> io::Result<u64> {
    let mut buf = BytesMut::with_capacity(CHUNK);
    let mut total = 0u64;
    loop {
        buf.reserve(CHUNK);
        let n = match r.read_buf(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                send.send_reset(h2::Reason::CANCEL);
                return Err(e);
            }
        };
        if n == 0 {
            // Half-close: the peer keeps sending to us until it closes too.
            send.send_data(Bytes::new(), true).map_err(h2_io)?;
            return Ok(total);
        }
        total += n as u64;
        let mut chunk = buf.split().freeze();
        while !chunk.is_empty() {
            send.reserve_capacity(chunk.len());
            let granted = poll_fn(|cx| send.poll_capacity(cx))
                .await
                .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "stream closed by peer"))?
                .map_err(h2_io)?;
            let part = chunk.split_to(granted.min(chunk.len()));
            send.send_data(part, false).map_err(h2_io)?;
        }
    }
}

async fn h2_to_tcp(mut recv: RecvStream, mut w: impl AsyncWrite + Unpin) -> io::Result<u64> {
    let mut total = 0u64;
    while let Some(data) = recv.data().await {
        let data = data.map_err(h2_io)?;
        w.write_all(&data).await?;
        total += data.len() as u64;
        // Only now that the bytes are handed on does the peer get window back:
        // backpressure from the TCP side reaches the sender.
        let _ = recv.flow_control().release_capacity(data.len());
    }
    w.shutdown().await?;
    Ok(total)
}
