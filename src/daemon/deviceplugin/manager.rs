//! Runs the device-plugin resources: one gRPC server per portgroup on its own
//! socket, registration with the kubelet, and a watch (inotify) on the
//! device-plugin directory so that a kubelet restart, which removes every socket
//! there and makes its own anew, leads to serving and registering again.
//!
//! Level-triggered: whatever woke it (a new node state, a directory event, a
//! retry), the manager looks at the directory and runs [`decide`] on what it sees.
//! The watch is set up before the first look, so no kubelet socket can appear
//! unseen between the two.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hyper_util::rt::TokioIo;
use inotify::{EventMask, Inotify, WatchMask};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tokio_stream::wrappers::UnixListenerStream;

use super::server::{options, PortgroupPlugin};
use super::v1beta1::device_plugin_server::DevicePluginServer;
use super::v1beta1::registration_client::RegistrationClient;
use super::v1beta1::RegisterRequest;
use super::{
    decide, resource_name, socket_name, FileId, Offer, Serving, Settings, Step, API_VERSION,
    KUBELET_SOCKET,
};
use crate::daemon::metrics::Metrics;

/// How long the kubelet may take to answer Register (it dials us back and calls
/// GetDevicePluginOptions before it answers).
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// After a withdrawal, how long the kubelet has to read the empty list before
/// the server goes.
const WITHDRAW_GRACE: Duration = Duration::from_millis(500);

/// What the daemon's loop tells the manager.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// The offers after a reconcile, by portgroup name.
    Offers(BTreeMap<String, Offer>),
    /// The daemon stops: stop serving, remove our sockets; the kubelet keeps the
    /// capacity (allocatable drops to 0) until a new daemon registers again.
    Shutdown,
}

/// The daemon's end: send updates; `stop` waits for the sockets to be removed.
pub struct Handle {
    updates: mpsc::UnboundedSender<Update>,
    task: JoinHandle<()>,
}

impl Handle {
    pub fn offer(&self, offers: BTreeMap<String, Offer>) {
        let _ = self.updates.send(Update::Offers(offers));
    }

    pub async fn stop(self) {
        let _ = self.updates.send(Update::Shutdown);
        if tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .is_err()
        {
            tracing::warn!("device plugin: did not stop within 5 s");
        }
    }
}

/// Starts the manager on the current runtime.
pub fn start(settings: Settings, metrics: Arc<Metrics>) -> Handle {
    let (updates, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move { Manager::new(settings, metrics).run(rx).await });
    Handle { updates, task }
}

struct Running {
    offer: watch::Sender<Offer>,
    server: Option<Server>,
    /// Counts the servers made for this resource: a Register outcome counts
    /// only for the server it registered.
    server_generation: u64,
    registered_with: Option<FileId>,
    /// The Register call running on its own task, and the kubelet socket it
    /// was made to.
    registering: Option<Registering>,
    retry_at: Option<Instant>,
    retry_wait: Duration,
}

impl Running {
    /// Drops a Register call still running (the server it was for is gone, or
    /// the kubelet it was made to).
    fn cancel_registration(&mut self) {
        if let Some(r) = self.registering.take() {
            r.task.abort();
        }
    }
}

struct Registering {
    kubelet: Option<FileId>,
    task: JoinHandle<()>,
}

/// What a Register task reports back to the manager.
struct Registered {
    portgroup: String,
    server_generation: u64,
    kubelet: Option<FileId>,
    result: Result<(), String>,
}

struct Server {
    socket: PathBuf,
    id: Option<FileId>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Server {
    /// Ends the streams and the server; removes the socket if it is still ours.
    fn stop(self) {
        self.stop.send_replace(true);
        if self.id.is_some() && FileId::of_socket(&self.socket) == self.id {
            if let Err(e) = std::fs::remove_file(&self.socket) {
                tracing::warn!("device plugin: removing {}: {e}", self.socket.display());
            }
        }
        let task = self.task;
        // Streams end at once; a connection the kubelet keeps open must not keep
        // the server alive.
        tokio::spawn(async move {
            tokio::time::sleep(WITHDRAW_GRACE).await;
            task.abort();
        });
    }
}

struct Manager {
    settings: Settings,
    metrics: Arc<Metrics>,
    wanted: Option<BTreeMap<String, Offer>>,
    running: BTreeMap<String, Running>,
    kubelet_seen: Option<FileId>,
    /// Where Register tasks report (set when the manager runs).
    registered_tx: Option<mpsc::UnboundedSender<Registered>>,
}

impl Manager {
    fn new(settings: Settings, metrics: Arc<Metrics>) -> Self {
        Manager {
            settings,
            metrics,
            wanted: None,
            running: BTreeMap::new(),
            kubelet_seen: None,
            registered_tx: None,
        }
    }

    fn kubelet_socket(&self) -> PathBuf {
        self.settings.dir.join(KUBELET_SOCKET)
    }

    async fn run(mut self, mut updates: mpsc::UnboundedReceiver<Update>) {
        let (registered_tx, mut registered_rx) = mpsc::unbounded_channel::<Registered>();
        self.registered_tx = Some(registered_tx);
        let (dir_tx, mut dir_rx) = mpsc::unbounded_channel::<()>();
        let dir = self.settings.dir.clone();
        let watcher = tokio::spawn(async move { watch_dir(&dir, dir_tx).await });
        // The first look waits for the watch (and the directory) to exist.
        let _ = dir_rx.recv().await;
        tracing::info!(
            dir = %self.settings.dir.display(),
            devices = self.settings.devices,
            "device plugin: serving portgroup.io/<portgroup> resources to the kubelet"
        );
        loop {
            self.converge();
            let retry_at = self.running.values().filter_map(|r| r.retry_at).min();
            tokio::select! {
                update = updates.recv() => match update {
                    Some(Update::Offers(offers)) => self.set_offers(offers),
                    Some(Update::Shutdown) | None => break,
                },
                event = dir_rx.recv() => if event.is_none() { break },
                Some(outcome) = registered_rx.recv() => self.registered(outcome),
                _ = sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {}
            }
            while let Ok(outcome) = registered_rx.try_recv() {
                self.registered(outcome);
            }
            // One pass for a burst of events (a kubelet restart is several).
            while let Ok(update) = updates.try_recv() {
                match update {
                    Update::Offers(offers) => self.set_offers(offers),
                    Update::Shutdown => {
                        self.shutdown(watcher);
                        return;
                    }
                }
            }
            while dir_rx.try_recv().is_ok() {}
        }
        self.shutdown(watcher);
    }

    fn shutdown(&mut self, watcher: JoinHandle<()>) {
        watcher.abort();
        for (name, mut running) in std::mem::take(&mut self.running) {
            running.cancel_registration();
            if let Some(server) = running.server {
                tracing::info!(portgroup = %name, "device plugin: stopping");
                server.stop();
            }
        }
        self.metrics.set_device_plugin_registered(&BTreeMap::new());
    }

    /// Health flips go to the streams at once, without waiting for a converge.
    fn set_offers(&mut self, offers: BTreeMap<String, Offer>) {
        for (name, offer) in &offers {
            if let Some(r) = self.running.get(name) {
                r.offer.send_if_modified(|o| {
                    let changed = o != offer;
                    if changed {
                        tracing::info!(portgroup = %name, from = ?*o, to = ?offer, "device plugin: health changes");
                    }
                    *o = *offer;
                    changed
                });
            }
        }
        self.wanted = Some(offers);
    }

    fn converge(&mut self) {
        // Nothing is offered before the first node state: its health is unknown.
        let Some(wanted) = self.wanted.clone() else {
            return;
        };
        // No directory, no kubelet: serve once it appears (the watcher looks again).
        if !self.settings.dir.is_dir() {
            return;
        }
        let kubelet = FileId::of_socket(&self.kubelet_socket());
        if kubelet != self.kubelet_seen {
            if kubelet.is_some() {
                tracing::info!(
                    "device plugin: kubelet socket {} is new: registering every resource",
                    self.kubelet_socket().display()
                );
                // A new kubelet: earlier failures say nothing about it.
                for r in self.running.values_mut() {
                    r.retry_at = None;
                    r.retry_wait = RETRY_MIN;
                }
            } else {
                tracing::info!("device plugin: kubelet socket gone; waiting for it to come back");
            }
            self.kubelet_seen = kubelet;
        }
        let serving: BTreeMap<String, Serving> = self
            .running
            .iter()
            .map(|(name, r)| {
                let socket_intact = r.server.as_ref().is_some_and(|s| {
                    s.id.is_some() && FileId::of_socket(&s.socket) == s.id && !s.task.is_finished()
                });
                (
                    name.clone(),
                    Serving {
                        socket_intact,
                        registered_with: r.registered_with,
                        registering_with: r.registering.as_ref().and_then(|g| g.kubelet),
                        retry_at: r.retry_at.map(Instant::into_std),
                    },
                )
            })
            .collect();
        let now = Instant::now();
        for (name, step) in decide(&wanted, &serving, kubelet, now.into_std()) {
            match step {
                Step::Withdraw => self.withdraw(&name),
                Step::Serve => {
                    let offer = wanted.get(&name).copied().unwrap_or(Offer::Unhealthy);
                    self.serve(&name, offer);
                }
                Step::Register => self.register(&name, kubelet),
            }
        }
        self.publish_registered();
    }

    fn publish_registered(&self) {
        let registered = self
            .running
            .iter()
            .map(|(name, r)| {
                (
                    name.clone(),
                    r.registered_with.is_some() && r.registered_with == self.kubelet_seen,
                )
            })
            .collect();
        self.metrics.set_device_plugin_registered(&registered);
    }

    fn withdraw(&mut self, name: &str) {
        let Some(mut running) = self.running.remove(name) else {
            return;
        };
        running.cancel_registration();
        tracing::info!(
            portgroup = %name,
            "device plugin: portgroup gone: withdrawing {} (empty device list, then the socket goes)",
            resource_name(name)
        );
        running.offer.send_replace(Offer::Withdrawn);
        if let Some(server) = running.server {
            // The streams send the empty list on the offer change; the server
            // and its socket go once the kubelet has had time to read it.
            tokio::spawn(async move {
                tokio::time::sleep(WITHDRAW_GRACE).await;
                server.stop();
            });
        }
    }

    fn serve(&mut self, name: &str, offer: Offer) {
        let socket = self.settings.dir.join(socket_name(name));
        let running = self
            .running
            .entry(name.to_string())
            .or_insert_with(|| Running {
                offer: watch::channel(offer).0,
                server: None,
                server_generation: 0,
                registered_with: None,
                registering: None,
                retry_at: None,
                retry_wait: RETRY_MIN,
            });
        if let Some(old) = running.server.take() {
            tracing::info!(portgroup = %name, socket = %socket.display(), "device plugin: socket removed under us; serving again");
            old.stop();
        }
        // The registration is with this server's socket: whatever was registered
        // before, or is being registered, is gone.
        running.cancel_registration();
        running.server_generation += 1;
        running.registered_with = None;
        running.retry_at = None;
        running.retry_wait = RETRY_MIN;
        match bind(&socket) {
            Ok(listener) => {
                let id = FileId::of_socket(&socket);
                let (stop, stopped) = watch::channel(false);
                let plugin = PortgroupPlugin::new(
                    name.to_string(),
                    self.settings.devices,
                    running.offer.subscribe(),
                    stopped.clone(),
                );
                let shown = socket.display().to_string();
                let portgroup = name.to_string();
                let task = tokio::spawn(async move {
                    let mut stopped = stopped;
                    let result = tonic::transport::Server::builder()
                        .add_service(DevicePluginServer::new(plugin))
                        .serve_with_incoming_shutdown(
                            UnixListenerStream::new(listener),
                            async move {
                                let _ = stopped.wait_for(|s| *s).await;
                            },
                        )
                        .await;
                    if let Err(e) = result {
                        tracing::error!(portgroup = %portgroup, "device plugin: server on {shown} failed: {e}");
                    }
                });
                running.server = Some(Server {
                    socket,
                    id,
                    stop,
                    task,
                });
            }
            Err(e) => {
                tracing::error!(portgroup = %name, "device plugin: cannot serve on {}: {e}", socket.display());
                self.metrics.count_error();
                // Tried again on the next event or after the backoff.
                running.retry_at = Some(Instant::now() + RETRY_MAX);
            }
        }
    }

    /// Starts the resource's Register call on a task of its own; its outcome
    /// comes back through `registered_tx`. The manager goes on meanwhile: other
    /// resources register, and health flips reach the streams.
    fn register(&mut self, name: &str, kubelet: Option<FileId>) {
        let Some(tx) = self.registered_tx.clone() else {
            return;
        };
        let kubelet_socket = self.settings.dir.join(KUBELET_SOCKET);
        let Some(running) = self.running.get_mut(name) else {
            return;
        };
        if running.server.is_none() {
            return;
        }
        running.cancel_registration();
        let request = RegisterRequest {
            version: API_VERSION.to_string(),
            endpoint: socket_name(name),
            resource_name: resource_name(name),
            options: Some(options()),
        };
        let portgroup = name.to_string();
        let server_generation = running.server_generation;
        let task = tokio::spawn(async move {
            let result =
                match tokio::time::timeout(REGISTER_TIMEOUT, register(&kubelet_socket, request))
                    .await
                {
                    Ok(result) => result,
                    Err(_) => Err(format!("no answer within {} s", REGISTER_TIMEOUT.as_secs())),
                };
            let _ = tx.send(Registered {
                portgroup,
                server_generation,
                kubelet,
                result,
            });
        });
        running.registering = Some(Registering { kubelet, task });
    }

    /// A Register task's outcome, for the server and kubelet it was made for;
    /// an outcome for a server or kubelet since replaced is dropped.
    fn registered(&mut self, outcome: Registered) {
        let name = outcome.portgroup.as_str();
        let Some(running) = self.running.get_mut(name) else {
            return;
        };
        if running.server_generation != outcome.server_generation
            || running.registering.as_ref().map(|r| r.kubelet) != Some(outcome.kubelet)
        {
            return;
        }
        running.registering = None;
        match outcome.result {
            Ok(()) => {
                tracing::info!(
                    portgroup = %name,
                    resource = %resource_name(name),
                    offer = ?*running.offer.borrow(),
                    "device plugin: registered with the kubelet"
                );
                running.registered_with = outcome.kubelet;
                running.retry_at = None;
                running.retry_wait = RETRY_MIN;
                self.metrics.count_registration();
            }
            Err(e) => self.failed(name, &e),
        }
        self.publish_registered();
    }

    fn failed(&mut self, name: &str, why: &str) {
        self.metrics.count_error();
        if let Some(running) = self.running.get_mut(name) {
            let wait = running.retry_wait;
            tracing::warn!(
                portgroup = %name,
                "device plugin: registering {} with the kubelet failed: {why}; retrying in {} s",
                resource_name(name),
                wait.as_secs()
            );
            running.retry_at = Some(Instant::now() + wait);
            running.retry_wait = (wait * 2).min(RETRY_MAX);
        }
    }
}

/// Binds the resource's socket, replacing a stale file of ours (a daemon that
/// was killed leaves its sockets behind).
fn bind(socket: &Path) -> std::io::Result<UnixListener> {
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // Connections queue in the backlog from here on, so the kubelet's call-back
    // during Register is answered as soon as the server task runs.
    UnixListener::bind(socket)
}

/// One Register call on the kubelet socket.
async fn register(kubelet_socket: &Path, request: RegisterRequest) -> Result<(), String> {
    let path = kubelet_socket.to_path_buf();
    // The URI is never used: the connector opens the unix socket.
    let channel = tonic::transport::Endpoint::from_static("http://[::1]:50051")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .map_err(|e| format!("connecting to {}: {e}", kubelet_socket.display()))?;
    RegistrationClient::new(channel)
        .register(request)
        .await
        .map(|_| ())
        .map_err(|status| format!("{}: {}", status.code(), status.message()))
}

/// Sends a unit once the watch is in place and then on every change in the
/// directory. The directory is the kubelet's: it is never made here (a host
/// without a kubelet stays untouched); while it is missing, or after it went,
/// it is looked for again every 2 s.
async fn watch_dir(dir: &Path, tx: mpsc::UnboundedSender<()>) {
    let mut warned = false;
    loop {
        match watch_once(dir, &tx).await {
            Ok(()) => tracing::info!(
                "device plugin: {} changed identity; watching it again",
                dir.display()
            ),
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(
                    "device plugin: cannot watch {}: {e}; no kubelet here yet? looking again every 2 s",
                    dir.display()
                );
            }
            Err(e) => tracing::debug!("device plugin: watching {}: {e}", dir.display()),
        }
        if tx.send(()).is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn watch_once(dir: &Path, tx: &mpsc::UnboundedSender<()>) -> std::io::Result<()> {
    let inotify = Inotify::init()?;
    inotify.watches().add(
        dir,
        WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::MOVED_TO
            | WatchMask::MOVED_FROM
            | WatchMask::ATTRIB
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF,
    )?;
    let mut events = inotify.into_event_stream([0u8; 4096])?;
    // The watch is in place: now look.
    if tx.send(()).is_err() {
        return Ok(());
    }
    while let Some(event) = events.next().await {
        let event = event?;
        if tx.send(()).is_err() {
            return Ok(());
        }
        if event
            .mask
            .intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF | EventMask::IGNORED)
        {
            return Ok(());
        }
    }
    Ok(())
}
