//! The DevicePlugin service of one resource, as the kubelet calls it on the
//! resource's socket.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::v1beta1::device_plugin_server::DevicePlugin;
use super::v1beta1::{
    AllocateRequest, AllocateResponse, ContainerAllocateResponse,
    ContainerPreferredAllocationResponse, DevicePluginOptions, Empty, ListAndWatchResponse,
    PreStartContainerRequest, PreStartContainerResponse, PreferredAllocationRequest,
    PreferredAllocationResponse,
};
use super::{device_id, device_list, Offer};

pub struct PortgroupPlugin {
    pub portgroup: String,
    pub devices: u32,
    /// The resource's offer; every ListAndWatch stream follows it.
    pub offer: watch::Receiver<Offer>,
    /// Turns true when this server instance stops: its streams end.
    pub stopped: watch::Receiver<bool>,
    ids: Arc<HashSet<String>>,
}

impl PortgroupPlugin {
    pub fn new(
        portgroup: String,
        devices: u32,
        offer: watch::Receiver<Offer>,
        stopped: watch::Receiver<bool>,
    ) -> Self {
        let ids = (0..devices).map(|i| device_id(&portgroup, i)).collect();
        PortgroupPlugin {
            portgroup,
            devices,
            offer,
            stopped,
            ids: Arc::new(ids),
        }
    }
}

/// Neither call is needed: nothing is prepared per container, and every device
/// is as good as any other.
pub fn options() -> DevicePluginOptions {
    DevicePluginOptions {
        pre_start_required: false,
        get_preferred_allocation_available: false,
    }
}

/// The devices in `ids` that this resource never advertised.
pub fn unknown_devices<'a>(known: &HashSet<String>, ids: &'a [String]) -> Vec<&'a str> {
    ids.iter()
        .filter(|id| !known.contains(*id))
        .map(String::as_str)
        .collect()
}

type ListStream = Pin<Box<dyn Stream<Item = Result<ListAndWatchResponse, Status>> + Send>>;

struct Watch {
    portgroup: String,
    devices: u32,
    offer: watch::Receiver<Offer>,
    stopped: watch::Receiver<bool>,
    first: bool,
    done: bool,
}

#[tonic::async_trait]
impl DevicePlugin for PortgroupPlugin {
    async fn get_device_plugin_options(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<DevicePluginOptions>, Status> {
        Ok(Response::new(options()))
    }

    type ListAndWatchStream = ListStream;

    /// The full list at once, then again on every change of the offer, until the
    /// resource is withdrawn (an empty list, then the end) or this server stops.
    async fn list_and_watch(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let start = Watch {
            portgroup: self.portgroup.clone(),
            devices: self.devices,
            offer: self.offer.clone(),
            stopped: self.stopped.clone(),
            first: true,
            done: false,
        };
        tracing::debug!(portgroup = %self.portgroup, "kubelet opened ListAndWatch");
        let stream = futures::stream::unfold(start, |mut w| async move {
            if w.done {
                return None;
            }
            if !w.first {
                tokio::select! {
                    changed = w.offer.changed() => {
                        if changed.is_err() {
                            return None;
                        }
                    }
                    _ = w.stopped.wait_for(|stopped| *stopped) => return None,
                }
            }
            w.first = false;
            let offer = *w.offer.borrow_and_update();
            w.done = offer == Offer::Withdrawn;
            tracing::debug!(portgroup = %w.portgroup, ?offer, "sending the device list");
            Some((Ok(device_list(&w.portgroup, w.devices, offer)), w))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    /// Never called (see [`options`]); answers anyway: the devices asked for
    /// first, then the others offered, up to the size asked.
    async fn get_preferred_allocation(
        &self,
        request: Request<PreferredAllocationRequest>,
    ) -> Result<Response<PreferredAllocationResponse>, Status> {
        let container_responses = request
            .into_inner()
            .container_requests
            .into_iter()
            .map(|c| {
                let size = usize::try_from(c.allocation_size).unwrap_or(0);
                let mut ids = c.must_include_device_i_ds;
                for id in c.available_device_i_ds {
                    if ids.len() >= size {
                        break;
                    }
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
                ContainerPreferredAllocationResponse { device_i_ds: ids }
            })
            .collect();
        Ok(Response::new(PreferredAllocationResponse {
            container_responses,
        }))
    }

    /// An empty answer per container: the device is a scheduling token only. The
    /// network itself comes from the CNI plugin through Multus, which reads the
    /// portgroup from the NetworkAttachmentDefinition, so nothing has to be
    /// passed to the pod. Devices never advertised are refused by name.
    async fn allocate(
        &self,
        request: Request<AllocateRequest>,
    ) -> Result<Response<AllocateResponse>, Status> {
        let request = request.into_inner();
        let mut container_responses = Vec::with_capacity(request.container_requests.len());
        for container in &request.container_requests {
            let unknown = unknown_devices(&self.ids, &container.devices_ids);
            if !unknown.is_empty() {
                tracing::warn!(portgroup = %self.portgroup, ?unknown, "Allocate of devices never advertised");
                return Err(Status::invalid_argument(format!(
                    "resource {}: no such device(s): {}",
                    super::resource_name(&self.portgroup),
                    unknown.join(", ")
                )));
            }
            container_responses.push(ContainerAllocateResponse::default());
        }
        tracing::debug!(portgroup = %self.portgroup, containers = container_responses.len(), "Allocate");
        Ok(Response::new(AllocateResponse {
            container_responses,
        }))
    }

    async fn pre_start_container(
        &self,
        _: Request<PreStartContainerRequest>,
    ) -> Result<Response<PreStartContainerResponse>, Status> {
        Ok(Response::new(PreStartContainerResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::super::v1beta1::ContainerAllocateRequest;
    use super::super::v1beta1::ContainerPreferredAllocationRequest;
    use super::*;
    use futures::StreamExt;

    fn plugin(devices: u32) -> (PortgroupPlugin, watch::Sender<Offer>, watch::Sender<bool>) {
        let (offer_tx, offer) = watch::channel(Offer::Unhealthy);
        let (stop_tx, stopped) = watch::channel(false);
        (
            PortgroupPlugin::new("web".into(), devices, offer, stopped),
            offer_tx,
            stop_tx,
        )
    }

    fn rt() -> tokio::runtime::Runtime {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => panic!("runtime: {e}"),
        }
    }

    #[test]
    fn list_and_watch_follows_the_offer_until_withdrawn() {
        rt().block_on(async {
            let (p, offer, _stop) = plugin(4);
            let mut stream = p
                .list_and_watch(Request::new(Empty {}))
                .await
                .expect("stream")
                .into_inner();
            let first = stream.next().await.expect("first").expect("ok");
            assert_eq!(first.devices.len(), 4);
            assert!(first.devices.iter().all(|d| d.health == "Unhealthy"));
            offer.send_replace(Offer::Healthy);
            let second = stream.next().await.expect("second").expect("ok");
            assert!(second.devices.iter().all(|d| d.health == "Healthy"));
            offer.send_replace(Offer::Withdrawn);
            let last = stream.next().await.expect("last").expect("ok");
            assert!(last.devices.is_empty());
            assert!(stream.next().await.is_none(), "ends after withdrawal");
        });
    }

    #[test]
    fn list_and_watch_ends_when_the_server_stops() {
        rt().block_on(async {
            let (p, _offer, stop) = plugin(2);
            let mut stream = p
                .list_and_watch(Request::new(Empty {}))
                .await
                .expect("stream")
                .into_inner();
            assert!(stream.next().await.is_some());
            stop.send_replace(true);
            assert!(stream.next().await.is_none());
        });
    }

    #[test]
    fn allocate_answers_advertised_devices_and_refuses_others() {
        rt().block_on(async {
            let (p, _offer, _stop) = plugin(1000);
            let ok = p
                .allocate(Request::new(AllocateRequest {
                    container_requests: vec![
                        ContainerAllocateRequest {
                            devices_ids: vec!["web-0".into(), "web-999".into()],
                        },
                        ContainerAllocateRequest {
                            devices_ids: vec!["web-5".into()],
                        },
                    ],
                }))
                .await
                .expect("allocate")
                .into_inner();
            assert_eq!(ok.container_responses.len(), 2);
            assert_eq!(
                ok.container_responses[0],
                ContainerAllocateResponse::default()
            );
            let err = p
                .allocate(Request::new(AllocateRequest {
                    container_requests: vec![ContainerAllocateRequest {
                        devices_ids: vec!["web-1000".into(), "db-1".into()],
                    }],
                }))
                .await
                .expect_err("unknown devices");
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.message().contains("web-1000, db-1"), "{err}");
        });
    }

    #[test]
    fn preferred_allocation_keeps_required_devices_first() {
        rt().block_on(async {
            let (p, _offer, _stop) = plugin(10);
            let r = p
                .get_preferred_allocation(Request::new(PreferredAllocationRequest {
                    container_requests: vec![ContainerPreferredAllocationRequest {
                        available_device_i_ds: vec!["web-1".into(), "web-2".into(), "web-3".into()],
                        must_include_device_i_ds: vec!["web-2".into()],
                        allocation_size: 2,
                    }],
                }))
                .await
                .expect("answer")
                .into_inner();
            assert_eq!(r.container_responses[0].device_i_ds, ["web-2", "web-1"]);
        });
    }
}
