//! The daemon's main loop. Level-triggered: every trigger (config change, link
//! event, resync, netlink overrun, retry) leads to the same full reconcile, so a
//! lost or coalesced event costs nothing but latency. Link events that cannot
//! change a plan (VM ports coming and going) are dropped before they wake it
//! (see `interest`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::MulticastGroup;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::time::{sleep_until, Instant};

use super::applier::Links;
use super::backoff::Backoff;
use super::config::{ConfigSource, Reload};
use super::interest::{Filter, Interest, LinkEvent};
use super::metrics::Metrics;
use super::planner::plan;
use super::reconcile::{collect_garbage, Reconciler};
use super::rtlinks::RtLinks;
use crate::netlink::Netlink;
use crate::paths::RunDir;

#[derive(Debug, Clone)]
pub struct Options {
    pub config: PathBuf,
    pub node: String,
    pub listen: Option<SocketAddr>,
    pub once: bool,
    pub dry_run: bool,
    pub resync: Duration,
    pub run_dir: RunDir,
    /// Serve `portgroup.io/<portgroup>` resources to the kubelet; None: off.
    pub device_plugin: Option<super::deviceplugin::Settings>,
}

/// Exit status when the config is invalid (and there is no good one to fall back on).
pub const EXIT_CONFIG_INVALID: i32 = 2;

/// One `ip link del` makes several events within microseconds: wait this long
/// after the first so that they make one reconcile, well inside the ~100 ms
/// repair budget.
const COALESCE: Duration = Duration::from_millis(10);
/// How long VM port removals are gathered before one garbage collection. The
/// plugin's DEL removes its own record: the collector is the backstop for a DEL
/// that never comes, where seconds do not matter and a burst of pod deletions
/// should cost one collection, not one per second.
const GC_DEBOUNCE: Duration = Duration::from_secs(5);
/// The port-security sweep that collects the elements DELs left runs once no
/// record was removed for this long (see `sweep_when_records_go`)...
const RECORD_SWEEP_QUIET: Duration = Duration::from_millis(100);
/// ...or this long after the first, whichever comes first.
const RECORD_SWEEP_MAX_WAIT: Duration = Duration::from_secs(1);
/// First retry after a failed reconcile; doubles up to the resync period.
const RETRY_MIN: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
enum Trigger {
    Config,
    Link {
        deleted: bool,
    },
    Overrun,
    /// Another process changed table bridge portgroup (or notifications were lost).
    Nftables,
}

#[derive(Debug, Default)]
struct Batch {
    config: bool,
    resync: bool,
    overrun: bool,
    link: bool,
    link_deleted: bool,
    /// A young attachment record came of age: collect garbage.
    gc_due: bool,
    /// Port security may need repair: verify it, even with nothing else to do.
    nftables: bool,
    /// When the first link event of the batch arrived: drift is timed from there.
    first_link: Option<Instant>,
}

impl Batch {
    fn add(&mut self, t: Trigger) {
        match t {
            Trigger::Config => self.config = true,
            Trigger::Overrun => self.overrun = true,
            Trigger::Nftables => self.nftables = true,
            Trigger::Link { deleted } => {
                self.link = true;
                self.link_deleted |= deleted;
                self.first_link.get_or_insert_with(Instant::now);
            }
        }
    }

    /// Only nf_tables changed: port security is verified, links are not.
    fn only_nftables(&self) -> bool {
        self.nftables && !(self.config || self.resync || self.overrun || self.link || self.gc_due)
    }
}

fn connect() -> Result<RtLinks, String> {
    Netlink::connect()
        .map(|netlink| RtLinks { netlink })
        .map_err(|e| format!("opening a route netlink socket: {e}"))
}

/// Runs the daemon per `opts`; returns the process exit status.
pub async fn run(opts: Options) -> Result<i32, String> {
    let metrics = Arc::new(Metrics::default());
    let mut source = ConfigSource::new(opts.config.clone());
    source.reload();
    if opts.dry_run {
        return dry_run(&opts, &source).await;
    }
    let links = connect()?;
    let mut reconciler = Reconciler::new(
        links,
        opts.node.clone(),
        opts.run_dir.clone(),
        metrics.clone(),
    );
    if opts.once {
        if source.good.is_none() {
            reconciler.publish_config_errors(&source);
            return Ok(EXIT_CONFIG_INVALID);
        }
        reconciler
            .reconcile(&source, true)
            .await
            .map_err(|e| format!("reading the node's links: {e}"))?;
        if let Some(state) = &reconciler.previous {
            for pg in &state.portgroups {
                match (&pg.ready, &pg.reason) {
                    (true, _) => tracing::info!(portgroup = %pg.name, bridge = %pg.bridge, "ready"),
                    (false, reason) => tracing::warn!(
                        portgroup = %pg.name,
                        "not ready: {}",
                        reason.as_deref().unwrap_or("no reason given")
                    ),
                }
            }
        }
        return Ok(0);
    }
    serve(opts, source, reconciler, metrics).await
}

async fn dry_run(opts: &Options, source: &ConfigSource) -> Result<i32, String> {
    let Some(config) = source.good.as_ref() else {
        println!(
            "config {} is invalid; nothing would be done:",
            opts.config.display()
        );
        for e in &source.errors {
            println!("  {e}");
        }
        return Ok(EXIT_CONFIG_INVALID);
    };
    let links = connect()?;
    let observed = links
        .dump()
        .await
        .map_err(|e| format!("reading the node's links: {e}"))?;
    let previous = crate::state::NodeState::read(&opts.run_dir.state_file()).ok();
    let p = plan(config, &opts.node, previous.as_ref(), &observed);
    println!(
        "dry run on node {}: {} operation(s), nothing changed",
        opts.node,
        p.steps.len()
    );
    for step in &p.steps {
        println!("  [{}] {}", step.portgroup, step.op);
    }
    println!("portgroups after the plan:");
    for pg in &p.portgroups {
        let what = if pg.draining {
            "draining"
        } else if pg.ready {
            "ready"
        } else if p.steps_for(&pg.name).next().is_some() {
            "would be made"
        } else {
            "not ready"
        };
        let reason = pg
            .reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        println!(
            "  {} ({}, bridge {}): {what}{reason}",
            pg.name,
            pg.vlan
                .map_or_else(|| pg.segment(), |vid| format!("vlan {vid}")),
            pg.bridge
        );
    }
    Ok(0)
}

/// Changes other processes make to table bridge portgroup, as triggers: on a
/// blocking socket on its own thread (a notification is a few hundred bytes and
/// the thread does nothing else). The daemon's own repairs are not reported.
/// Each (re)subscription is a trigger too: changes while unsubscribed were missed.
fn monitor_nftables(tx: UnboundedSender<Trigger>) {
    let mut backoff = Backoff::new(RETRY_MIN, Duration::from_secs(60));
    let mut failures = 0u32;
    loop {
        match crate::portsec::watch_changes() {
            Ok(watcher) => {
                if failures > 0 {
                    tracing::info!("subscribed to nf_tables notifications again");
                }
                failures = 0;
                backoff.succeeded();
                if tx.send(Trigger::Nftables).is_err() {
                    return;
                }
                let result = watcher.run(|| tx.send(Trigger::Nftables).is_ok());
                if tx.is_closed() {
                    return;
                }
                if let Err(e) = result {
                    tracing::warn!("{e}; resubscribing");
                }
            }
            Err(e) => {
                // Said once: without nf_tables the resync still verifies (and
                // fails loudly where a port needs rules).
                if failures == 0 {
                    tracing::warn!(
                        "{e}; port security is verified at each resync only until this works"
                    );
                }
                failures += 1;
            }
        }
        std::thread::sleep(backoff.failed());
    }
}

/// A removed attachment record as a trigger for the port-security sweep: a DEL
/// leaves its port's elements to it while this daemon holds the sweeper lock
/// (crate::sweeper), which is taken once the records are watched and is held
/// by this thread, so it goes when the watch does. Another daemon holding the
/// lock sweeps too; this one takes it over when it can.
fn sweep_when_records_go(run_dir: &RunDir, tx: UnboundedSender<Trigger>) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    use std::os::fd::AsFd;
    let dir = run_dir.attachments_dir();
    let mut backoff = Backoff::new(RETRY_MIN, Duration::from_secs(60));
    let mut held = None;
    loop {
        let watched = std::fs::create_dir_all(&dir)
            .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(nix::libc::EIO)))
            .and_then(|()| Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK))
            .and_then(|inotify| {
                let mask = AddWatchFlags::IN_DELETE | AddWatchFlags::IN_MOVED_FROM;
                inotify.add_watch(&dir, mask).map(|_| inotify)
            });
        let inotify = match watched {
            Ok(inotify) => inotify,
            Err(e) => {
                held = None;
                tracing::warn!(
                    "watching {}: {e}; DELs remove their ports' rules themselves",
                    dir.display()
                );
                std::thread::sleep(backoff.failed());
                continue;
            }
        };
        backoff.succeeded();
        loop {
            if held.is_none() {
                held = match crate::sweeper::hold(run_dir) {
                    Ok(Some(lock)) => Some(lock),
                    Ok(None) => None,
                    Err(e) => {
                        tracing::warn!("taking the sweeper lock: {e}; DELs remove their ports' rules themselves");
                        None
                    }
                };
            }
            let mut ready = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
            match poll(&mut ready, PollTimeout::NONE) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    tracing::warn!("waiting for record events: {e}; watching again");
                    break;
                }
            }
            // A burst of DELs removes its records within a moment: one sweep
            // once it is over (no record event for a quiet spell, at most
            // RECORD_SWEEP_MAX_WAIT), rather than sweeps that compete with the
            // DELs for the CPU and the nf_tables commit lock.
            let started = Instant::now();
            let (mut gone_dir, mut record_gone, mut failed) = (false, false, false);
            loop {
                std::thread::sleep(RECORD_SWEEP_QUIET);
                let mut any = false;
                loop {
                    match inotify.read_events() {
                        Ok(events) => {
                            for e in events {
                                any = true;
                                gone_dir |= e.mask.contains(AddWatchFlags::IN_IGNORED);
                                // A record, not an ADD's temporary file; or events lost.
                                record_gone |= e.mask.contains(AddWatchFlags::IN_Q_OVERFLOW)
                                    || e.name
                                        .as_ref()
                                        .and_then(|n| n.to_str())
                                        .is_some_and(|n| crate::attachment::named_by(n).is_some());
                            }
                        }
                        Err(nix::errno::Errno::EAGAIN) => break,
                        Err(nix::errno::Errno::EINTR) => {}
                        Err(e) => {
                            tracing::warn!("reading record events: {e}; watching again");
                            failed = true;
                            break;
                        }
                    }
                }
                if !any || failed || gone_dir || started.elapsed() >= RECORD_SWEEP_MAX_WAIT {
                    break;
                }
            }
            if record_gone && tx.send(Trigger::Nftables).is_err() {
                return;
            }
            // The directory itself went: watch it again, made anew.
            if gone_dir || failed {
                held = None;
                break;
            }
        }
    }
}

/// Link events (RTNLGRP_LINK) as triggers, and address events (an untagged
/// portgroup waits for its uplink to lose its addresses), each judged by the
/// [`Filter`] first: only those about the daemon's links and uplinks wake the
/// reconciler. Overruns become a trigger too: some events were lost, and only a
/// full reconcile knows what they were.
async fn monitor_links(
    tx: UnboundedSender<Trigger>,
    filter: Arc<Mutex<Filter>>,
    metrics: Arc<Metrics>,
    port_gone: UnboundedSender<()>,
) {
    let judge = |pass: bool| {
        let counter = match pass {
            true => &metrics.events_relevant,
            false => &metrics.events_ignored,
        };
        counter.fetch_add(1, Relaxed);
        pass
    };
    let lock = || filter.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        match rtnetlink::new_multicast_connection(&[
            MulticastGroup::Link,
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Ipv6Ifaddr,
        ]) {
            Ok((mut connection, _handle, mut messages)) => {
                // A burst of VM ports coming and going must not overrun us often.
                if let Err(e) = netlink_sys::AsyncSocket::socket_mut(connection.socket_mut())
                    .set_rx_buf_sz(4 << 20)
                {
                    tracing::debug!("netlink receive buffer: {e}");
                }
                // The kernel drops most pod churn before it reaches us.
                if let Err(e) = super::sockfilter::attach(netlink_sys::AsyncSocket::socket_ref(
                    connection.socket_mut(),
                )) {
                    tracing::warn!("link event socket filter: {e}; filtering in user space only");
                }
                let task = tokio::spawn(connection);
                while let Some((message, _)) = messages.next().await {
                    let trigger = match message.payload {
                        NetlinkPayload::InnerMessage(
                            ref inner @ (RouteNetlinkMessage::NewLink(ref m)
                            | RouteNetlinkMessage::DelLink(ref m)),
                        ) => {
                            let deleted = matches!(inner, RouteNetlinkMessage::DelLink(_));
                            // AF_BRIDGE port notifications are never counted, nor judged.
                            let Some(e) = LinkEvent::from_message(m, deleted) else {
                                continue;
                            };
                            let name = e.link.name.clone();
                            if !judge(lock().link(e)) {
                                if deleted && crate::naming::is_host_veth_name(&name) {
                                    // Perhaps an attachment whose DEL never comes.
                                    let _ = port_gone.send(());
                                }
                                continue;
                            }
                            tracing::debug!(link = %name, deleted, "link event counts");
                            Trigger::Link { deleted }
                        }
                        NetlinkPayload::InnerMessage(
                            RouteNetlinkMessage::NewAddress(m) | RouteNetlinkMessage::DelAddress(m),
                        ) => {
                            // IPv6 link-local addresses come and go with every up link
                            // (and DAD); the planner does not count them.
                            if super::rtlinks::is_link_local(&m) {
                                metrics.events_ignored.fetch_add(1, Relaxed);
                                continue;
                            }
                            if !judge(lock().address(m.header.index)) {
                                continue;
                            }
                            Trigger::Link { deleted: false }
                        }
                        NetlinkPayload::Overrun(_) => {
                            tracing::warn!(
                                "netlink overrun (ENOBUFS): link events were lost; resyncing now"
                            );
                            Trigger::Overrun
                        }
                        _ => continue,
                    };
                    if tx.send(trigger).is_err() {
                        return;
                    }
                }
                task.abort();
                tracing::warn!("link event socket closed; reopening");
            }
            Err(e) => tracing::error!("subscribing to link events: {e}; retrying"),
        }
        if tx.send(Trigger::Overrun).is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A VM's host veth gone may leave an attachment whose DEL never comes: collect
/// garbage, without a reconcile (nothing of the daemon's links changed) and at
/// most once per [`GC_DEBOUNCE`], so that a burst of DELs costs one collection.
async fn collect_when_ports_go(
    mut gone: UnboundedReceiver<()>,
    again: UnboundedSender<()>,
    run_dir: RunDir,
    metrics: Arc<Metrics>,
) {
    let links = match connect() {
        Ok(links) => links,
        Err(e) => {
            tracing::error!("garbage collection on VM port removal is off: {e}");
            return;
        }
    };
    while gone.recv().await.is_some() {
        tokio::time::sleep(GC_DEBOUNCE).await;
        while gone.try_recv().is_ok() {}
        match links.dump_links().await {
            Ok(observed) => {
                if let Some(due) = collect_garbage(&observed, &run_dir, &metrics) {
                    let again = again.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(due).await;
                        let _ = again.send(());
                    });
                }
            }
            Err(e) => tracing::warn!("garbage collection: reading the node's links: {e}"),
        }
    }
}

async fn serve(
    opts: Options,
    mut source: ConfigSource,
    mut reconciler: Reconciler<RtLinks>,
    metrics: Arc<Metrics>,
) -> Result<i32, String> {
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?;
    if let Some(addr) = opts.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("listening on {addr}: {e}"))?;
        tracing::info!("serving /healthz, /readyz and /metrics on http://{addr}");
        tokio::spawn(super::http::serve(listener, metrics.clone()));
    }
    metrics.alive.store(true, Relaxed);
    let device_plugin = opts
        .device_plugin
        .clone()
        .map(|settings| super::deviceplugin::manager::start(settings, metrics.clone()));

    let (tx, mut rx) = unbounded_channel::<Trigger>();
    let (config_tx, mut config_rx) = unbounded_channel::<()>();
    {
        let path = opts.config.clone();
        tokio::spawn(async move { super::config::watch(&path, config_tx).await });
    }
    {
        let config_events = tx.clone();
        tokio::spawn(async move {
            while config_rx.recv().await.is_some() {
                if config_events.send(Trigger::Config).is_err() {
                    return;
                }
            }
        });
    }
    {
        let nft_events = tx.clone();
        std::thread::Builder::new()
            .name("nftables-events".into())
            .spawn(move || monitor_nftables(nft_events))
            .map_err(|e| format!("starting the nf_tables event thread: {e}"))?;
    }
    {
        let record_events = tx.clone();
        let run_dir = opts.run_dir.clone();
        std::thread::Builder::new()
            .name("record-events".into())
            .spawn(move || sweep_when_records_go(&run_dir, record_events))
            .map_err(|e| format!("starting the attachment record event thread: {e}"))?;
    }
    let filter = Arc::new(Mutex::new(Filter::new()));
    let (port_gone, ports_gone) = unbounded_channel::<()>();
    tokio::spawn(collect_when_ports_go(
        ports_gone,
        port_gone.clone(),
        opts.run_dir.clone(),
        metrics.clone(),
    ));
    tokio::spawn(monitor_links(
        tx,
        filter.clone(),
        metrics.clone(),
        port_gone,
    ));
    if source.good.is_some() {
        metrics.config_generation.store(source.generation, Relaxed);
    } else {
        metrics.errors.fetch_add(1, Relaxed);
    }

    tracing::info!(
        node = %opts.node,
        config = %opts.config.display(),
        run_dir = %opts.run_dir.0.display(),
        resync_s = opts.resync.as_secs(),
        "portgroupd started"
    );
    let mut readiness: BTreeMap<String, bool> = BTreeMap::new();
    let mut next_resync = Instant::now() + opts.resync;
    let mut reconcile_backoff = Backoff::new(RETRY_MIN, opts.resync);
    // The first pass runs at once, as a resync (with garbage collection).
    let mut batch = Batch {
        resync: true,
        ..Default::default()
    };
    loop {
        if batch.config || batch.resync {
            match source.reload() {
                Reload::Loaded => {
                    metrics.config_generation.store(source.generation, Relaxed);
                    reconciler.release_held();
                }
                Reload::Refused => {
                    metrics.errors.fetch_add(1, Relaxed);
                }
                Reload::Unchanged => {}
            }
        }
        let collect = batch.resync || batch.overrun || batch.link_deleted || batch.gc_due;
        // A pass that collects verifies port security too (Reconciler::heal); a
        // change to the nf_tables table alone needs nothing else.
        let (outcome, again) = if batch.only_nftables() {
            reconciler.heal();
            (None, false)
        } else {
            filter
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .open_window();
            let result = reconciler.reconcile(&source, collect).await;
            // A reconcile that failed reading the links never reached its sweep.
            if batch.nftables && !(collect && result.is_ok()) {
                reconciler.heal();
            }
            // Without a pass that read the links (no good config, a failed
            // dump), every event counts.
            let interest = reconciler
                .interest
                .take()
                .filter(|_| result.is_ok() && source.good.is_some())
                .unwrap_or_else(Interest::everything);
            let again = filter
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .install(interest);
            (Some(result), again)
        };
        let retry = match outcome {
            None => reconciler.next_retry().map(Instant::from_std),
            Some(Ok(outcome)) => {
                if source.good.is_some() {
                    metrics.ready.store(true, Relaxed);
                }
                reconcile_backoff.succeeded();
                if let Some(state) = &reconciler.previous {
                    metrics.set_portgroup_ready(&state.portgroups);
                    let now: BTreeMap<String, bool> = state
                        .portgroups
                        .iter()
                        .map(|pg| (pg.name.clone(), pg.ready))
                        .collect();
                    let flipped: Vec<String> = now
                        .iter()
                        .filter(|(name, ready)| readiness.get(*name).is_some_and(|r| r != *ready))
                        .map(|(name, ready)| {
                            format!("{name} {}", if *ready { "ready" } else { "not ready" })
                        })
                        .collect();
                    if let (Some(first), false) = (batch.first_link, flipped.is_empty()) {
                        tracing::info!(
                            "readiness changed in {} ms after the link event: {}",
                            first.elapsed().as_millis(),
                            flipped.join(", ")
                        );
                    }
                    readiness = now;
                    // Same reconcile, same netlink event: the kubelet hears of a
                    // readiness change as soon as the node state says it.
                    if let Some(dp) = &device_plugin {
                        dp.offer(super::deviceplugin::offers(&state.portgroups));
                    }
                }
                if outcome.applied > 0 {
                    if let (Some(first), false) = (batch.first_link, batch.config) {
                        metrics.drift_repairs.fetch_add(1, Relaxed);
                        tracing::info!(
                            "repaired drift in {} ms ({} change(s))",
                            first.elapsed().as_millis(),
                            outcome.applied
                        );
                    }
                }
                // Failed operations back off inside the reconciler; wake up when one may go again.
                reconciler.next_retry().map(Instant::from_std)
            }
            Some(Err(e)) => {
                tracing::error!("reconcile failed: reading the node's links: {e}");
                Some(Instant::now() + reconcile_backoff.failed())
            }
        };
        if batch.resync {
            next_resync = Instant::now() + opts.resync;
        }

        batch = Batch::default();
        if again {
            // An event that arrived during the pass counts by what the pass found.
            batch.add(Trigger::Link { deleted: false });
            continue;
        }
        let gc_at = reconciler.gc_due.map(Instant::from_std);
        tokio::select! {
            _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping; host bridges and VLAN interfaces stay in place"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: stopping; host bridges and VLAN interfaces stay in place"); break; }
            _ = sleep_until(next_resync) => batch.resync = true,
            _ = sleep_until(retry.unwrap_or(next_resync)), if retry.is_some() => {}
            _ = sleep_until(gc_at.unwrap_or(next_resync)), if gc_at.is_some() => {
                batch.gc_due = true;
                reconciler.gc_due = None;
            }
            t = rx.recv() => match t {
                Some(t) => batch.add(t),
                None => return Err("event channels closed".into()),
            },
        }
        let deadline = Instant::now() + COALESCE;
        loop {
            tokio::select! {
                _ = sleep_until(deadline) => break,
                t = rx.recv() => match t {
                    Some(t) => batch.add(t),
                    None => break,
                },
            }
        }
    }
    metrics.alive.store(false, Relaxed);
    if let Some(dp) = device_plugin {
        dp.stop().await;
    }
    Ok(0)
}
