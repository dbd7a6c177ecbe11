//! Envelope encryption in one call: records and fields in memory, files and
//! pipes as streams in constant memory, and byte ranges of a file.
//!
//! Every message gets a fresh data key from the daemon (or, with the cache
//! on, a recently issued one), wrapped under one to eight CMKs; the format
//! is in [`crate::format`] and `docs/FORMAT.md`.

use std::io::SeekFrom;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeek, AsyncSeekExt, AsyncWrite, AsyncWriteExt};
use zeroize::Zeroizing;

use crate::cache::Lease;
use crate::client::{Client, DataKey};
use crate::error::{Error, MessageError};
use crate::format::{
    self, encode_context, Context, Header, HeaderParser, Layout, MessageKeys, COMMITMENT,
    MAX_RECIPIENTS, SALT, SEALED_SEGMENT, SEGMENT, TAG,
};

/// Output is written in batches of this many segments.
const BATCH: usize = 16;

/// The data key for one message and the wrapped copies that go in its
/// header.
struct Material {
    key: Arc<DataKey>,
    blobs: Arc<Vec<Vec<u8>>>,
    lease: Option<Lease>,
}

impl Material {
    /// Whether output made with this key may still be released.
    fn check(&self) -> Result<(), Error> {
        check_lease(&self.lease)
    }
}

/// What `inspect` reads from a message without decrypting it.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// The parsed header.
    pub header: Header,
    /// The message's total length in bytes.
    pub total_len: u64,
    /// Segments, the final short one included.
    pub segments: u64,
    /// The plaintext's length, implied by the message's length.
    pub plaintext_len: u64,
}

fn random_salt() -> Result<[u8; SALT], Error> {
    let mut salt = [0u8; SALT];
    getrandom::fill(&mut salt).map_err(|e| Error::Io(std::io::Error::other(e.to_string())))?;
    Ok(salt)
}

fn check_keys(keys: &[&str]) -> Result<(), Error> {
    if keys.is_empty() || keys.len() > MAX_RECIPIENTS {
        return Err(Error::Usage {
            field: "keys",
            reason: format!(
                "{} keys; a message is wrapped under 1 to {MAX_RECIPIENTS}",
                keys.len()
            ),
        });
    }
    for (i, k) in keys.iter().enumerate() {
        if keys[..i].contains(k) {
            return Err(Error::Usage {
                field: "keys",
                reason: format!("key {k:?} is named twice"),
            });
        }
    }
    Ok(())
}

/// Fills `buf` from `r` until it is full or the input ends; returns the
/// bytes read.
async fn read_full<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Result<usize, Error> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]).await? {
            0 => break,
            m => n += m,
        }
    }
    Ok(n)
}

impl Client {
    /// A data key for a new message under `keys`: the first key generates
    /// it, the others rewrap the same key (the plaintext never crosses the
    /// socket again). With the cache on, records reuse a recent one.
    async fn encryption_material(
        &self,
        keys: &[&str],
        ctx: &Context,
        bytes: Option<u64>,
    ) -> Result<Material, Error> {
        check_keys(keys)?;
        let ctx_bytes = encode_context(ctx);
        if let (Some(cache), Some(bytes)) = (&self.cache, bytes) {
            if let Some(lease) = cache.take_encrypt(keys, &ctx_bytes, bytes) {
                return Ok(Material {
                    key: lease.key.clone(),
                    blobs: lease.blobs.clone(),
                    lease: Some(lease),
                });
            }
        }
        let ticket = self.cache.as_ref().map(|c| c.ticket());
        let first = self.generate_data_key(keys[0], ctx).await?;
        let mut blobs = vec![first.ciphertext_blob];
        let mut ids = vec![first.key_id];
        for k in &keys[1..] {
            let rw = self.reencrypt(&blobs[0], ctx, Some(k)).await?;
            blobs.push(rw.wrapped.ciphertext_blob);
            ids.push(rw.wrapped.key_id);
        }
        let (key, blobs) = match (&self.cache, ticket, bytes) {
            (Some(cache), Some(ticket), Some(bytes)) => {
                let fetched = crate::cache::Fetched {
                    key: first.plaintext,
                    blobs,
                    key_ids: ids,
                };
                match cache.put_encrypt(ticket, keys, &ctx_bytes, bytes, fetched) {
                    Ok(lease) => {
                        return Ok(Material {
                            key: lease.key.clone(),
                            blobs: lease.blobs.clone(),
                            lease: Some(lease),
                        })
                    }
                    // Not cached (the cache is not live, or a key changed
                    // meanwhile): this message only, as without a cache.
                    Err(back) => back,
                }
            }
            _ => (first.plaintext, blobs),
        };
        Ok(Material {
            key: Arc::new(key),
            blobs: Arc::new(blobs),
            lease: None,
        })
    }

    /// Unwraps the data key of a message through the first recipient the
    /// caller may open, and checks the message's key commitment with it.
    async fn decryption_keys(
        &self,
        header: &Header,
        salt: &[u8; SALT],
        commitment: &[u8],
        ctx: &Context,
    ) -> Result<(MessageKeys, Option<Lease>), Error> {
        let ctx_bytes = encode_context(ctx);
        let mut failures: Vec<Error> = Vec::new();
        for blob in header.recipients() {
            let cached = self
                .cache
                .as_ref()
                .and_then(|c| c.take_decrypt(blob, &ctx_bytes));
            // Taken before the fetch: a change that arrives meanwhile keeps
            // the answer out of the cache.
            let ticket = self.cache.as_ref().map(|c| c.ticket());
            let (key, lease) = match cached {
                Some(lease) => (lease.key.clone(), Some(lease)),
                None => match self.decrypt_data_key(blob, ctx).await {
                    Ok(d) => match (&self.cache, ticket) {
                        (Some(c), Some(t)) => {
                            match c.put_decrypt(t, blob, &ctx_bytes, d.plaintext, d.key_id) {
                                Ok(lease) => (lease.key.clone(), Some(lease)),
                                Err(key) => (Arc::new(key), None),
                            }
                        }
                        _ => (Arc::new(d.plaintext), None),
                    },
                    // The daemon itself cannot serve: no other recipient
                    // would fare better.
                    Err(
                        e @ (Error::Sealed { .. }
                        | Error::Uninitialized { .. }
                        | Error::Unavailable { .. }
                        | Error::Connect(_)
                        | Error::DataLoss { .. }),
                    ) => return Err(e),
                    Err(e) => {
                        failures.push(e);
                        continue;
                    }
                },
            };
            let keys = MessageKeys::derive(key.expose(), salt, header.as_bytes(), ctx)?;
            keys.check_commitment(commitment)?;
            return Ok((keys, lease));
        }
        if failures.len() == 1 {
            if let Some(e) = failures.pop() {
                return Err(e);
            }
        }
        Err(MessageError::NoRecipient(failures.iter().map(|e| e.to_string()).collect()).into())
    }

    /// Encrypts a record or field under `keys` (one to eight CMK names; any
    /// one of them opens it), bound to `ctx`.
    ///
    /// ```no_run
    /// # async fn demo(client: keywarden_client::Client) -> Result<(), keywarden_client::Error> {
    /// use keywarden_client::Context;
    /// let ctx = Context::from([("patient".to_string(), "p-1001".to_string())]);
    /// let sealed = client.encrypt(&["clinic"], &ctx, b"blood type: AB-").await?;
    /// let opened = client.decrypt(&ctx, &sealed).await?;
    /// assert_eq!(&opened[..], b"blood type: AB-");
    /// # Ok(()) }
    /// ```
    pub async fn encrypt(
        &self,
        keys: &[&str],
        ctx: &Context,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, Error> {
        let m = self
            .encryption_material(keys, ctx, Some(plaintext.len() as u64))
            .await?;
        let header = Header::new(m.blobs.to_vec())?;
        let out = format::seal_message(m.key.expose(), &header, &random_salt()?, ctx, plaintext)?;
        m.check()?;
        Ok(out)
    }

    /// Decrypts a record made by [`encrypt`](Self::encrypt) with the same
    /// context. Nothing is returned unless every segment verified.
    pub async fn decrypt(
        &self,
        ctx: &Context,
        message: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        let p = format::split_message(message)?;
        let (keys, lease) = self
            .decryption_keys(&p.header, &p.salt, p.commitment, ctx)
            .await?;
        let out = format::open_body(&keys, p.body, p.plain_len)?;
        check_lease(&lease)?;
        Ok(out)
    }

    /// Encrypts everything `reader` yields into `writer`, in constant memory
    /// (about 600 KiB whatever the size); returns the plaintext length.
    /// Streams always take a fresh data key (one daemon call per stream).
    pub async fn encrypt_stream<R, W>(
        &self,
        keys: &[&str],
        ctx: &Context,
        mut reader: R,
        mut writer: W,
    ) -> Result<u64, Error>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let m = self.encryption_material(keys, ctx, None).await?;
        let header = Header::new(m.blobs.to_vec())?;
        let salt = random_salt()?;
        let keys = MessageKeys::derive(m.key.expose(), &salt, header.as_bytes(), ctx)?;
        let mut out = Vec::with_capacity(
            header.as_bytes().len() + SALT + COMMITMENT + BATCH * SEALED_SEGMENT,
        );
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&salt);
        out.extend_from_slice(keys.commitment());
        let mut index = 0u64;
        let mut total = 0u64;
        loop {
            let start = out.len();
            out.resize(start + SEGMENT, 0);
            let n = read_full(&mut reader, &mut out[start..]).await?;
            out.truncate(start + n);
            keys.seal_segment(index, &mut out, start)?;
            total += n as u64;
            // A full segment is never the last: the last is always short.
            let last = n < SEGMENT;
            if last || out.len() >= BATCH * SEALED_SEGMENT {
                writer.write_all(&out).await?;
                out.clear();
            }
            if last {
                break;
            }
            index += 1;
        }
        writer.flush().await?;
        Ok(total)
    }

    /// Decrypts a stream made by [`encrypt_stream`](Self::encrypt_stream) or
    /// [`encrypt`](Self::encrypt) into `writer`, in constant memory. Output
    /// is written as segments verify: on an error, what was written must be
    /// discarded (the error says so). Returns the plaintext length.
    pub async fn decrypt_stream<R, W>(
        &self,
        ctx: &Context,
        mut reader: R,
        mut writer: W,
    ) -> Result<u64, Error>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let header = read_header(&mut reader).await?;
        let (salt, commitment) = read_salt_and_commitment(&mut reader).await?;
        let (keys, lease) = self
            .decryption_keys(&header, &salt, &commitment, ctx)
            .await?;
        let mut out = Zeroizing::new(Vec::with_capacity(BATCH * SEALED_SEGMENT));
        let mut index = 0u64;
        let mut total = 0u64;
        loop {
            let start = out.len();
            out.resize(start + SEALED_SEGMENT, 0);
            let n = read_full(&mut reader, &mut out[start..]).await?;
            if n < TAG {
                out.truncate(start);
                return Err(MessageError::Truncated { segments: index }.into());
            }
            let plain = keys.open_segment(index, &mut out[start..start + n])?;
            out.truncate(start + plain);
            total += plain as u64;
            let last = n < SEALED_SEGMENT;
            if last || out.len() >= (BATCH - 1) * SEALED_SEGMENT {
                check_lease(&lease)?;
                writer.write_all(&out).await?;
                out.clear();
            }
            if last {
                break;
            }
            index += 1;
        }
        writer.flush().await?;
        Ok(total)
    }

    /// Decrypts `len` plaintext bytes from `offset` of a message in a
    /// seekable `reader`, reading only the segments that hold them (and the
    /// final segment, which authenticates the length). Returns the bytes
    /// written (fewer than `len` at the end of the plaintext). On an error,
    /// discard what was written.
    pub async fn decrypt_range<R, W>(
        &self,
        ctx: &Context,
        mut reader: R,
        offset: u64,
        len: u64,
        mut writer: W,
    ) -> Result<u64, Error>
    where
        R: AsyncRead + AsyncSeek + Unpin,
        W: AsyncWrite + Unpin,
    {
        reader.seek(SeekFrom::Start(0)).await?;
        let header = read_header(&mut reader).await?;
        let (salt, commitment) = read_salt_and_commitment(&mut reader).await?;
        let layout = Layout {
            header_len: header.as_bytes().len() as u64,
            total_len: reader.seek(SeekFrom::End(0)).await?,
        };
        let (segments, plain_len) = layout.segments()?;
        if offset > plain_len {
            return Err(MessageError::Range {
                offset,
                length: plain_len,
            }
            .into());
        }
        let (keys, lease) = self
            .decryption_keys(&header, &salt, &commitment, ctx)
            .await?;
        let mut buf = Zeroizing::new(vec![0u8; SEALED_SEGMENT]);
        // The final segment first: it proves the length.
        let last = segments - 1;
        let last_len = (layout.total_len - layout.segment_offset(last)) as usize;
        reader
            .seek(SeekFrom::Start(layout.segment_offset(last)))
            .await?;
        reader.read_exact(&mut buf[..last_len]).await?;
        keys.open_segment(last, &mut buf[..last_len])?;
        let end = offset.saturating_add(len).min(plain_len);
        if end <= offset {
            return Ok(0);
        }
        let mut written = 0u64;
        for index in offset / SEGMENT as u64..=(end - 1) / SEGMENT as u64 {
            let sealed_len = if index == last {
                last_len
            } else {
                SEALED_SEGMENT
            };
            reader
                .seek(SeekFrom::Start(layout.segment_offset(index)))
                .await?;
            reader.read_exact(&mut buf[..sealed_len]).await?;
            let n = keys.open_segment(index, &mut buf[..sealed_len])? as u64;
            let seg_start = index * SEGMENT as u64;
            let from = offset.max(seg_start) - seg_start;
            let to = end.min(seg_start + n) - seg_start;
            check_lease(&lease)?;
            writer.write_all(&buf[from as usize..to as usize]).await?;
            written += to - from;
        }
        writer.flush().await?;
        Ok(written)
    }
}

/// Refuses to release output made with a cached key revoked meanwhile.
fn check_lease(lease: &Option<Lease>) -> Result<(), Error> {
    match lease {
        Some(l) if !l.valid() => Err(Error::FailedPrecondition {
            key_state: None,
            message: "the cached data key was revoked while in use (its CMK changed, or the daemon stopped answering); discard any output already written".into(),
        }),
        _ => Ok(()),
    }
}

async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<Header, Error> {
    let mut p = HeaderParser::default();
    let mut buf = Vec::new();
    loop {
        let need = p.need();
        if need == 0 {
            return Ok(p.finish()?);
        }
        buf.resize(need, 0);
        if read_full(r, &mut buf).await? < need {
            return Err(MessageError::TruncatedHeader { field: "header" }.into());
        }
        p.feed(&buf)?;
    }
}

async fn read_salt_and_commitment<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<([u8; SALT], [u8; COMMITMENT]), Error> {
    let mut b = [0u8; SALT + COMMITMENT];
    if read_full(r, &mut b).await? < b.len() {
        return Err(MessageError::TruncatedHeader {
            field: "salt and commitment",
        }
        .into());
    }
    let mut salt = [0u8; SALT];
    salt.copy_from_slice(&b[..SALT]);
    let mut c = [0u8; COMMITMENT];
    c.copy_from_slice(&b[SALT..]);
    Ok((salt, c))
}

/// Reads a message's header and length without decrypting it and without
/// any context (what `keywarden inspect` shows). Reads the input to its
/// end to learn the length, in constant memory.
pub async fn inspect<R: AsyncRead + Unpin>(mut reader: R) -> Result<Inspection, Error> {
    let header = read_header(&mut reader).await?;
    let mut total = header.as_bytes().len() as u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf).await? {
            0 => break,
            n => total += n as u64,
        }
    }
    let layout = Layout {
        header_len: header.as_bytes().len() as u64,
        total_len: total,
    };
    let (segments, plaintext_len) = layout.segments()?;
    Ok(Inspection {
        header,
        total_len: total,
        segments,
        plaintext_len,
    })
}
