//! An application that depends on nothing but `keywarden-client`: it seals
//! a patient record, then streams `KEYWARDEN_EXAMPLE_MIB` MiB (default 64)
//! through `encrypt_stream` and straight back through `decrypt_stream`, in
//! constant memory, and checks the bytes came back the same.
//!
//! ```sh
//! keywarden dev &                       # prints KEYWARDEN_SOCKET
//! keywarden key create clinic
//! KEYWARDEN_EXAMPLE_KEY=clinic cargo run -p keywarden-client --example records
//! ```

use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use keywarden_client::{Client, Context, Error};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A deterministic source of `left` pseudo-random bytes, hashed as read.
struct Source {
    left: u64,
    state: u64,
    hash: Sha256,
}

impl AsyncRead for Source {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = (buf.remaining() as u64).min(self.left) as usize;
        let mut chunk = vec![0u8; n];
        for b in chunk.chunks_mut(8) {
            // xorshift64
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            let w = self.state.to_le_bytes();
            b.copy_from_slice(&w[..b.len()]);
        }
        self.hash.update(&chunk);
        buf.put_slice(&chunk);
        self.left -= n as u64;
        Poll::Ready(Ok(()))
    }
}

/// Hashes what is written to it.
struct Sink {
    bytes: u64,
    hash: Sha256,
}

impl AsyncWrite for Sink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.hash.update(buf);
        self.bytes += buf.len() as u64;
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let key = std::env::var("KEYWARDEN_EXAMPLE_KEY").unwrap_or_else(|_| "clinic".into());
    let mib: u64 = std::env::var("KEYWARDEN_EXAMPLE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let client = Client::from_env().await?;

    // A record: the context names what it is; it is needed to decrypt.
    let ctx = Context::from([
        ("patient".to_string(), "p-1001".to_string()),
        ("field".to_string(), "diagnosis".to_string()),
    ]);
    let sealed = client
        .encrypt(&[&key], &ctx, b"O24.4 gestational diabetes")
        .await?;
    let opened = client.decrypt(&ctx, &sealed).await?;
    if &opened[..] != b"O24.4 gestational diabetes" {
        return Err(Error::Usage {
            field: "record",
            reason: "came back different".into(),
        });
    }
    println!("record: ok ({} bytes sealed)", sealed.len());

    // A stream, encrypted into a pipe and decrypted out of it.
    let ctx = Context::from([("image".to_string(), "ultrasound-0042".to_string())]);
    let mut source = Source {
        left: mib << 20,
        state: 0x9e37_79b9_7f4a_7c15,
        hash: Sha256::new(),
    };
    let mut sink = Sink {
        bytes: 0,
        hash: Sha256::new(),
    };
    let (w, r) = tokio::io::duplex(1 << 20);
    let started = Instant::now();
    let (enc, dec) = tokio::join!(
        async {
            let mut w = w;
            let n = client
                .encrypt_stream(&[&key], &ctx, &mut source, &mut w)
                .await;
            drop(w);
            n
        },
        client.decrypt_stream(&ctx, r, &mut sink),
    );
    let (enc, dec) = (enc?, dec?);
    let secs = started.elapsed().as_secs_f64();
    if enc != dec || source.hash.finalize() != sink.hash.finalize() {
        return Err(Error::Usage {
            field: "stream",
            reason: "came back different".into(),
        });
    }
    println!("stream: {dec} bytes encrypted and decrypted in {secs:.1} s ({:.0} MiB/s each way, concurrently)", (dec as f64 / (1 << 20) as f64) / secs);
    Ok(())
}
