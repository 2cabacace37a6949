//! `sumun serve`: build everything, bind, mark ready, then wait for signals.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sumun_admin::AdminState;
use sumun_config::BindAddr;
use sumun_gateway::{AccessLogger, Gateway, Runtime};
use tokio::signal::unix::{SignalKind, signal};

const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

pub fn run(config_path: &Path, threads: Option<usize>) -> anyhow::Result<()> {
    raise_nofile();
    let rt = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        Some(n) => {
            tokio::runtime::Builder::new_multi_thread().worker_threads(n.max(1)).enable_all().build()?
        }
        None => tokio::runtime::Builder::new_multi_thread().enable_all().build()?,
    };
    rt.block_on(serve(config_path))
}

/// Lets the process hold as many connections as the hard limit allows.
fn raise_nofile() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "RLIMIT_NOFILE raised"),
        Err(e) => tracing::warn!(error = %e, "could not raise RLIMIT_NOFILE"),
    }
}

fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .install_recorder()?;
    Ok(handle)
}

async fn serve(config_path: &Path) -> anyhow::Result<()> {
    let prometheus = install_metrics().context("installing the metrics recorder")?;
    // Histograms keep raw samples until rendered; fold them regularly so memory stays flat
    // even when nobody scrapes.
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });

    let loaded = match sumun_config::load(config_path) {
        Ok(l) => l,
        Err(diags) => {
            for d in &diags {
                eprintln!("{d}");
            }
            bail!("{} has {} error(s)", config_path.display(), diags.len());
        }
    };
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    // Signal handlers first: a SIGHUP or SIGTERM that arrives while starting must reload or
    // drain, never kill the process with the default action.
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut watch = crate::reload::watch(config_path)?;
    let config = loaded.config;
    let access_log = AccessLogger::start(&config.access_log).context("opening the access log")?;
    let admin_cfg = config.admin.clone();
    let grace = config.shutdown_grace;
    // The bus (topics' logs and metadata) lives as long as the process; reloads reconfigure it.
    let bus = sumun_bus::Bus::open(&config).await.context("opening the topics")?;
    let runtime = Runtime::build(config, None)?.with_bus(Some(bus.clone()));
    let gateway = Gateway::new(runtime, access_log);
    gateway.start().await?;
    let gw = gateway.clone();
    let pools: sumun_bus::PoolResolver =
        Arc::new(move |name| gw.runtime().pools.iter().find(|p| &*p.name == name).cloned());
    bus.start(&gateway.runtime().config, pools).await.context("starting the subscriptions")?;

    let ready = Arc::new(AtomicBool::new(false));
    let (admin_stop_tx, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let admin_task = match admin_cfg {
        Some(admin) => {
            let gw = gateway.clone();
            let upstreams: sumun_admin::Snapshot = Arc::new(move || gw.runtime().upstreams_snapshot());
            let gw = gateway.clone();
            let passport_jwks: sumun_admin::Document =
                Arc::new(move || Some(gw.runtime().policies.passport.jwks()));
            let gw = gateway.clone();
            let cache: sumun_admin::Snapshot = Arc::new(move || gw.runtime().cache_snapshot());
            let gw = gateway.clone();
            let cache_purge: sumun_admin::CachePurge =
                Arc::new(move |kind, value| gw.runtime().purge_cache(kind, value));
            let state = AdminState {
                ready: ready.clone(),
                prometheus: prometheus.clone(),
                upstreams,
                passport_jwks,
                cache,
                cache_purge,
                bus: Some(bus.clone()),
            };
            let stop = async move {
                let _ = admin_stop_rx.await;
            };
            Some(match admin.bind {
                BindAddr::Tcp(addr) => {
                    let l = tokio::net::TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("binding the admin listener on {addr}"))?;
                    tracing::info!(addr = %l.local_addr()?, "admin listening");
                    tokio::spawn(sumun_admin::serve_tcp(l, state, stop))
                }
                BindAddr::Unix(path) => {
                    let _ = std::fs::remove_file(&path);
                    let l = tokio::net::UnixListener::bind(&path)
                        .with_context(|| format!("binding the admin listener on {}", path.display()))?;
                    tracing::info!(addr = %format!("unix:{}", path.display()), "admin listening");
                    tokio::spawn(sumun_admin::serve_unix(l, state, stop))
                }
            })
        }
        None => None,
    };
    ready.store(true, Ordering::Release);
    tracing::info!(config = %config_path.display(), "sumun ready");

    let reloader = crate::reload::Reloader::new(gateway.clone(), config_path.to_path_buf());
    loop {
        tokio::select! {
            _ = hup.recv() => reloader.reload("sighup").await,
            Some(()) = watch.rx.recv() => reloader.reload("file_watch").await,
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }

    tracing::info!(grace_ms = grace.as_millis() as u64, "shutting down: draining connections");
    ready.store(false, Ordering::Release);
    let left = gateway.shutdown(grace).await;
    if left > 0 {
        tracing::warn!(connections = left, "grace period over; closing remaining connections");
    } else {
        tracing::info!("all connections drained");
    }
    // Subscriptions stop (running attempts get a few seconds), logs flush, metadata syncs.
    bus.shutdown().await;
    tracing::info!("topics closed");
    let _ = admin_stop_tx.send(());
    if let Some(t) = admin_task {
        let _ = tokio::time::timeout(Duration::from_secs(1), t).await;
    }
    Ok(())
}
