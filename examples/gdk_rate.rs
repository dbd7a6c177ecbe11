//! Rough GenerateDataKey rate against a running daemon:
//! `cargo run --release --example gdk_rate -- SOCKET KEY CONCURRENCY SECONDS`.
//! The real benchmark is `keywarden bench` (issue 7); this is a probe.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use keywarden::proto;
use keywarden_client::Client;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let socket = std::path::PathBuf::from(&args[1]);
    let key = args[2].clone();
    let conc: usize = args[3].parse().unwrap();
    let secs: u64 = args[4].parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let mut c = Client::connect(&socket).await.unwrap();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                c.datakeys
                    .generate_data_key(proto::GenerateDataKeyRequest {
                        key: key.clone(),
                        encryption_context: [("tenant".to_string(), "t".to_string())].into(),
                    })
                    .await
                    .unwrap();
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    println!("{:.0}", total as f64 / secs as f64);
}
