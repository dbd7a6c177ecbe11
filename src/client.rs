//! A gRPC client over the daemon's Unix socket.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::proto::{
    data_key_service_client::DataKeyServiceClient, key_service_client::KeyServiceClient,
    operator_service_client::OperatorServiceClient,
};

/// Default socket path of a packaged daemon.
pub const DEFAULT_SOCKET: &str = "/run/keywarden/keywarden.sock";

/// Opens a channel to the daemon's socket.
pub async fn connect(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.to_path_buf();
    // The URI is required by the API but unused: the connector dials the socket.
    Endpoint::from_static("http://keywarden.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
}

/// The three service clients on one channel.
#[derive(Clone)]
pub struct Client {
    pub datakeys: DataKeyServiceClient<Channel>,
    pub keys: KeyServiceClient<Channel>,
    pub operator: OperatorServiceClient<Channel>,
}

impl Client {
    pub async fn connect(path: &Path) -> Result<Self, tonic::transport::Error> {
        let ch = connect(path).await?;
        Ok(Client {
            datakeys: DataKeyServiceClient::new(ch.clone()),
            keys: KeyServiceClient::new(ch.clone()),
            operator: OperatorServiceClient::new(ch),
        })
    }
}
