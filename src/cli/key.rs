//! `keywarden key ...`: CMK administration.

use std::path::Path;

use clap::Subcommand;
use serde_json::json;

use super::{client, print_json, status_error, Output};
use crate::proto;

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a customer-managed key (an AES-256 key generated in the HSM).
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List keys.
    List,
    /// Show one key and its versions.
    Show { name: String },
    /// Emergency, time-limited app access to a key for yourself, where the
    /// policy permits it. Flagged in the audit log and in Status.
    BreakGlass {
        name: String,
        #[arg(long)]
        reason: String,
        /// How long, e.g. 30m or 1h (at most 24h).
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
    },
}

pub fn metadata_json(k: &proto::KeyMetadata) -> serde_json::Value {
    json!({
        "name": k.name,
        "key_id": k.key_id,
        "description": k.description,
        "state": k.state,
        "algorithm": k.algorithm,
        "created_at": k.created_at,
        "current_version": k.current_version,
        "versions": k.versions.iter().map(|v| json!({
            "version": v.version,
            "state": v.state,
            "created_at": v.created_at,
        })).collect::<Vec<_>>(),
    })
}

fn print_text(k: &proto::KeyMetadata) {
    println!("name:            {}", k.name);
    println!("key_id:          {}", k.key_id);
    println!("state:           {}", k.state);
    println!("algorithm:       {}", k.algorithm);
    println!("current_version: {}", k.current_version);
    if !k.description.is_empty() {
        println!("description:     {}", k.description);
    }
    for v in &k.versions {
        println!(
            "  v{:<4} {:<10} created {}",
            v.version, v.state, v.created_at
        );
    }
}

pub async fn run(socket: &Path, output: Output, cmd: KeyCommand) -> anyhow::Result<()> {
    let mut c = client(socket).await?;
    match cmd {
        KeyCommand::Create { name, description } => {
            let r = c
                .keys
                .create_key(proto::CreateKeyRequest { name, description })
                .await
                .map_err(status_error)?
                .into_inner();
            let k = r.key.unwrap_or_default();
            match output {
                Output::Json => print_json(&metadata_json(&k))?,
                Output::Text => println!(
                    "created key {} (id {}, version {})",
                    k.name, k.key_id, k.current_version
                ),
            }
        }
        KeyCommand::List => {
            let r = c
                .keys
                .list_keys(proto::ListKeysRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            match output {
                Output::Json => print_json(&json!({
                    "keys": r.keys.iter().map(metadata_json).collect::<Vec<_>>()
                }))?,
                Output::Text => {
                    println!(
                        "{:<32} {:<36} {:<8} {:>7}",
                        "NAME", "KEY ID", "STATE", "VERSION"
                    );
                    for k in &r.keys {
                        println!(
                            "{:<32} {:<36} {:<8} {:>7}",
                            k.name, k.key_id, k.state, k.current_version
                        );
                    }
                }
            }
        }
        KeyCommand::BreakGlass {
            name,
            reason,
            duration,
        } => {
            let d = humantime::parse_duration(&duration)
                .map_err(|e| anyhow::anyhow!("--for {duration:?}: {e}"))?;
            let r = c
                .keys
                .break_glass(proto::BreakGlassRequest {
                    name: name.clone(),
                    reason,
                    duration_secs: d.as_secs(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            match output {
                Output::Json => print_json(&json!({"key": name, "expires_at": r.expires_at}))?,
                Output::Text => println!(
                    "BREAK-GLASS: you have app access to key {name} until {} (Unix time); this is flagged in the audit log.",
                    r.expires_at
                ),
            }
        }
        KeyCommand::Show { name } => {
            let r = c
                .keys
                .describe_key(proto::DescribeKeyRequest { name })
                .await
                .map_err(status_error)?
                .into_inner();
            let k = r.key.unwrap_or_default();
            match output {
                Output::Json => print_json(&metadata_json(&k))?,
                Output::Text => print_text(&k),
            }
        }
    }
    Ok(())
}
