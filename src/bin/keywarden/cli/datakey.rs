//! `keywarden datakey ...`: envelope-encryption data keys.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use clap::Subcommand;
use serde_json::json;
use zeroize::Zeroizing;

use super::{client, out, parse_context, print_json, status_error, Output};
use keywarden::proto;

#[derive(Debug, Subcommand)]
pub enum DatakeyCommand {
    /// Generate a data key under a CMK; prints the plaintext key (base64)
    /// and the wrapped blob (base64).
    Generate {
        /// Name of the CMK.
        #[arg(long)]
        key: String,
        /// Encryption context pair KEY=VALUE (repeatable).
        #[arg(long = "context", value_name = "KEY=VALUE")]
        context: Vec<String>,
        /// Return only the wrapped blob.
        #[arg(long)]
        no_plaintext: bool,
    },
    /// Unwrap a blob (base64, from stdin unless --ciphertext) and print the
    /// plaintext data key (base64).
    Decrypt {
        #[arg(long = "context", value_name = "KEY=VALUE")]
        context: Vec<String>,
        /// The wrapped blob in base64; read from stdin when absent.
        #[arg(long)]
        ciphertext: Option<String>,
        /// Require the blob to be under this key.
        #[arg(long)]
        key: Option<String>,
    },
    /// Rewrap a blob (base64, from stdin unless --ciphertext) under the
    /// newest version of its key or of --to-key, without the plaintext
    /// leaving the daemon.
    Rewrap {
        #[arg(long = "context", value_name = "KEY=VALUE")]
        context: Vec<String>,
        #[arg(long)]
        ciphertext: Option<String>,
        /// Destination key (default: the blob's own key).
        #[arg(long)]
        to_key: Option<String>,
        /// New context for the new blob (default: keep the old one).
        #[arg(long = "new-context", value_name = "KEY=VALUE")]
        new_context: Vec<String>,
    },
}

fn read_blob(arg: Option<String>) -> anyhow::Result<Vec<u8>> {
    let text = match arg {
        Some(t) => t,
        None => {
            let mut s = String::new();
            std::io::stdin()
                .take(1 << 20)
                .read_to_string(&mut s)
                .context("reading the blob from stdin")?;
            s
        }
    };
    let compact: String = text.split_whitespace().collect();
    if compact.is_empty() {
        bail!("no ciphertext: pass --ciphertext or pipe the base64 blob to stdin");
    }
    B64.decode(compact.as_bytes())
        .context("ciphertext is not valid base64")
}

pub async fn run(socket: &Path, output: Output, cmd: DatakeyCommand) -> anyhow::Result<()> {
    match cmd {
        DatakeyCommand::Generate {
            key,
            context,
            no_plaintext,
        } => {
            let req = proto::GenerateDataKeyRequest {
                key,
                encryption_context: parse_context(&context)?,
            };
            let mut c = client(socket).await?;
            let r = if no_plaintext {
                c.datakeys.generate_data_key_without_plaintext(req).await
            } else {
                c.datakeys.generate_data_key(req).await
            }
            .map_err(status_error)?
            .into_inner();
            let plaintext = Zeroizing::new(B64.encode(&r.plaintext));
            let ciphertext = B64.encode(&r.ciphertext_blob);
            match output {
                Output::Json => {
                    let mut v = json!({
                        "key": r.key,
                        "key_id": r.key_id,
                        "version": r.key_version,
                        "ciphertext": ciphertext,
                    });
                    if !no_plaintext {
                        v["plaintext"] = json!(plaintext.as_str());
                    }
                    print_json(&v)?;
                }
                Output::Text => {
                    out!("key:        {}", r.key);
                    out!("version:    {}", r.key_version);
                    if !no_plaintext {
                        out!("plaintext:  {}", plaintext.as_str());
                    }
                    out!("ciphertext: {ciphertext}");
                }
            }
            let mut pt = r.plaintext;
            zeroize::Zeroize::zeroize(&mut pt);
        }
        DatakeyCommand::Rewrap {
            context,
            ciphertext,
            to_key,
            new_context,
        } => {
            let req = proto::ReEncryptRequest {
                ciphertext_blob: read_blob(ciphertext)?,
                encryption_context: parse_context(&context)?,
                destination_key: to_key.unwrap_or_default(),
                replace_context: !new_context.is_empty(),
                destination_encryption_context: parse_context(&new_context)?,
            };
            let mut c = client(socket).await?;
            let r = c
                .datakeys
                .re_encrypt(req)
                .await
                .map_err(status_error)?
                .into_inner();
            let ciphertext = B64.encode(&r.ciphertext_blob);
            match output {
                Output::Json => print_json(&json!({
                    "source_key": r.source_key,
                    "source_version": r.source_key_version,
                    "key": r.key,
                    "key_id": r.key_id,
                    "version": r.key_version,
                    "ciphertext": ciphertext,
                }))?,
                Output::Text => out!("{ciphertext}"),
            }
        }
        DatakeyCommand::Decrypt {
            context,
            ciphertext,
            key,
        } => {
            let req = proto::DecryptRequest {
                ciphertext_blob: read_blob(ciphertext)?,
                encryption_context: parse_context(&context)?,
                key: key.unwrap_or_default(),
            };
            let mut c = client(socket).await?;
            let mut r = c
                .datakeys
                .decrypt(req)
                .await
                .map_err(status_error)?
                .into_inner();
            let plaintext = Zeroizing::new(B64.encode(&r.plaintext));
            zeroize::Zeroize::zeroize(&mut r.plaintext);
            match output {
                Output::Json => print_json(&json!({
                    "key": r.key,
                    "key_id": r.key_id,
                    "version": r.key_version,
                    "plaintext": plaintext.as_str(),
                }))?,
                Output::Text => out!("{}", plaintext.as_str()),
            }
        }
    }
    Ok(())
}
