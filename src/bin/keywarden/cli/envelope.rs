//! `keywarden encrypt`, `decrypt` and `inspect`: envelope messages from
//! files and pipes, any size, in constant memory (the client SDK does the
//! work; see docs/ENVELOPE.md).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _};
use clap::Args;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, BufReader, BufWriter};

use super::{out, parse_context, print_json, Output};
use keywarden_client::{format, Client, Context};

/// Bytes read from, or written to, the OS at a time.
const IO_BUF: usize = 1 << 20;

#[derive(Debug, Args)]
pub struct EncryptArgs {
    /// A CMK to wrap the data key under; repeat for more recipients (up to
    /// 8: any one of them opens the message).
    #[arg(long = "key", required = true, value_name = "NAME")]
    pub keys: Vec<String>,
    /// Encryption context pair, repeatable; the same pairs are needed to
    /// decrypt. They are not stored in the message.
    #[arg(long = "context", value_name = "KEY=VALUE")]
    pub context: Vec<String>,
    /// Input file (default: stdin).
    #[arg(short = 'i', long = "input", value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Output file (default: stdout); written to a temporary file in the
    /// same directory and renamed when complete.
    #[arg(
        id = "output_file",
        short = 'o',
        long = "output-file",
        value_name = "FILE"
    )]
    pub out_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DecryptArgs {
    /// Encryption context pair, repeatable: exactly the pairs it was
    /// encrypted with.
    #[arg(long = "context", value_name = "KEY=VALUE")]
    pub context: Vec<String>,
    /// Input file (default: stdin).
    #[arg(short = 'i', long = "input", value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Output file (default: stdout). A file appears only once the last
    /// segment verified; on stdout, output written before an error must
    /// be discarded.
    #[arg(
        id = "output_file",
        short = 'o',
        long = "output-file",
        value_name = "FILE"
    )]
    pub out_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Input file (default: stdin).
    #[arg(short = 'i', long = "input", value_name = "FILE")]
    pub input: Option<PathBuf>,
}

fn context(pairs: &[String]) -> anyhow::Result<Context> {
    Ok(parse_context(pairs)?.into_iter().collect())
}

async fn input(path: &Option<PathBuf>) -> anyhow::Result<Box<dyn AsyncRead + Unpin + Send>> {
    Ok(match path {
        None => Box::new(BufReader::with_capacity(IO_BUF, tokio::io::stdin())),
        Some(p) if p == Path::new("-") => {
            Box::new(BufReader::with_capacity(IO_BUF, tokio::io::stdin()))
        }
        Some(p) => Box::new(BufReader::with_capacity(
            IO_BUF,
            tokio::fs::File::open(p)
                .await
                .with_context(|| format!("--input {}", p.display()))?,
        )),
    })
}

/// Runs `work` into stdout, or into a temporary file beside `path` that is
/// renamed over it only when `work` succeeded (and removed otherwise).
async fn with_output<F, Fut>(path: &Option<PathBuf>, work: F) -> anyhow::Result<u64>
where
    F: FnOnce(Box<dyn AsyncWrite + Unpin + Send>) -> Fut,
    Fut: std::future::Future<Output = Result<u64, keywarden_client::Error>>,
{
    match path {
        None => Ok(work(Box::new(BufWriter::with_capacity(
            IO_BUF,
            tokio::io::stdout(),
        )))
        .await?),
        Some(p) if p == Path::new("-") => Ok(work(Box::new(BufWriter::with_capacity(
            IO_BUF,
            tokio::io::stdout(),
        )))
        .await?),
        Some(p) => {
            let dir = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            // Created 0600 by tempfile; removed on drop unless persisted.
            let tmp = tempfile::Builder::new()
                .prefix(".keywarden-")
                .suffix(".partial")
                .tempfile_in(&dir)
                .with_context(|| {
                    format!("--output-file: cannot create a file in {}", dir.display())
                })?;
            let file = tokio::fs::File::from_std(tmp.reopen()?);
            let n = work(Box::new(BufWriter::with_capacity(IO_BUF, file))).await?;
            tmp.as_file().sync_all()?;
            tmp.persist(p)
                .map_err(|e| anyhow!("--output-file {}: {}", p.display(), e.error))?;
            Ok(n)
        }
    }
}

pub async fn encrypt(socket: &Path, args: EncryptArgs) -> anyhow::Result<()> {
    let ctx = context(&args.context)?;
    let client = super::client(socket).await?;
    let reader = input(&args.input).await?;
    let keys: Vec<&str> = args.keys.iter().map(String::as_str).collect();
    with_output(&args.out_file, |w| async move {
        client.encrypt_stream(&keys, &ctx, reader, w).await
    })
    .await?;
    Ok(())
}

pub async fn decrypt(socket: &Path, args: DecryptArgs) -> anyhow::Result<()> {
    let ctx = context(&args.context)?;
    let client: Client = super::client(socket).await?;
    let reader = input(&args.input).await?;
    let to_stdout = args.out_file.is_none() || args.out_file.as_deref() == Some(Path::new("-"));
    match with_output(&args.out_file, |w| async move {
        client.decrypt_stream(&ctx, reader, w).await
    })
    .await
    {
        Ok(_) => Ok(()),
        Err(e) if to_stdout => {
            Err(e.context("decryption failed: discard everything already written to stdout"))
        }
        Err(e) => Err(e.context("decryption failed: no output file was written")),
    }
}

pub async fn inspect(args: InspectArgs, output: Output) -> anyhow::Result<()> {
    let reader = input(&args.input).await?;
    let i = keywarden_client::inspect(reader).await?;
    let recipients: Vec<serde_json::Value> = i
        .header
        .recipients()
        .iter()
        .map(|b| match format::blob_key(b) {
            Some((id, version)) => {
                json!({"key_id": id, "key_version": version, "blob_bytes": b.len()})
            }
            None => json!({"key_id": null, "key_version": null, "blob_bytes": b.len()}),
        })
        .collect();
    match output {
        Output::Json => print_json(&json!({
            "format": "keywarden envelope",
            "version": format::VERSION,
            "suite": format::SUITE_AES256GCM_C2SP,
            "suite_name": "AES-256-GCM, HKDF-SHA-256, C2SP chunked-encryption v1, key commitment",
            "segment_size": format::SEGMENT,
            "recipients": recipients,
            "header_bytes": i.header.as_bytes().len(),
            "total_bytes": i.total_len,
            "segments": i.segments,
            "plaintext_bytes": i.plaintext_len,
        }))?,
        Output::Text => {
            out!(
                "format:     keywarden envelope, version {}",
                format::VERSION
            );
            out!(
                "suite:      {} (AES-256-GCM, HKDF-SHA-256, C2SP chunked-encryption v1, key commitment)",
                format::SUITE_AES256GCM_C2SP
            );
            out!(
                "segments:   {} of {} bytes (the last shorter)",
                i.segments,
                format::SEGMENT
            );
            out!(
                "length:     {} bytes ({} of plaintext)",
                i.total_len,
                i.plaintext_len
            );
            for (n, r) in recipients.iter().enumerate() {
                out!(
                    "recipient {}: key id {} version {}",
                    n + 1,
                    r["key_id"].as_str().unwrap_or("(unrecognised blob)"),
                    r["key_version"]
                );
            }
        }
    }
    Ok(())
}
