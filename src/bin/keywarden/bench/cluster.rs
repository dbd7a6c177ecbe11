//! `keywarden bench --cluster`: what the cluster mode costs. Three dev
//! nodes on one SoftHSM token and a throwaway PostgreSQL registry; the
//! data-key figures on node 1 against this run's SQLite figures, and how
//! long an admin's disable takes to return when it must reach every node.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Map, Value};

use super::{datakey_figures, ensure_key, f, BenchOptions, DevDaemon};
use keywarden::proto;
use keywarden_client::Client;

/// Disable and enable rounds timed.
const ROUNDS: usize = 20;

async fn unsealed_node(
    url: &str,
    id: &str,
    join: Option<(&DevDaemon, &str)>,
) -> anyhow::Result<DevDaemon> {
    let mut args: Vec<String> = vec![
        "--registry-url".into(),
        url.into(),
        "--node-id".into(),
        id.into(),
    ];
    if let Some((first, _)) = join {
        args.push("--join".into());
        args.push(first.dir.path().display().to_string());
    }
    let d = tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        DevDaemon::start(&a)
    })
    .await??;
    if let Some((_, share)) = join {
        let mut c = Client::connect(&d.socket()).await?;
        c.operator
            .unseal(proto::UnsealRequest {
                share: share.into(),
                reset: false,
                accept_restore_window: false,
            })
            .await
            .map_err(|s| anyhow::anyhow!("unsealing node {id}: {}", s.message()))?;
    }
    // Until it holds its first lease.
    let mut c = Client::connect(&d.socket()).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.keys.list_keys(proto::ListKeysRequest {}).await.is_err() {
        if Instant::now() > deadline {
            bail!("node {id} never served");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(d)
}

fn median_and_max(mut v: Vec<f64>) -> Value {
    v.sort_by(|a, b| a.total_cmp(b));
    let round = |x: f64| (x * 10.0).round() / 10.0;
    json!({
        "n": v.len(),
        "median": v.get(v.len() / 2).copied().map(round),
        "max": v.last().copied().map(round),
    })
}

pub(super) async fn figures(
    o: &BenchOptions,
    sqlite: &Map<String, Value>,
) -> anyhow::Result<Value> {
    let pg = tokio::task::spawn_blocking(crate::devpg::Postgres::start)
        .await?
        .context("starting PostgreSQL for the cluster figures")?;
    let url = pg.url();
    let n1 = unsealed_node(&url, "n1", None).await?;
    let share = n1.share.clone();
    let n2 = unsealed_node(&url, "n2", Some((&n1, &share))).await?;
    let n3 = unsealed_node(&url, "n3", Some((&n1, &share))).await?;
    ensure_key(&n1.socket(), "bench").await?;
    let figs = datakey_figures(&n1.socket(), "bench", o, true).await?;

    let mut c = Client::connect(&n1.socket()).await?;
    let (mut disable, mut enable) = (Vec::new(), Vec::new());
    let name = || proto::KeyNameRequest {
        name: "bench".into(),
    };
    for _ in 0..ROUNDS {
        let t = Instant::now();
        c.keys
            .disable_key(name())
            .await
            .map_err(|s| anyhow::anyhow!("disable: {}", s.message()))?;
        disable.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        c.keys
            .enable_key(name())
            .await
            .map_err(|s| anyhow::anyhow!("enable: {}", s.message()))?;
        enable.push(t.elapsed().as_secs_f64() * 1e3);
    }
    drop((n3, n2, n1));
    drop(pg);
    let null = Value::Null;
    let get = |m: &Map<String, Value>, k: &str| f(m.get(k).unwrap_or(&null));
    let ratio = |k: &str| {
        let s = get(sqlite, k);
        (s > 0.0).then(|| (get(&figs, k) / s * 100.0).round() / 100.0)
    };
    Ok(json!({
        "nodes": 3,
        "generate_c1": figs.get("generate_c1"),
        "generate_c16": figs.get("generate_c16"),
        "decrypt_c16": figs.get("decrypt_c16"),
        "vs_sqlite": {
            "generate_c1": ratio("generate_c1"),
            "generate_c16": ratio("generate_c16"),
            "decrypt_c16": ratio("decrypt_c16"),
        },
        "disable_ms": median_and_max(disable),
        "enable_ms": median_and_max(enable),
    }))
}
