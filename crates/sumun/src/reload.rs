//! Hot reload: SIGHUP or a change to the config file (debounced) rebuilds the Runtime and
//! swaps it in. A config that fails validation, TLS loading or binding is rejected with its
//! diagnostics in the log, and the running one keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use sumun_gateway::{Gateway, Runtime};
use tokio::sync::mpsc;

/// Debounce window: editors write a file in several steps.
const DEBOUNCE: Duration = Duration::from_millis(250);

pub struct Reloader {
    gateway: Arc<Gateway>,
    path: PathBuf,
}

impl Reloader {
    pub fn new(gateway: Arc<Gateway>, path: PathBuf) -> Self {
        Reloader { gateway, path }
    }

    pub async fn reload(&self, trigger: &'static str) {
        match self.try_reload().await {
            Ok(()) => {
                metrics::counter!("sumun_config_reload_total", "result" => "success").increment(1);
                tracing::info!(trigger, config = %self.path.display(), "configuration reloaded");
            }
            Err(errors) => {
                metrics::counter!("sumun_config_reload_total", "result" => "error").increment(1);
                for e in &errors {
                    tracing::error!(trigger, "{e}");
                }
                tracing::error!(trigger, config = %self.path.display(), errors = errors.len(), "configuration rejected; the previous one keeps serving");
            }
        }
    }

    async fn try_reload(&self) -> Result<(), Vec<String>> {
        let loaded = sumun_config::load(&self.path)
            .map_err(|d| d.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        for w in &loaded.warnings {
            tracing::warn!("{w}");
        }
        let current = self.gateway.runtime();
        if current.config.admin != loaded.config.admin {
            tracing::warn!("[admin] changes take effect at the next restart");
        }
        if current.config.access_log != loaded.config.access_log {
            tracing::warn!("access_log changes take effect at the next restart");
        }
        let next = Runtime::build(loaded.config, Some(&current)).map_err(|e| vec![e.to_string()])?;
        // New topics open and changed subscriptions restart before the new runtime serves.
        if let Some(bus) = &next.bus {
            bus.reconfigure(&next.config).await.map_err(|e| vec![e.to_string()])?;
        }
        self.gateway.reload(next).await.map_err(|e| vec![e.to_string()])
    }
}

/// File-change notifications for the config, debounced.
pub struct ConfigWatch {
    pub rx: mpsc::Receiver<()>,
    _watcher: notify::RecommendedWatcher,
}

/// Watches the config file's directory (editors often replace the file by renaming).
pub fn watch(path: &Path) -> anyhow::Result<ConfigWatch> {
    let abs = std::path::absolute(path)?;
    let dir = abs.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
    let name = abs.file_name().map(|n| n.to_owned());
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            let ours = ev.paths.iter().any(|p| p.file_name() == name.as_deref());
            let content = matches!(
                ev.kind,
                notify::EventKind::Create(_) | notify::EventKind::Modify(_) | notify::EventKind::Remove(_)
            );
            if ours && content {
                let _ = raw_tx.send(());
            }
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        while raw_rx.recv().await.is_some() {
            // Coalesce a burst of events into one reload.
            loop {
                match tokio::time::timeout(DEBOUNCE, raw_rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            if tx.send(()).await.is_err() {
                return;
            }
        }
    });
    Ok(ConfigWatch { rx, _watcher: watcher })
}
