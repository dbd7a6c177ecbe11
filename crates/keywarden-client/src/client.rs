//! The connection to the daemon and the data-key calls.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use keywarden_proto as proto;
use keywarden_proto::{
    data_key_service_client::DataKeyServiceClient, key_service_client::KeyServiceClient,
    operator_service_client::OperatorServiceClient,
};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use zeroize::{Zeroize, Zeroizing};

use crate::cache::{Cache, CacheConfig};
use crate::error::Error;
use crate::format::{Context, DATA_KEY_LEN};

/// Default socket path of a packaged daemon.
pub const DEFAULT_SOCKET: &str = "/run/keywarden/keywarden.sock";
/// The environment variable [`Client::from_env`] reads.
pub const SOCKET_ENV: &str = "KEYWARDEN_SOCKET";

/// A plaintext 256-bit data key. Wiped on drop; no `Debug`, `Clone` or
/// `Serialize`.
pub struct DataKey(Zeroizing<[u8; DATA_KEY_LEN]>);

impl DataKey {
    /// Takes the key out of a decoded protobuf field and wipes the field.
    pub(crate) fn take(field: &mut Vec<u8>) -> Result<Self, Error> {
        let out = if field.len() == DATA_KEY_LEN {
            let mut k = Zeroizing::new([0u8; DATA_KEY_LEN]);
            k.copy_from_slice(field);
            Ok(DataKey(k))
        } else {
            Err(Error::Rpc {
                code: tonic::Code::Internal,
                message: format!(
                    "the daemon returned a {}-byte data key, not {DATA_KEY_LEN}",
                    field.len()
                ),
            })
        };
        field.zeroize();
        out
    }

    /// The key bytes, for an application's own cipher. Keep the borrow
    /// short; never copy them out of zeroizing memory.
    pub fn expose(&self) -> &[u8; DATA_KEY_LEN] {
        &self.0
    }
}

/// A fresh data key: in plaintext and wrapped under a CMK.
pub struct GeneratedDataKey {
    /// The CMK's name.
    pub key: String,
    /// The CMK's stable id (UUID text).
    pub key_id: String,
    /// The CMK version that wrapped it.
    pub key_version: u32,
    /// The plaintext data key.
    pub plaintext: DataKey,
    /// The wrapped form to store beside the data.
    pub ciphertext_blob: Vec<u8>,
}

/// A data key in wrapped form only.
#[derive(Debug, Clone)]
pub struct WrappedDataKey {
    /// The CMK's name.
    pub key: String,
    /// The CMK's stable id (UUID text).
    pub key_id: String,
    /// The CMK version that wrapped it.
    pub key_version: u32,
    /// The wrapped data key.
    pub ciphertext_blob: Vec<u8>,
}

/// An unwrapped data key and the CMK it was under.
pub struct DecryptedDataKey {
    /// The CMK's name.
    pub key: String,
    /// The CMK's stable id (UUID text).
    pub key_id: String,
    /// The CMK version that had wrapped it.
    pub key_version: u32,
    /// The plaintext data key.
    pub plaintext: DataKey,
}

/// A blob rewrapped under another (or the newest) key version.
#[derive(Debug, Clone)]
pub struct Rewrapped {
    /// The key the blob was under.
    pub source_key: String,
    /// Its version.
    pub source_key_version: u32,
    /// The key it is under now.
    pub wrapped: WrappedDataKey,
}

/// How UNAVAILABLE answers to idempotent calls are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all (1: no retry).
    pub attempts: u32,
    /// The first pause; each next one doubles.
    pub first_backoff: Duration,
    /// The longest pause.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// Three attempts, 50 ms then 100 ms apart: a daemon whose HSM is
    /// reconnecting gets a moment, a daemon that is down fails fast.
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            first_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
        }
    }
}

/// A connection to the daemon. Cheap to clone (one HTTP/2 channel).
///
/// ```no_run
/// # async fn demo() -> Result<(), keywarden_client::Error> {
/// use keywarden_client::{Client, Context};
/// let client = Client::from_env().await?;
/// let ctx = Context::from([("record".to_string(), "mri-0042".to_string())]);
/// let dk = client.generate_data_key("clinic", &ctx).await?;
/// // ... encrypt with dk.plaintext.expose(), store dk.ciphertext_blob ...
/// let back = client.decrypt_data_key(&dk.ciphertext_blob, &ctx).await?;
/// assert_eq!(back.plaintext.expose(), dk.plaintext.expose());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    /// The raw DataKeyService stub (the typed methods below are the API).
    pub datakeys: DataKeyServiceClient<Channel>,
    /// The raw KeyService stub (lifecycle administration).
    pub keys: KeyServiceClient<Channel>,
    /// The raw OperatorService stub (status, ceremonies).
    pub operator: OperatorServiceClient<Channel>,
    /// The raw MacService stub (the typed methods are in `fields.rs`).
    pub macs: proto::mac_service_client::MacServiceClient<Channel>,
    retry: RetryPolicy,
    pub(crate) cache: Option<Arc<Cache>>,
}

/// Opens a channel to the daemon's socket.
pub async fn channel(path: &Path) -> Result<Channel, Error> {
    let path: PathBuf = path.to_path_buf();
    // The URI is required by the API but unused: the connector dials the
    // socket. Its authority is what the server sees as `:authority`.
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .map_err(|e| Error::Connect(format!("{e}")))
}

impl Client {
    /// Connects to the daemon's socket.
    pub async fn connect(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let ch = channel(path)
            .await
            .map_err(|e| Error::Connect(format!("{}: {e}", path.display())))?;
        Ok(Client {
            datakeys: DataKeyServiceClient::new(ch.clone()),
            keys: KeyServiceClient::new(ch.clone()),
            macs: proto::mac_service_client::MacServiceClient::new(ch.clone()),
            operator: OperatorServiceClient::new(ch),
            retry: RetryPolicy::default(),
            cache: None,
        })
    }

    /// Connects to `$KEYWARDEN_SOCKET`, or to [`DEFAULT_SOCKET`].
    pub async fn from_env() -> Result<Self, Error> {
        let path = std::env::var_os(SOCKET_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
        Client::connect(path).await
    }

    /// Replaces the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Turns on the data-key cache (see [`CacheConfig`]). Must be called
    /// inside a Tokio runtime: it starts the task that follows the
    /// daemon's key changes, and until that task hears from the daemon
    /// nothing is served from the cache.
    pub fn with_cache(mut self, config: CacheConfig) -> Result<Self, Error> {
        self.cache = Some(Cache::start(config, self.datakeys.clone())?);
        Ok(self)
    }

    /// The cache's counters (`None` without a cache).
    pub fn cache_stats(&self) -> Option<crate::cache::CacheStats> {
        self.cache.as_ref().map(|c| c.stats())
    }

    /// Runs an idempotent call, retrying UNAVAILABLE (not sealed) with
    /// bounded backoff.
    pub(crate) async fn retrying<T, F, Fut>(&self, mut call: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let mut pause = self.retry.first_backoff;
        let mut attempt = 1;
        loop {
            match call().await {
                Ok(v) => return Ok(v),
                Err(s) => {
                    let e = Error::from_status(&s);
                    if !matches!(e, Error::Unavailable { .. }) || attempt >= self.retry.attempts {
                        return Err(e);
                    }
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(self.retry.max_backoff);
            attempt += 1;
        }
    }

    /// A fresh data key under the newest version of `key`, bound to `ctx`.
    pub async fn generate_data_key(
        &self,
        key: &str,
        ctx: &Context,
    ) -> Result<GeneratedDataKey, Error> {
        let req = gdk_request(key, ctx);
        let mut r = self
            .retrying(|| {
                let mut c = self.datakeys.clone();
                let req = req.clone();
                async move { c.generate_data_key(req).await.map(|r| r.into_inner()) }
            })
            .await?;
        generated(&mut r)
    }

    /// A fresh data key in wrapped form only (to be unwrapped later, by
    /// whoever may).
    pub async fn generate_data_key_without_plaintext(
        &self,
        key: &str,
        ctx: &Context,
    ) -> Result<WrappedDataKey, Error> {
        let req = gdk_request(key, ctx);
        let mut r = self
            .retrying(|| {
                let mut c = self.datakeys.clone();
                let req = req.clone();
                async move {
                    c.generate_data_key_without_plaintext(req)
                        .await
                        .map(|r| r.into_inner())
                }
            })
            .await?;
        r.plaintext.zeroize();
        Ok(WrappedDataKey {
            key: std::mem::take(&mut r.key),
            key_id: std::mem::take(&mut r.key_id),
            key_version: r.key_version,
            ciphertext_blob: std::mem::take(&mut r.ciphertext_blob),
        })
    }

    /// Unwraps a blob; `ctx` must be the context it was made with.
    pub async fn decrypt_data_key(
        &self,
        blob: &[u8],
        ctx: &Context,
    ) -> Result<DecryptedDataKey, Error> {
        let mut r = self.decrypt_raw(blob, ctx).await?;
        decrypted(&mut r)
    }

    /// `Decrypt`, retried on UNAVAILABLE; the answer as the daemon sent it
    /// (a data key, or an Encrypt payload).
    pub(crate) async fn decrypt_raw(
        &self,
        blob: &[u8],
        ctx: &Context,
    ) -> Result<proto::DecryptResponse, Error> {
        let req = decrypt_request(blob, ctx);
        self.retrying(|| {
            let mut c = self.datakeys.clone();
            let req = req.clone();
            async move { c.decrypt(req).await.map(|r| r.into_inner()) }
        })
        .await
    }

    /// Rewraps a blob under the newest version of `destination` (or of its
    /// own key when `None`), keeping its context. The plaintext never
    /// leaves the daemon.
    pub async fn reencrypt(
        &self,
        blob: &[u8],
        ctx: &Context,
        destination: Option<&str>,
    ) -> Result<Rewrapped, Error> {
        let req = reencrypt_request(blob, ctx, destination);
        let r = self
            .retrying(|| {
                let mut c = self.datakeys.clone();
                let req = req.clone();
                async move { c.re_encrypt(req).await.map(|r| r.into_inner()) }
            })
            .await?;
        Ok(rewrapped(r))
    }

    /// Up to 1024 data keys in one call; each item succeeds or fails on
    /// its own.
    pub async fn generate_data_keys(
        &self,
        items: &[(&str, &Context)],
    ) -> Result<Vec<Result<GeneratedDataKey, Error>>, Error> {
        let req = proto::BatchGenerateDataKeyRequest {
            requests: items.iter().map(|(k, c)| gdk_request(k, c)).collect(),
            without_plaintext: false,
        };
        let r = self
            .retrying(|| {
                let mut c = self.datakeys.clone();
                let req = req.clone();
                async move { c.batch_generate_data_key(req).await.map(|r| r.into_inner()) }
            })
            .await?;
        Ok(r.results
            .into_iter()
            .map(|item| match item.result {
                Some(proto::batch_generate_data_key_result::Result::Ok(mut ok)) => {
                    generated(&mut ok)
                }
                Some(proto::batch_generate_data_key_result::Result::Error(e)) => Err(item_error(e)),
                None => Err(missing_item()),
            })
            .collect())
    }

    /// Up to 1024 unwraps in one call; each item succeeds or fails on its
    /// own.
    pub async fn decrypt_data_keys(
        &self,
        items: &[(&[u8], &Context)],
    ) -> Result<Vec<Result<DecryptedDataKey, Error>>, Error> {
        let req = proto::BatchDecryptRequest {
            requests: items.iter().map(|(b, c)| decrypt_request(b, c)).collect(),
        };
        let r = self
            .retrying(|| {
                let mut c = self.datakeys.clone();
                let req = req.clone();
                async move { c.batch_decrypt(req).await.map(|r| r.into_inner()) }
            })
            .await?;
        Ok(r.results
            .into_iter()
            .map(|item| match item.result {
                Some(proto::batch_decrypt_result::Result::Ok(mut ok)) => decrypted(&mut ok),
                Some(proto::batch_decrypt_result::Result::Error(e)) => Err(item_error(e)),
                None => Err(missing_item()),
            })
            .collect())
    }

    /// Up to 1024 rewraps in one call (for example after a rotation).
    pub async fn reencrypt_batch(
        &self,
        items: &[(&[u8], &Context, Option<&str>)],
    ) -> Result<Vec<Result<Rewrapped, Error>>, Error> {
        let req = proto::BatchReEncryptRequest {
            requests: items
                .iter()
                .map(|(b, c, d)| reencrypt_request(b, c, *d))
                .collect(),
        };
        let r = self
            .retrying(|| {
                let mut c = self.datakeys.clone();
                let req = req.clone();
                async move { c.batch_re_encrypt(req).await.map(|r| r.into_inner()) }
            })
            .await?;
        Ok(r.results
            .into_iter()
            .map(|item| match item.result {
                Some(proto::batch_re_encrypt_result::Result::Ok(ok)) => Ok(rewrapped(ok)),
                Some(proto::batch_re_encrypt_result::Result::Error(e)) => Err(item_error(e)),
                None => Err(missing_item()),
            })
            .collect())
    }
}

pub(crate) fn proto_context(ctx: &Context) -> HashMap<String, String> {
    ctx.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn gdk_request(key: &str, ctx: &Context) -> proto::GenerateDataKeyRequest {
    proto::GenerateDataKeyRequest {
        key: key.to_string(),
        encryption_context: proto_context(ctx),
    }
}

fn decrypt_request(blob: &[u8], ctx: &Context) -> proto::DecryptRequest {
    proto::DecryptRequest {
        ciphertext_blob: blob.to_vec(),
        encryption_context: proto_context(ctx),
        key: String::new(),
    }
}

fn reencrypt_request(
    blob: &[u8],
    ctx: &Context,
    destination: Option<&str>,
) -> proto::ReEncryptRequest {
    proto::ReEncryptRequest {
        ciphertext_blob: blob.to_vec(),
        encryption_context: proto_context(ctx),
        destination_key: destination.unwrap_or_default().to_string(),
        destination_encryption_context: HashMap::new(),
        replace_context: false,
    }
}

fn generated(r: &mut proto::GenerateDataKeyResponse) -> Result<GeneratedDataKey, Error> {
    Ok(GeneratedDataKey {
        plaintext: DataKey::take(&mut r.plaintext)?,
        key: std::mem::take(&mut r.key),
        key_id: std::mem::take(&mut r.key_id),
        key_version: r.key_version,
        ciphertext_blob: std::mem::take(&mut r.ciphertext_blob),
    })
}

fn decrypted(r: &mut proto::DecryptResponse) -> Result<DecryptedDataKey, Error> {
    Ok(DecryptedDataKey {
        plaintext: DataKey::take(&mut r.plaintext)?,
        key: std::mem::take(&mut r.key),
        key_id: std::mem::take(&mut r.key_id),
        key_version: r.key_version,
    })
}

fn rewrapped(r: proto::ReEncryptResponse) -> Rewrapped {
    Rewrapped {
        source_key: r.source_key,
        source_key_version: r.source_key_version,
        wrapped: WrappedDataKey {
            key: r.key,
            key_id: r.key_id,
            key_version: r.key_version,
            ciphertext_blob: r.ciphertext_blob,
        },
    }
}

/// A batch item's error, typed like a whole call's.
fn item_error(e: proto::ItemError) -> Error {
    // An item carries what a call's metadata would: rebuild it, so that an
    // item's error is typed exactly like a call's.
    let mut s = tonic::Status::new(tonic::Code::from(e.code), e.message);
    for (k, v) in [
        (crate::error::FIELD_METADATA, e.field),
        (crate::error::KEY_STATE_METADATA, e.key_state),
    ] {
        if v.is_empty() {
            continue;
        }
        if let Ok(v) = v.parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>() {
            s.metadata_mut().insert(k, v);
        }
    }
    Error::from_status(&s)
}

fn missing_item() -> Error {
    Error::Rpc {
        code: tonic::Code::Internal,
        message: "the daemon returned a batch item with no result".into(),
    }
}
