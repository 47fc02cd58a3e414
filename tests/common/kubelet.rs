//! A fake kubelet that speaks the real device-plugin protocol (v1beta1 over unix
//! sockets in a directory of the test's own): it serves Registration on
//! DIR/kubelet.sock and, like the kubelet, dials every plugin that registers,
//! calls GetDevicePluginOptions before answering, then reads its ListAndWatch
//! stream and records every device list. Allocate is called on request.
//!
//! Included with `#[path = "common/kubelet.rs"] mod kubelet;` by the tests that
//! need it. The gRPC runs on a thread of its own; the test thread waits on a
//! condition variable.
#![allow(dead_code)] // each test binary uses a different part

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hyper_util::rt::TokioIo;
use portgroup::daemon::deviceplugin::v1beta1::device_plugin_client::DevicePluginClient;
use portgroup::daemon::deviceplugin::v1beta1::registration_server::{
    Registration, RegistrationServer,
};
use portgroup::daemon::deviceplugin::v1beta1::{
    AllocateRequest, ContainerAllocateRequest, DevicePluginOptions, Empty, RegisterRequest,
};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// One Register call the kubelet accepted.
#[derive(Debug, Clone)]
pub struct Registered {
    pub resource: String,
    pub endpoint: String,
    pub version: String,
    pub options: Option<DevicePluginOptions>,
    /// What GetDevicePluginOptions answered on the plugin's socket.
    pub dialed_options: DevicePluginOptions,
    pub at: Instant,
    /// Which start of the kubelet took it (1 for the first, +1 per restart).
    pub instance: u64,
}

/// One ListAndWatch message.
#[derive(Debug, Clone)]
pub struct DeviceList {
    pub at: Instant,
    /// (ID, health) in the order sent.
    pub devices: Vec<(String, String)>,
}

impl DeviceList {
    pub fn all(&self, health: &str) -> bool {
        !self.devices.is_empty() && self.devices.iter().all(|(_, h)| h == health)
    }
}

#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub registrations: Vec<Registered>,
    /// Every device list received, by resource, oldest first.
    pub lists: HashMap<String, Vec<DeviceList>>,
    /// ListAndWatch streams the plugin ended, by resource.
    pub ended: HashMap<String, usize>,
    /// Register calls refused (bad version, endpoint or resource name; plugin unreachable).
    pub refused: Vec<String>,
    /// Every Register call received, by resource, when it arrived.
    pub register_calls: Vec<(String, Instant)>,
    /// Register calls the plugin gave up on (closed the call) before this
    /// kubelet answered, by resource, when.
    pub abandoned: Vec<(String, Instant)>,
}

impl Seen {
    pub fn registrations_of(&self, resource: &str) -> usize {
        self.registrations
            .iter()
            .filter(|r| r.resource == resource)
            .count()
    }

    pub fn latest(&self, resource: &str) -> Option<&DeviceList> {
        self.lists.get(resource).and_then(|l| l.last())
    }
}

struct Shared {
    seen: Mutex<Seen>,
    changed: Condvar,
    /// The plugin connection of each registered resource (the newest wins, as
    /// in the kubelet).
    clients: Mutex<HashMap<String, DevicePluginClient<Channel>>>,
    /// Resources whose Register calls hang (no answer) until released.
    hung: tokio::sync::watch::Sender<std::collections::HashSet<String>>,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut Seen)) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut seen);
        self.changed.notify_all();
    }
}

pub struct FakeKubelet {
    pub dir: PathBuf,
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
    _thread: std::thread::JoinHandle<()>,
    stop_runtime: Option<std::sync::mpsc::Sender<()>>,
    stop_server: Option<oneshot::Sender<()>>,
    /// Starts so far (see [`Registered::instance`]).
    pub instance: u64,
}

impl FakeKubelet {
    /// A kubelet serving on DIR/kubelet.sock (DIR is made if missing).
    pub fn start(dir: &Path) -> FakeKubelet {
        std::fs::create_dir_all(dir).expect("device-plugin dir");
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            handle_tx.send(rt.handle().clone()).expect("handle");
            rt.block_on(async move {
                // Runs the spawned tasks until the kubelet is dropped.
                let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
            });
        });
        let runtime = handle_rx.recv().expect("runtime handle");
        let mut kubelet = FakeKubelet {
            dir: dir.to_path_buf(),
            shared: Arc::new(Shared {
                seen: Mutex::new(Seen::default()),
                changed: Condvar::new(),
                clients: Mutex::new(HashMap::new()),
                hung: tokio::sync::watch::channel(Default::default()).0,
            }),
            runtime,
            _thread: thread,
            stop_runtime: Some(stop_tx),
            stop_server: None,
            instance: 0,
        };
        kubelet.serve();
        kubelet
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("kubelet.sock")
    }

    fn serve(&mut self) {
        let socket = self.socket();
        let _ = std::fs::remove_file(&socket);
        let (tx, rx) = oneshot::channel();
        self.instance += 1;
        let service = RegistrationServer::new(Kubelet {
            instance: self.instance,
            dir: self.dir.clone(),
            shared: self.shared.clone(),
            runtime: self.runtime.clone(),
        });
        let _guard = self.runtime.enter();
        let listener = UnixListener::bind(&socket).expect("bind kubelet.sock");
        self.runtime.spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                    let _ = rx.await;
                })
                .await;
        });
        self.stop_server = Some(tx);
    }

    /// The kubelet goes down: stops serving, its socket goes; plugin
    /// connections are dropped.
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop_server.take() {
            let _ = tx.send(());
        }
        let _ = std::fs::remove_file(self.socket());
        self.shared
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// A kubelet restart as the device manager does it: down, every file in the
    /// directory removed (plugin sockets included), then kubelet.sock made anew.
    pub fn restart(&mut self) {
        self.stop();
        for entry in std::fs::read_dir(&self.dir).expect("read dir").flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        self.serve();
    }

    /// Starts serving again after [`stop`], without touching plugin sockets.
    pub fn start_again(&mut self) {
        self.serve();
    }

    /// A kubelet hung on this resource: its Register calls get no answer
    /// until [`release_register`](Self::release_register).
    pub fn hang_register(&self, resource: &str) {
        self.shared.hung.send_modify(|h| {
            h.insert(resource.to_string());
        });
    }

    /// Answers the resource's Register calls again, the hanging ones included.
    pub fn release_register(&self, resource: &str) {
        self.shared.hung.send_modify(|h| {
            h.remove(resource);
        });
    }

    /// How many device lists the resource has sent.
    pub fn list_count(&self, resource: &str) -> usize {
        self.shared
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .lists
            .get(resource)
            .map_or(0, Vec::len)
    }

    pub fn seen(&self) -> Seen {
        self.shared
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until `ok` holds of what the kubelet has seen; panics after `timeout`.
    pub fn wait(&self, timeout: Duration, what: &str, ok: impl Fn(&Seen) -> bool) -> Seen {
        self.wait_then(timeout, what, ok, Seen::clone)
    }

    /// [`wait`](Self::wait), then `take` what is needed of the whole record
    /// (which can be large: every list of 1000 devices).
    pub fn wait_then<T>(
        &self,
        timeout: Duration,
        what: &str,
        ok: impl Fn(&Seen) -> bool,
        take: impl FnOnce(&Seen) -> T,
    ) -> T {
        let deadline = Instant::now() + timeout;
        let mut seen = self.shared.seen.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if ok(&seen) {
                return take(&seen);
            }
            let now = Instant::now();
            if now >= deadline {
                let summary: Vec<String> = seen
                    .lists
                    .iter()
                    .map(|(r, l)| {
                        let last = l.last().map(|d| {
                            let healthy = d.devices.iter().filter(|(_, h)| h == "Healthy").count();
                            format!("{} devices, {healthy} healthy", d.devices.len())
                        });
                        format!("{r}: {} lists, last {last:?}", l.len())
                    })
                    .collect();
                panic!(
                    "timed out waiting for {what}; registrations: {:?}; lists: {summary:?}; ended: {:?}; refused: {:?}",
                    seen.registrations
                        .iter()
                        .map(|r| &r.resource)
                        .collect::<Vec<_>>(),
                    seen.ended,
                    seen.refused
                );
            }
            seen = self
                .shared
                .changed
                .wait_timeout(seen, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Allocate on the resource's plugin, one container asking for `ids`:
    /// the number of container responses, or the error status.
    pub fn allocate(&self, resource: &str, ids: &[&str]) -> Result<usize, Status> {
        let client = self
            .shared
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(resource)
            .cloned()
            .unwrap_or_else(|| panic!("{resource} is not registered"));
        let request = AllocateRequest {
            container_requests: vec![ContainerAllocateRequest {
                devices_ids: ids.iter().map(|s| s.to_string()).collect(),
            }],
        };
        let (tx, rx) = std::sync::mpsc::channel();
        self.runtime.spawn(async move {
            let mut client = client;
            let result = client
                .allocate(request)
                .await
                .map(|r| r.into_inner().container_responses.len());
            let _ = tx.send(result);
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("Allocate answered")
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.stop();
        if let Some(tx) = self.stop_runtime.take() {
            let _ = tx.send(());
        }
    }
}

/// Dials a plugin socket the way the kubelet does (gRPC over a unix socket).
pub async fn dial(socket: PathBuf) -> Result<DevicePluginClient<Channel>, String> {
    let shown = socket.display().to_string();
    let channel = tonic::transport::Endpoint::from_static("http://[::1]:50051")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
        .map_err(|e| format!("dialing {shown}: {e}"))?;
    Ok(DevicePluginClient::new(channel))
}

struct Kubelet {
    instance: u64,
    dir: PathBuf,
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
}

impl Kubelet {
    fn refuse(&self, why: String) -> Status {
        self.shared.update(|s| s.refused.push(why.clone()));
        Status::invalid_argument(why)
    }
}

#[tonic::async_trait]
impl Registration for Kubelet {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<Empty>, Status> {
        let r = request.into_inner();
        let resource = r.resource_name.clone();
        self.shared
            .update(|s| s.register_calls.push((resource.clone(), Instant::now())));
        // A hung kubelet: no answer while the resource is hung. The guard sees
        // the plugin give up (the call's future is dropped when it does).
        let mut guard = Abandoned {
            shared: self.shared.clone(),
            resource: Some(resource.clone()),
        };
        let mut hung = self.shared.hung.subscribe();
        let _ = hung.wait_for(|h| !h.contains(&resource)).await;
        guard.resource = None;
        // The checks the kubelet's device manager makes.
        if r.version != "v1beta1" {
            return Err(self.refuse(format!("unsupported version {:?}", r.version)));
        }
        if !r.resource_name.contains('/') || r.resource_name.starts_with("kubernetes.io/") {
            return Err(self.refuse(format!("invalid resource name {:?}", r.resource_name)));
        }
        if r.endpoint.is_empty() || r.endpoint.contains('/') {
            return Err(self.refuse(format!("endpoint {:?} is not a file name", r.endpoint)));
        }
        // Dial back and ask for the options before answering, as the kubelet does.
        let mut client = dial(self.dir.join(&r.endpoint))
            .await
            .map_err(|e| self.refuse(e))?;
        let dialed_options = client
            .get_device_plugin_options(Empty {})
            .await
            .map_err(|e| self.refuse(format!("GetDevicePluginOptions: {e}")))?
            .into_inner();
        let resource = r.resource_name.clone();
        self.shared
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(resource.clone(), client.clone());
        self.shared.update(|s| {
            s.registrations.push(Registered {
                resource: resource.clone(),
                endpoint: r.endpoint.clone(),
                version: r.version.clone(),
                options: r.options,
                dialed_options,
                at: Instant::now(),
                instance: self.instance,
            })
        });
        let shared = self.shared.clone();
        self.runtime.spawn(async move {
            let stream = client.list_and_watch(Empty {}).await;
            let Ok(stream) = stream else {
                shared.update(|s| *s.ended.entry(resource.clone()).or_default() += 1);
                return;
            };
            let mut stream = stream.into_inner();
            while let Some(Ok(list)) = stream.next().await {
                let at = Instant::now();
                let devices = list.devices.into_iter().map(|d| (d.id, d.health)).collect();
                shared.update(|s| {
                    s.lists
                        .entry(resource.clone())
                        .or_default()
                        .push(DeviceList { at, devices })
                });
            }
            shared.update(|s| *s.ended.entry(resource.clone()).or_default() += 1);
        });
        Ok(Response::new(Empty {}))
    }
}

/// Records a Register call the plugin abandoned before it was answered.
struct Abandoned {
    shared: Arc<Shared>,
    resource: Option<String>,
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        if let Some(resource) = self.resource.take() {
            self.shared
                .update(|s| s.abandoned.push((resource, Instant::now())));
        }
    }
}
