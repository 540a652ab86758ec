//! Signals and the process's life: SIGTERM/SIGINT stop gracefully (the listeners close,
//! in-flight requests finish within the grace period, the audit queue is flushed, then the
//! process exits); SIGHUP, or a change to the config file, a file of its `sites_dir` or a file
//! it names, re-reads the whole config and swaps it in atomically.

use crate::config::{Config, Env, ProcessEnv};
use crate::lines::LineWriter;
use crate::state::Shared;
use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::BackgroundService;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{SignalKind, signal};

/// SIGTERM and SIGINT both mean "stop gracefully" (Pingora's default makes SIGINT immediate).
pub struct Signals;

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            }
            _ => {
                tracing::error!("cannot install signal handlers; stopping");
            }
        }
        tracing::info!("stop requested: finishing in-flight requests");
        ShutdownSignal::GracefulTerminate
    }
}

/// Where a reload reads the config: its main file, and where its `*_env` secrets come from.
pub struct ConfigSource {
    pub path: PathBuf,
    pub env: Arc<dyn Env + Send + Sync>,
}

impl ConfigSource {
    /// The file at `path`, with secrets from the process environment.
    pub fn file(path: PathBuf) -> ConfigSource {
        ConfigSource {
            path,
            env: Arc::new(ProcessEnv),
        }
    }
}

pub struct Lifecycle {
    shared: Arc<Shared>,
    /// The audit and access log writers.
    writers: Vec<Arc<LineWriter>>,
    source: Option<ConfigSource>,
}

impl Lifecycle {
    pub fn new(
        shared: Arc<Shared>,
        writers: Vec<LineWriter>,
        source: Option<ConfigSource>,
    ) -> Lifecycle {
        Lifecycle {
            shared,
            writers: writers.into_iter().map(Arc::new).collect(),
            source,
        }
    }

    /// Reloads on SIGHUP and whenever a watched file changes (the config itself, its
    /// `sites_dir`, the TLS certificates and keys), debounced: an editor's, a provisioning job's
    /// or cert-manager's burst of writes, renames and symlink swaps is one reload.
    async fn reload_loop(&self) {
        let Some(source) = &self.source else {
            return std::future::pending().await;
        };
        let path = &source.path;
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; reload on signal is off");
                None
            }
        };
        let mut watch = crate::watch::Watcher::new();
        watch.set(&self.watched(path));
        loop {
            tokio::select! {
                Some(()) = async {
                    match hup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    tracing::info!("SIGHUP: reloading, and reopening the log files");
                    for w in &self.writers {
                        w.reopen();
                    }
                    // What this reload reads is what counts as seen from now on.
                    watch.mark();
                }
                () = watch.changed() => tracing::info!("a watched file changed: reloading"),
            }
            self.reload(source).await;
            watch.set(&self.watched(path));
        }
    }

    /// What reloads the config when it changes: the config file, the TLS certificates and keys,
    /// and `sites_dir` (the serving config's, and the one the file names now, in case the
    /// reload that introduced it failed).
    fn watched(&self, config: &Path) -> crate::watch::Watched {
        let snap = self.shared.snapshot();
        let mut files = vec![config.to_path_buf()];
        if let Some(tls) = &snap.config.tls {
            for (cert, key) in &tls.files {
                files.push(cert.clone());
                files.push(key.clone());
            }
        }
        if let Some(a) = &snap.config.assertion {
            files.extend(a.files.iter().cloned());
        }
        let mut dirs: Vec<PathBuf> = snap.config.sites_dir.iter().cloned().collect();
        if let Some(named) = Config::sites_dir_named(config)
            && !dirs.contains(&named)
        {
            dirs.push(named);
        }
        crate::watch::Watched { files, dirs }
    }

    async fn reload(&self, source: &ConfigSource) {
        let (path, env) = (source.path.clone(), source.env.clone());
        let loaded =
            tokio::task::spawn_blocking(move || Config::load_with(&path, env.as_ref())).await;
        let result = match loaded {
            Ok(Ok(config)) => {
                let old = self.shared.snapshot();
                let tls_addr = |c: &Config| c.tls.as_ref().map(|t| t.addr);
                if config.listen != old.config.listen
                    || tls_addr(&config) != tls_addr(&old.config)
                    || config.admin.addr != old.config.admin.addr
                {
                    tracing::error!(
                        "reload refused: listen.addr, listen.tls.addr and admin.addr cannot change without a restart"
                    );
                    "error"
                } else {
                    if config.header_timeout != old.config.header_timeout {
                        // It is built into the listener's HTTP options at start.
                        tracing::warn!(
                            "listen.header_timeout changed: it takes effect at the next restart"
                        );
                    }
                    self.shared.replace(config);
                    tracing::info!("config reloaded");
                    "ok"
                }
            }
            Ok(Err(errors)) => {
                tracing::error!("reload refused, the old config keeps serving:\n{errors}");
                "error"
            }
            Err(e) => {
                tracing::error!(error = %e, "reload failed");
                "error"
            }
        };
        crate::metrics::METRICS
            .config_reloads
            .with_label_values(&[result])
            .inc();
    }
}

#[async_trait]
impl BackgroundService for Lifecycle {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let logs: Vec<_> = self
            .writers
            .iter()
            .map(|w| {
                let (w, stop) = (w.clone(), stop_rx.clone());
                tokio::spawn(async move { w.run(stop).await })
            })
            .collect();
        let snap = self.shared.snapshot();
        if let (Some(fanout), Some(url)) = (
            self.shared.fanout.clone(),
            snap.config.liveness.redis_url.clone(),
        ) {
            let shared = self.shared.clone();
            let memory = crate::fanout::Memory {
                ended_ttl: snap.config.liveness.ended_ttl,
                retention: snap.config.revocation_floor(),
            };
            let url = String::from_utf8_lossy(&url.0).into_owned();
            tokio::spawn(async move {
                let to = crate::fanout::Targets {
                    liveness: &shared.liveness,
                    revocations: &shared.revocations,
                    memory,
                };
                fanout.run(url, to).await
            });
        }
        drop(snap);
        tokio::select! {
            _ = shutdown.changed() => {},
            _ = self.reload_loop() => {},
        }
        let grace = self.shared.snapshot().config.grace_period;
        let started = Instant::now();
        while self.shared.inflight() > 0 && started.elapsed() < grace {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if self.shared.inflight() > 0 {
            tracing::warn!(
                left = self.shared.inflight(),
                "grace period over: stopping with requests in flight"
            );
        }
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(7), futures_util::future::join_all(logs))
            .await;
        tracing::info!("stopped");
        std::process::exit(0);
    }
}
