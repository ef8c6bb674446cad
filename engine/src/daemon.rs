//! `mailflow run`: wires the stages together and runs until SIGTERM/SIGINT.
//!
//! Start: compile scripts (a broken set refuses to start), open the spool and resume what a
//! previous run left, start the deliverer, the script watcher and the listeners. SIGHUP
//! reloads the scripts and the config (what can change while running). Under systemd it
//! reports READY once the listeners are bound, RELOADING/READY around a SIGHUP, STOPPING at
//! the end ([`crate::service`]). Stop: no new connections, sessions get `shutdown_grace` to finish
//! (idle ones are told 421 at once), the spool writer and the deliverer drain, exit 0.

use std::sync::Arc;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch, Semaphore};

use crate::config::LoadedConfig;
use std::collections::BTreeMap;

use crate::deliver::{self, Deliverer, DeliveryTarget};
use crate::fetch::{self, AccountTasks, FetchDeps};
use crate::outbound::{Outbound, Settings as OutboundSettings, Transport};
use crate::script::{watch as script_watch, ScriptHost};
use crate::service::{self, Readiness};
use crate::smtp::{self, runtime::SessionThreads, Shared};
use crate::spool::Spool;

/// Segments in flight between the spool writer and the deliverer.
const DELIVERY_QUEUE: usize = 64;

/// Runs the daemon. Returns when it has stopped cleanly.
pub async fn run(loaded: LoadedConfig) -> anyhow::Result<()> {
    let loaded_source = loaded.source.clone();
    let config = Arc::new(loaded.config);
    crate::message::stored::BUDGET.set_cap(config.smtp.max_inflight_memory);
    service::check_file_limit(&config);
    if let Some(addr) = crate::prometheus::start(&config.metrics.listen).await? {
        tracing::info!(addr = %addr, "metrics listening at /metrics");
    }
    let store = crate::state::open(&config.state.dir)?;
    let trace_store = start_traces(&config)?;
    let extend = crate::plugins::hook_for(&config, store.clone())?;
    let scripts = match ScriptHost::load(config.scripts.clone(), extend) {
        Ok(host) => Arc::new(host),
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            anyhow::bail!("scripts in {} do not compile; not starting", config.scripts.dir.display());
        }
    };
    let _watcher = match script_watch::spawn(scripts.clone()) {
        Ok(guard) => Some(guard),
        Err(e) => {
            tracing::warn!(error = %e, dir = %config.scripts.dir.display(), "cannot watch the scripts folder: reload with SIGHUP");
            None
        }
    };

    let transport = Transport::from_config(&config.outbound, &config.smtp.hostname)
        .map_err(anyhow::Error::msg)?
        .with_relay_login(crate::oauth2::relay::RelayLogin::from_config(&config, &store));
    let transport = Arc::new(transport);
    let srs = crate::config::signing::load_srs(&config).map_err(anyhow::Error::msg)?.map(Arc::new);
    let settings = OutboundSettings {
        retry: config.outbound.retry.clone(),
        max_age: config.outbound.max_age,
        hostname: config.smtp.hostname.clone(),
        local: DeliveryTarget::from_config(&config),
        concurrency: config.outbound.concurrency,
        srs: srs.clone(),
    };
    let queue_dir = config.queue_dir();
    let (signer, key_errors) = crate::outbound::Signer::from_config(&config);
    for error in &key_errors {
        // Not fatal: mail for that domain goes out unsigned (each message logs it again).
        tracing::error!(error = %error, "DKIM key not loaded");
    }
    let signer = (!signer.is_empty()).then(|| Arc::new(signer));
    let (outbound, scheduler) = Outbound::start(&queue_dir, transport, settings, signer)
        .with_context(|| format!("opening the outbound queue in {}", queue_dir.display()))?;

    let delivery = Deliverer::from_config(&config, outbound, store.clone()).with_srs(srs.clone());
    let fetch_deps = FetchDeps {
        scripts: scripts.clone(),
        store: store.clone(),
        deliverer: delivery.clone(),
        journal_dir: {
            let dir = config.state.dir.join("fetch-journal");
            // Messages a poller was fetching when the daemon stopped: fetched again.
            crate::spool::large::clear(&dir);
            dir
        },
        busy: Arc::default(),
    };
    let mut pollers: BTreeMap<String, AccountTasks> =
        config.accounts.iter().map(|a| (a.name.clone(), fetch::start(&fetch_deps, a.clone()))).collect();
    if !pollers.is_empty() {
        tracing::info!(accounts = pollers.len(), "pollers started");
    }

    let (deliver_tx, deliver_rx) = mpsc::channel(DELIVERY_QUEUE);
    let deliverer = deliver::spawn(delivery, deliver_rx, deliver_tx.downgrade());
    let spool_dir = config.spool_dir();
    let (spool, leftovers) = Spool::open(&spool_dir, deliver_tx.clone())
        .with_context(|| format!("opening the spool in {}", spool_dir.display()))?;
    deliver::resume(leftovers, &deliver_tx).await;
    drop(deliver_tx);

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let connections = Arc::new(Semaphore::new(config.smtp.max_connections));
    let tls = load_tls(&config)?;
    let verifier = crate::verify::Verifier::from_config(&config)?.map(Arc::new);
    let shared = Arc::new(Shared {
        config: ArcSwap::new(config.clone()),
        scripts: scripts.clone(),
        spool,
        shutdown: shutdown_rx,
        connections: connections.clone(),
        tls: arc_swap::ArcSwapOption::new(tls),
        auth_failures: Default::default(),
        srs,
        verifier,
    });
    let web_config = Arc::new(ArcSwap::new(config.clone()));
    let web = crate::web::WebDeps {
        config: web_config.clone(),
        scripts: scripts.clone(),
        connections: connections.clone(),
        max_connections: config.smtp.max_connections,
        queue_dir: queue_dir.clone(),
        spool_dir: spool_dir.clone(),
        started: std::time::Instant::now(),
    };
    if let Some(addr) = crate::web::start(web).await? {
        tracing::info!(addr = %addr, "status page listening");
    }
    let session_threads =
        SessionThreads::start(smtp::runtime::default_count()).context("cannot start the SMTP session threads")?;
    let mut listeners = Vec::new();
    for spec in config.smtp.all_listeners() {
        let addr = spec.address;
        let listener = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        let tls = if spec.tls == crate::config::ListenerTls::Implicit { " (implicit TLS)" } else { "" };
        tracing::info!(addr = %listener.local_addr().unwrap_or(addr), role = spec.role.name(), "SMTP{tls} listening");
        let listener = listener.into_std().with_context(|| format!("listening on {addr}"))?;
        for handle in session_threads.handles() {
            let (listener, shared, spec) =
                (listener.try_clone().with_context(|| format!("listening on {addr}"))?, shared.clone(), spec);
            listeners.push(handle.spawn(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => smtp::serve(listener, shared, spec).await,
                    Err(e) => tracing::error!(error = %e, "cannot accept on a session thread"),
                }
            }));
        }
    }
    tracing::info!(
        config = %loaded.source.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "built-in defaults".into()),
        scripts = %config.scripts.dir.display(),
        "mailflow running"
    );
    service::notify(Readiness::Ready);

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading config, scripts and TLS certificate");
                service::notify(Readiness::Reloading);
                let running = reload_config(&loaded_source, &shared).await;
                web_config.store(running.clone());
                let (host, limits) = (scripts.clone(), running.scripts.clone());
                let _ = tokio::task::spawn_blocking(move || host.reload_with(&limits)).await;
                match load_tls(&running) {
                    Ok(tls) => shared.tls.store(tls),
                    Err(e) => tracing::error!(error = %e, "TLS certificate not reloaded; the previous one stays"),
                }
                reload_accounts(&running.accounts, &fetch_deps, &mut pollers, running.smtp.shutdown_grace).await;
                service::notify(Readiness::Ready);
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }

    tracing::info!("shutting down: no new connections");
    service::notify(Readiness::Stopping);
    let config = shared.config.load_full();
    for (_, tasks) in std::mem::take(&mut pollers) {
        tasks.stop(config.smtp.shutdown_grace).await;
    }
    let _ = shutdown_tx.send(true);
    for listener in listeners {
        let _ = listener.await;
    }
    let grace = config.smtp.shutdown_grace;
    let all = u32::try_from(config.smtp.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, connections.acquire_many(all)).await.is_err() {
        tracing::warn!(grace = ?grace, "sessions still open after the grace period; their messages were not acknowledged");
    }
    // Sessions past the grace go with their threads; dropping the last spool handle then stops
    // the writer, and the deliverer drains and stops.
    let _ = tokio::task::spawn_blocking(move || session_threads.stop()).await;
    drop(shared);
    if tokio::time::timeout(grace, deliverer).await.is_err() {
        tracing::warn!("deliveries still running at exit: they resume from the spool on next start");
    }
    scheduler.abort();
    if let Some(store) = &trace_store {
        if let Err(e) = crate::trace::store::flush(store, true) {
            tracing::warn!(error = %e, "last traces not saved");
        }
        let _ = std::fs::remove_file(crate::trace::socket::path(&config.state.dir));
    }
    tracing::info!("stopped");
    Ok(())
}

/// Starts recording decision traces unless `[web] trace_retention` is zero: the recorder, its
/// store writer and the socket `mailflow trace` asks. Returns their store when they run.
fn start_traces(config: &crate::config::Config) -> anyhow::Result<Option<Arc<redb::Database>>> {
    if config.web.trace_retention.is_zero() {
        return Ok(None);
    }
    let store = crate::state::open_file(&config.state.dir, crate::state::TRACE_FILE)?;
    crate::trace::install();
    crate::trace::store::spawn_writer(store.clone(), config.web.trace_retention)
        .context("cannot start the trace writer")?;
    if let Err(e) = crate::trace::socket::serve(&config.state.dir, store.clone()) {
        tracing::warn!(error = %e, "mailflow trace cannot ask this daemon (it reads the store once the daemon stops)");
    }
    Ok(Some(store))
}

/// The TLS configuration from `tls_cert`/`tls_key`, if set.
fn load_tls(config: &crate::config::Config) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    match (&config.smtp.tls_cert, &config.smtp.tls_key) {
        (Some(cert), Some(key)) => Ok(Some(crate::smtp::tls::load_config(cert, key)?)),
        _ => Ok(None),
    }
}

/// SIGHUP: re-reads the config file and swaps in what can change while running (see
/// [`crate::config::reload`]). Returns the config now in force; on a broken file, the old one.
async fn reload_config(source: &Option<std::path::PathBuf>, shared: &Shared) -> Arc<crate::config::Config> {
    let running = shared.config.load_full();
    let Some(path) = source.clone() else { return running };
    let loaded = tokio::task::spawn_blocking(move || LoadedConfig::load(Some(&path)).map_err(|e| e.to_string()))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    let fresh = match loaded {
        Ok(loaded) => loaded.config,
        Err(e) => {
            tracing::error!(error = %e, "config not reloaded; the running settings stay");
            return running;
        }
    };
    let reloaded = crate::config::reload::merge(&running, fresh);
    for setting in &reloaded.need_restart {
        tracing::warn!(setting = %setting, "config change needs a restart; the running value stays");
    }
    let config = Arc::new(reloaded.config);
    crate::message::stored::BUDGET.set_cap(config.smtp.max_inflight_memory);
    shared.config.store(config.clone());
    tracing::info!("config reloaded");
    config
}

/// SIGHUP: starts new accounts, stops removed ones and restarts changed ones.
async fn reload_accounts(
    fresh: &[crate::config::AccountConfig],
    deps: &FetchDeps,
    pollers: &mut BTreeMap<String, AccountTasks>,
    grace: std::time::Duration,
) {
    let same = |a: &crate::config::AccountConfig, b: &crate::config::AccountConfig| {
        serde_json::to_string(a).ok() == serde_json::to_string(b).ok()
    };
    let names: Vec<String> = pollers.keys().cloned().collect();
    for name in names {
        let keep = fresh.iter().any(|a| a.name == name && pollers.get(&name).is_some_and(|t| same(&t.config, a)));
        if !keep {
            if let Some(tasks) = pollers.remove(&name) {
                tracing::info!(account = %name, "account removed or changed: stopping its poller");
                tasks.stop(grace).await;
            }
        }
    }
    for account in fresh {
        if !pollers.contains_key(&account.name) {
            tracing::info!(account = %account.name, "starting poller");
            pollers.insert(account.name.clone(), fetch::start(deps, account.clone()));
        }
    }
}
