//! Reading a request body up to a limit, whether it comes with a `Content-Length` or
//! chunked, so that a refusal past the limit is one the client gets to read.
//!
//! A client that writes its whole request before reading the answer never sees a refusal
//! sent while most of its body is still unread: the server closes a connection with unread
//! input, the kernel resets it, and the reset discards the answer. So past the limit the
//! rest of the body is read and discarded, up to [`DRAIN_LIMIT`], before the refusal.

use bytes::{Buf, Bytes, BytesMut};
use common::validate::{Code, ProtocolError};
use futures::{Stream, StreamExt};

/// Most bytes of a refused body read (and discarded) before answering; a larger body gets
/// its answer with the connection closed. The body timeout bounds how long it takes.
pub const DRAIN_LIMIT: usize = 4 * 1024 * 1024;

/// Why a body was not read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Longer than the limit (its rest drained, up to [`DRAIN_LIMIT`]).
    TooBig,
    /// The connection failed, or the chunked encoding is broken.
    Unreadable,
}

impl BodyError {
    /// The protocol error a client is answered for it.
    pub fn protocol_error(self) -> ProtocolError {
        match self {
            BodyError::TooBig => ProtocolError::new(Code::TooBig, "body too big"),
            BodyError::Unreadable => {
                ProtocolError::new(Code::Generic, "the body could not be read")
            }
        }
    }
}

/// The whole body if it is at most `limit` bytes.
pub async fn read_body<S, B>(body: &mut S, limit: usize) -> Result<Bytes, BodyError>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let mut read = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|_| BodyError::Unreadable)?;
        if read.len() + chunk.remaining() > limit {
            let seen = read.len() + chunk.remaining();
            drain(body, DRAIN_LIMIT.saturating_sub(seen)).await;
            return Err(BodyError::TooBig);
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            read.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(read.freeze())
}

/// Reads and discards what is left of a body, up to `most` bytes, so that an answer sent
/// before reading it (a refusal) reaches the client.
pub async fn drain<S, B>(body: &mut S, most: usize)
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let mut left = most;
    while left > 0 {
        match body.next().await {
            Some(Ok(chunk)) => left = left.saturating_sub(chunk.remaining()),
            // The end, or a connection that failed: nothing more to read either way.
            Some(Err(_)) | None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(sizes: &[usize]) -> impl Stream<Item = Result<Bytes, warp::Error>> + Unpin {
        futures::stream::iter(
            sizes
                .iter()
                .map(|&n| Ok(Bytes::from(vec![7u8; n])))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn up_to_the_limit_across_chunks() {
        let body = read_body(&mut chunks(&[3, 4, 3]), 10).await;
        assert_eq!(body.map(|b| b.len()), Ok(10));
    }

    #[tokio::test]
    async fn past_the_limit_the_rest_is_drained() {
        let mut body = chunks(&[6, 6, 6, 6]);
        assert_eq!(read_body(&mut body, 10).await, Err(BodyError::TooBig));
        assert!(body.next().await.is_none(), "read to its end");
    }

    #[tokio::test]
    async fn draining_stops_at_its_bound() {
        let mut body = chunks(&[4, 4, 4, 4]);
        drain(&mut body, 8).await;
        assert!(body.next().await.is_some(), "left unread past the bound");
    }
}
