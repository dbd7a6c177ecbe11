//! `keywarden operator ...`: the custodians' ceremonies (init, unseal, seal,
//! rekey) and the offline PIN recovery tool.

use std::io::{BufRead, IsTerminal, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::json;
use zeroize::Zeroizing;

use super::{client, out, print_json, status_error, Output};
use keywarden::proto;
use keywarden_client::Client;

#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// The init ceremony: split a new unseal key into shares and move the
    /// token's PINs off the provisioning PINs.
    Init {
        #[arg(long)]
        shares: u32,
        #[arg(long)]
        threshold: u32,
        /// age X25519 public key of a custodian (repeat, one per share).
        #[arg(long = "recipient", value_name = "AGE_PUBLIC_KEY")]
        recipients: Vec<String>,
        /// Custodian label (repeat, one per share).
        #[arg(long = "label", value_name = "NAME")]
        labels: Vec<String>,
        /// File holding the token's provisioning user PIN.
        #[arg(long)]
        pin_file: PathBuf,
        /// File holding the token's provisioning SO PIN.
        #[arg(long)]
        so_pin_file: PathBuf,
    },
    /// Submit your unseal share (prompted without echo, or one line on stdin).
    Unseal {
        /// Forget the shares submitted so far instead.
        #[arg(long)]
        reset: bool,
        /// Accept that this daemon, restored from a backup without the
        /// audit trail kept since, may have lost destructions and
        /// revocations made after the backup. Needed from every custodian
        /// of the quorum while such a restore is unaccepted.
        #[arg(long)]
        accept_restore_window: bool,
    },
    /// Seal the daemon: log out of the HSM; key operations are refused.
    Seal,
    /// Re-read the policy file (as SIGHUP does); an invalid policy is
    /// refused and the old one stays in force.
    Reload,
    /// Accept a registry that Status reports as rolled back (the HSM
    /// counter missing or ahead, the audit log ahead or lost), after
    /// restoring it on purpose. Audited; what the audit log records since
    /// (destructions, revocations, disables, holds) is taken back; where
    /// the log cannot vouch for the whole gap, as many admins as a
    /// destruction must run this. Records that fail their own MAC stay
    /// refused.
    AcknowledgeTampering {
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
    },
    /// Rekey: start with --shares/--threshold, then custodians --submit
    /// current shares, then --verify new ones; --cancel aborts.
    Rekey {
        #[arg(long)]
        shares: Option<u32>,
        #[arg(long)]
        threshold: Option<u32>,
        #[arg(long = "recipient", value_name = "AGE_PUBLIC_KEY")]
        recipients: Vec<String>,
        #[arg(long = "label", value_name = "NAME")]
        labels: Vec<String>,
        /// Submit a CURRENT share to the rekey in progress.
        #[arg(long, conflicts_with_all = ["verify", "cancel", "shares", "threshold"])]
        submit: bool,
        /// Submit a NEW share back for verification.
        #[arg(long, conflicts_with_all = ["submit", "cancel", "shares", "threshold"])]
        verify: bool,
        /// Cancel the rekey in progress.
        #[arg(long, conflicts_with_all = ["submit", "verify", "shares", "threshold"])]
        cancel: bool,
    },
    /// Back up the daemon (sealed or unsealed) into FILE: registry, seal
    /// file, audit chain head and a software token, encrypted to a key only
    /// a quorum of the current share set can derive.
    Backup {
        #[arg(long)]
        out: PathBuf,
    },
    /// Offline: restore a backup into an empty state directory with a
    /// quorum's shares, replaying the audit trail kept since the backup.
    Restore(super::backup::RestoreArgs),
    /// Offline recovery: derive the token's user (or SO) PIN from a quorum of
    /// shares given one per line on stdin, checked against the seal file.
    /// For disaster recovery with standard PKCS#11 tools; prints the PIN.
    DerivePin {
        /// The daemon's seal file (STATE_DIR/seal.json).
        #[arg(long)]
        seal_file: PathBuf,
        /// Derive the SO PIN instead of the user PIN.
        #[arg(long)]
        so: bool,
    },
}

fn read_pin_file(path: &Path) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(Vec::new());
    std::fs::File::open(path)
        .with_context(|| format!("opening {}", path.display()))?
        .take(1024)
        .read_to_end(&mut buf)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(buf)
}

/// Reads one share: a hidden prompt on a terminal, otherwise stdin. Never
/// from argv, which every local user can read in `ps`.
fn read_share(prompt: &str) -> anyhow::Result<Zeroizing<String>> {
    let text = if std::io::stdin().is_terminal() {
        Zeroizing::new(rpassword::prompt_password(prompt).context("reading the share")?)
    } else {
        let mut s = Zeroizing::new(String::new());
        std::io::stdin()
            .take(16 * 1024)
            .read_to_string(&mut s)
            .context("reading the share from stdin")?;
        s
    };
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| Zeroizing::new(l.to_string()));
    match line {
        Some(l) => Ok(l),
        None => bail!("no share given"),
    }
}

fn print_shares(
    output: Output,
    set_id: &str,
    threshold: u32,
    shares: &[proto::IssuedShare],
) -> anyhow::Result<()> {
    match output {
        Output::Json => print_json(&json!({
            "set_id": set_id,
            "threshold": threshold,
            "shares": shares.iter().map(|s| json!({
                "label": s.label,
                "share": s.share,
                "encrypted": s.encrypted,
            })).collect::<Vec<_>>(),
        })),
        Output::Text => {
            out!(
                "Share set {set_id}: {} shares, any {threshold} of them unseal.",
                shares.len()
            );
            out!("Each share is shown once. Hand each to its custodian only.\n");
            for (i, s) in shares.iter().enumerate() {
                out!(
                    "Share {} of {} for {}{}:",
                    i + 1,
                    shares.len(),
                    s.label,
                    if s.encrypted {
                        " (age-encrypted to the custodian)"
                    } else {
                        ""
                    }
                );
                out!("{}\n", s.share.trim_end());
            }
            Ok(())
        }
    }
}

pub async fn run(
    socket: &Path,
    output: Output,
    cmd: OperatorCommand,
    restore_target: super::backup::TargetFor,
) -> anyhow::Result<()> {
    match cmd {
        OperatorCommand::DerivePin { seal_file, so } => derive_pin(&seal_file, so),
        OperatorCommand::Backup { out } => super::backup::backup(socket, output, &out).await,
        OperatorCommand::Restore(args) => super::backup::run_restore(output, args, restore_target),
        OperatorCommand::Init {
            shares,
            threshold,
            recipients,
            labels,
            pin_file,
            so_pin_file,
        } => {
            let ceremony = InitCeremony {
                shares,
                threshold,
                recipients,
                labels,
                user_pin: read_pin_file(&pin_file)?,
                so_pin: read_pin_file(&so_pin_file)?,
            };
            init(socket, output, ceremony).await
        }
        OperatorCommand::Unseal {
            reset,
            accept_restore_window,
        } => unseal(socket, output, reset, accept_restore_window).await,
        OperatorCommand::Reload => reload(socket, output).await,
        OperatorCommand::AcknowledgeTampering { reason } => {
            acknowledge_tampering(socket, output, reason).await
        }
        OperatorCommand::Seal => seal(socket, output).await,
        OperatorCommand::Rekey {
            shares,
            threshold,
            recipients,
            labels,
            submit,
            verify,
            cancel,
        } => {
            let mut c = client(socket).await?;
            if cancel {
                rekey_cancel(&mut c, output).await
            } else if submit {
                rekey_submit(&mut c, output).await
            } else if verify {
                rekey_verify(&mut c, output).await
            } else {
                let (Some(shares), Some(threshold)) = (shares, threshold) else {
                    bail!("start a rekey with --shares N --threshold M, or use --submit, --verify or --cancel");
                };
                let start = proto::RekeyStartRequest {
                    shares,
                    threshold,
                    recipients,
                    labels,
                };
                rekey_start(&mut c, output, start).await
            }
        }
    }
}

/// What `operator init` asks for: the share set, and the token's
/// provisioning PINs.
struct InitCeremony {
    shares: u32,
    threshold: u32,
    recipients: Vec<String>,
    labels: Vec<String>,
    user_pin: Zeroizing<Vec<u8>>,
    so_pin: Zeroizing<Vec<u8>>,
}

async fn init(socket: &Path, output: Output, ceremony: InitCeremony) -> anyhow::Result<()> {
    let InitCeremony {
        shares,
        threshold,
        recipients,
        labels,
        user_pin,
        so_pin,
    } = ceremony;
    let mut c = client(socket).await?;
    let r = c
        .operator
        .init(proto::InitRequest {
            shares,
            threshold,
            recipients,
            labels,
            user_pin: user_pin.to_vec(),
            so_pin: so_pin.to_vec(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    print_shares(output, &r.set_id, r.threshold, &r.shares)?;
    if output == Output::Text {
        out!("The daemon is initialised and sealed. Next: {threshold} custodians run");
        out!("`keywarden operator unseal`. That first unseal proves the shares work, and only");
        out!("then are the token's provisioning PINs replaced (they stop working).");
    }
    Ok(())
}

async fn unseal(
    socket: &Path,
    output: Output,
    reset: bool,
    accept_restore_window: bool,
) -> anyhow::Result<()> {
    let share = if reset {
        Zeroizing::new(String::new())
    } else {
        read_share("Unseal share (input hidden): ")?
    };
    let mut c = client(socket).await?;
    let r = c
        .operator
        .unseal(proto::UnsealRequest {
            share: share.to_string(),
            reset,
            accept_restore_window,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    match output {
        Output::Json => print_json(&json!({
            "sealed": r.sealed,
            "received": r.received,
            "threshold": r.threshold,
            "set_id": r.set_id,
        }))?,
        Output::Text if reset => out!("Unseal progress reset."),
        Output::Text if r.sealed => out!(
            "Share accepted: {} of {} (set {}). Still sealed.",
            r.received,
            r.threshold,
            r.set_id
        ),
        Output::Text => out!("Unsealed (set {}).", r.set_id),
    }
    Ok(())
}

async fn reload(socket: &Path, output: Output) -> anyhow::Result<()> {
    let mut c = client(socket).await?;
    c.operator
        .reload_policy(proto::ReloadPolicyRequest {})
        .await
        .map_err(status_error)?;
    match output {
        Output::Json => print_json(&json!({"reloaded": true}))?,
        Output::Text => out!("Policy reloaded."),
    }
    Ok(())
}

async fn acknowledge_tampering(
    socket: &Path,
    output: Output,
    reason: String,
) -> anyhow::Result<()> {
    let mut c = client(socket).await?;
    let r = c
        .operator
        .acknowledge_tampering(proto::AcknowledgeTamperingRequest { reason })
        .await
        .map_err(status_error)?
        .into_inner();
    match output {
        Output::Json => print_json(&json!({
            "accepted": r.accepted, "complete": r.complete, "approvals": r.approvals,
            "approvals_needed": r.approvals_needed, "unverified": r.unverified,
            "replayed": r.replayed, "lost": r.lost,
        }))?,
        Output::Text => {
            let esc = keywarden::core::validate::escape;
            if r.complete {
                out!("Accepted: {}", esc(&r.accepted));
            } else {
                out!(
                    "Acknowledged ({} of {} admins), not yet accepted: {}",
                    r.approvals,
                    r.approvals_needed,
                    esc(&r.accepted)
                );
            }
            if !r.unverified.is_empty() {
                out!(
                    "The audit log cannot vouch for the whole gap: {}",
                    esc(&r.unverified)
                );
            }
            for c in &r.replayed {
                out!("Taken back from the audit log: {}", esc(c));
            }
            for l in &r.lost {
                out!("Lost: {}", esc(l));
            }
        }
    }
    Ok(())
}

async fn seal(socket: &Path, output: Output) -> anyhow::Result<()> {
    let mut c = client(socket).await?;
    c.operator
        .seal(proto::SealRequest {})
        .await
        .map_err(status_error)?;
    match output {
        Output::Json => print_json(&json!({"sealed": true}))?,
        Output::Text => out!("Sealed."),
    }
    Ok(())
}

async fn rekey_cancel(c: &mut Client, output: Output) -> anyhow::Result<()> {
    c.operator
        .rekey_cancel(proto::RekeyCancelRequest {})
        .await
        .map_err(status_error)?;
    match output {
        Output::Json => print_json(&json!({"cancelled": true}))?,
        Output::Text => out!("Rekey cancelled."),
    }
    Ok(())
}

/// `rekey --submit`: a CURRENT share; the last of a quorum brings the new
/// shares.
async fn rekey_submit(c: &mut Client, output: Output) -> anyhow::Result<()> {
    let share = read_share("CURRENT unseal share (input hidden): ")?;
    let r = c
        .operator
        .rekey_submit(proto::RekeyShareRequest {
            share: share.to_string(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if r.complete {
        return print_new_shares(output, &r);
    }
    match output {
        Output::Json => print_json(&json!({
            "complete": false, "received": r.received, "threshold": r.threshold,
        }))?,
        Output::Text => {
            out!("Current share accepted: {} of {}.", r.received, r.threshold)
        }
    }
    Ok(())
}

/// The new shares a completed `rekey --submit` issued.
fn print_new_shares(output: Output, r: &proto::RekeySubmitResponse) -> anyhow::Result<()> {
    match output {
        Output::Json => print_json(&json!({
            "complete": true,
            "new_set_id": r.new_set_id,
            "shares": r.new_shares.iter().map(|s| json!({
                "label": s.label, "share": s.share, "encrypted": s.encrypted,
            })).collect::<Vec<_>>(),
        }))?,
        Output::Text => {
            out!(
                "Quorum of current shares reached. New shares (set {}):\n",
                r.new_set_id
            );
            for (i, s) in r.new_shares.iter().enumerate() {
                out!(
                    "New share {} of {} for {}:",
                    i + 1,
                    r.new_shares.len(),
                    s.label
                );
                out!("{}\n", s.share.trim_end());
            }
            out!("Nothing changes until a quorum of the NEW shares is submitted with `keywarden operator rekey --verify`.");
        }
    }
    Ok(())
}

async fn rekey_verify(c: &mut Client, output: Output) -> anyhow::Result<()> {
    let share = read_share("NEW unseal share (input hidden): ")?;
    let r = c
        .operator
        .rekey_verify(proto::RekeyShareRequest {
            share: share.to_string(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    match output {
        Output::Json => print_json(&json!({
            "committed": r.committed, "received": r.received,
            "threshold": r.threshold, "set_id": r.set_id,
        }))?,
        Output::Text if r.committed => out!(
            "Rekey committed: set {} is now in force; the old shares no longer work.",
            r.set_id
        ),
        Output::Text => {
            out!("New share verified: {} of {}.", r.received, r.threshold)
        }
    }
    Ok(())
}

async fn rekey_start(
    c: &mut Client,
    output: Output,
    start: proto::RekeyStartRequest,
) -> anyhow::Result<()> {
    let r = c
        .operator
        .rekey_start(start)
        .await
        .map_err(status_error)?
        .into_inner();
    match output {
        Output::Json => print_json(&json!({
            "rekey_id": r.rekey_id, "current_threshold": r.current_threshold,
        }))?,
        Output::Text => out!(
            "Rekey {} started: {} custodians now run `keywarden operator rekey --submit` with their CURRENT shares.",
            r.rekey_id, r.current_threshold
        ),
    }
    Ok(())
}

fn derive_pin(seal_file: &Path, so: bool) -> anyhow::Result<()> {
    use keywarden::seal::{offline, store::SealFile};
    let text = std::fs::read_to_string(seal_file)
        .with_context(|| format!("reading {}", seal_file.display()))?;
    let file: SealFile = serde_json::from_str(&text).context("parsing the seal file")?;
    let set_id = file.set_id().map_err(anyhow::Error::msg)?;
    let check = file.check().map_err(anyhow::Error::msg)?;
    let mut texts = Vec::new();
    for line in std::io::stdin().lock().lines() {
        texts.push(Zeroizing::new(line?));
    }
    let spec = offline::SetSpec {
        set_id,
        threshold: file.threshold,
        check: &check,
    };
    let key = offline::quorum(&texts, &spec).map_err(anyhow::Error::msg)?;
    let pin = if so {
        key.so_pin(&set_id)
    } else {
        key.user_pin(&set_id)
    };
    out!("{}", pin.expose_text());
    Ok(())
}
