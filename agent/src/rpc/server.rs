//! Serves both CNI front ends on one unix socket and turns each call into a
//! [`Request`] for the agent's loop. A call returns only once the loop has
//! answered: a CNI ADD, and with it the pod's start, waits for enforcement.
use std::{
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::Path,
    time::Duration,
};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};
use na_policy::ObjectRef;
use tokio::{
    net::UnixListener,
    sync::{mpsc::UnboundedSender, oneshot},
    time::Instant,
};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Response, Status};
use tracing::{info, warn};

use super::{
    npbackend::{self, np_backend_server::NpBackendServer},
    sandboxes::{self, sandboxes_server::SandboxesServer},
};
use crate::sandbox::{AddOutcome, Request, Sandbox};

/// (API group, resource, verb) of what a CNI ADD reads from the API server
/// besides the watches; the ClusterRole grants exactly these too.
pub const FETCHES: [(&str, &str, &str); 1] = [("", "pods", "get")];

/// Binds the socket: its directory made if missing, a socket left by an
/// earlier agent replaced, readable and writable by root alone (CNI plugins
/// run as root; anyone else could detach pods). A socket something still
/// answers on (the AWS agent left running beside this one) is an error:
/// two agents would attach programs to the same veths.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() && std::os::unix::net::UnixStream::connect(path).is_ok() => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("another process answers on {}: is another network policy agent running?", path.display()),
            ));
        }
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Answers calls on `listener` until the loop stops taking requests.
/// `client` is the API server (kube mode), asked for pods the loop does not
/// know; `settle` bounds how long an ADD waits for one before the pod gets
/// is judged as a pod without labels until its object arrives; `mode` is the agent's enforcing mode (`standard` or
/// `strict`), which a VPC CNI configured otherwise is warned about.
pub async fn serve(
    listener: UnixListener,
    requests: UnboundedSender<Request>,
    client: Option<Client>,
    settle: Duration,
    mode: &'static str,
) -> Result<(), tonic::transport::Error> {
    let front = Front { requests, client, settle, mode, mode_warned: Default::default() };
    tonic::transport::Server::builder()
        .add_service(NpBackendServer::new(front.clone()))
        .add_service(SandboxesServer::new(front))
        .serve_with_incoming(UnixListenerStream::new(listener))
        .await
}

#[derive(Clone)]
struct Front {
    requests: UnboundedSender<Request>,
    client: Option<Client>,
    settle: Duration,
    mode: &'static str,
    /// Whether a VPC CNI with another mode was reported already (once is enough).
    mode_warned: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Front {
    async fn ask<T>(&self, request: impl FnOnce(oneshot::Sender<T>) -> Request) -> Result<T, Status> {
        let (reply, answer) = oneshot::channel();
        self.requests.send(request(reply)).map_err(|_| Status::unavailable("the agent is shutting down"))?;
        answer.await.map_err(|_| Status::unavailable("the agent is shutting down"))
    }

    /// Asks the loop to enforce; a pod it does not know is fetched from the
    /// API server, and failing that within `settle`, assumed.
    async fn add(&self, pod: ObjectRef, sandbox: Sandbox) -> Result<(u32, bool), Status> {
        let deadline = Instant::now() + self.settle;
        let add = |fetched: Option<Box<Pod>>, assume: bool| {
            let (pod, sandbox) = (pod.clone(), sandbox.clone());
            move |reply| Request::Add { pod, sandbox, fetched, assume, received: std::time::Instant::now(), reply }
        };
        let mut outcome = self.ask(add(None, false)).await?;
        if outcome == AddOutcome::Unknown {
            let fetched = self.fetch(&pod, deadline).await.map(Box::new);
            if fetched.is_none() {
                info!(%pod, "CNI ADD for a pod not known yet: judged as a pod without labels until it is");
            }
            outcome = self.ask(add(fetched, true)).await?;
        }
        match outcome {
            AddOutcome::Enforced { ifindex, assumed } => Ok((ifindex, assumed)),
            AddOutcome::Failed(why) => Err(Status::failed_precondition(why)),
            AddOutcome::Unknown => Err(Status::internal(format!("pod {pod} still unknown after assuming it"))),
        }
    }

    async fn fetch(&self, pod: &ObjectRef, deadline: Instant) -> Option<Pod> {
        let api = Api::<Pod>::namespaced(self.client.clone()?, &pod.namespace);
        match tokio::time::timeout_at(deadline, api.get_opt(&pod.name)).await {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                warn!(%pod, "fetching the pod for its CNI ADD: {e}");
                None
            }
            Err(_) => {
                warn!(%pod, "fetching the pod for its CNI ADD took longer than the settle time");
                None
            }
        }
    }
}

fn pod_ref(namespace: String, name: String) -> Result<ObjectRef, Status> {
    if namespace.is_empty() || name.is_empty() {
        return Err(Status::invalid_argument("the pod's namespace and name are both needed"));
    }
    Ok(ObjectRef::new(namespace, name))
}

#[tonic::async_trait]
impl npbackend::np_backend_server::NpBackend for Front {
    async fn enforce_np_to_pod(
        &self,
        request: tonic::Request<npbackend::EnforceNpRequest>,
    ) -> Result<Response<npbackend::EnforceNpReply>, Status> {
        let r = request.into_inner();
        let pod = pod_ref(r.k8s_pod_namespace, r.k8s_pod_name)?;
        // Its mode is ours to configure (`--enforcing-mode`): a different one
        // on the VPC CNI is a misconfiguration worth saying, not following.
        let theirs = r.network_policy_mode.to_ascii_lowercase();
        if !theirs.is_empty()
            && theirs != self.mode
            && !self.mode_warned.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            warn!(vpc_cni = %theirs, agent = self.mode, "the VPC CNI's NETWORK_POLICY_ENFORCING_MODE is not the agent's; the agent's holds");
        }
        // The VPC CNI names the host veth by its rule, which the loop knows.
        self.add(pod, Sandbox::default()).await?;
        Ok(Response::new(npbackend::EnforceNpReply { success: true }))
    }

    async fn delete_pod_np(
        &self,
        request: tonic::Request<npbackend::DeleteNpRequest>,
    ) -> Result<Response<npbackend::DeleteNpReply>, Status> {
        let r = request.into_inner();
        let pod = pod_ref(r.k8s_pod_namespace, r.k8s_pod_name)?;
        self.ask(|reply| Request::Del { pod, container_id: String::new(), reply }).await?;
        Ok(Response::new(npbackend::DeleteNpReply { success: true }))
    }
}

/// An optional proto3 string: empty is absent.
fn given(s: String) -> Option<String> {
    Some(s).filter(|s| !s.is_empty())
}

fn sandbox_pod(pod: Option<sandboxes::Pod>) -> Result<ObjectRef, Status> {
    let pod = pod.ok_or_else(|| Status::invalid_argument("no pod"))?;
    pod_ref(pod.namespace, pod.name)
}

#[tonic::async_trait]
impl sandboxes::sandboxes_server::Sandboxes for Front {
    async fn add(
        &self,
        request: tonic::Request<sandboxes::AddRequest>,
    ) -> Result<Response<sandboxes::AddReply>, Status> {
        let r = request.into_inner();
        let pod = sandbox_pod(r.pod)?;
        let ips = r
            .ips
            .iter()
            .map(|ip| ip.parse().map_err(|_| Status::invalid_argument(format!("{ip:?} is not an IP address"))))
            .collect::<Result<_, _>>()?;
        let host_interface = given(r.host_interface);
        let sandbox = Sandbox { container_id: r.container_id, host_interface, ips };
        let (ifindex, assumed) = Front::add(self, pod, sandbox).await?;
        Ok(Response::new(sandboxes::AddReply { ifindex, assumed }))
    }

    async fn check(
        &self,
        request: tonic::Request<sandboxes::CheckRequest>,
    ) -> Result<Response<sandboxes::CheckReply>, Status> {
        let r = request.into_inner();
        let pod = sandbox_pod(r.pod)?;
        let host_interface = given(r.host_interface);
        self.ask(|reply| Request::Check { pod, host_interface, reply }).await?.map_err(Status::failed_precondition)?;
        Ok(Response::new(sandboxes::CheckReply {}))
    }

    async fn del(
        &self,
        request: tonic::Request<sandboxes::DelRequest>,
    ) -> Result<Response<sandboxes::DelReply>, Status> {
        let r = request.into_inner();
        let pod = sandbox_pod(r.pod)?;
        self.ask(|reply| Request::Del { pod, container_id: r.container_id, reply }).await?;
        Ok(Response::new(sandboxes::DelReply {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_socket_is_taken_over_only_from_nobody() {
        let dir = std::env::temp_dir().join(format!("na-rpc-bind-{}", std::process::id()));
        let path = dir.join("sub/npa.sock");
        let first = bind(&path).expect("made with its directory");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "root's alone");
        let taken = bind(&path).expect_err("someone answers there");
        assert_eq!(taken.kind(), std::io::ErrorKind::AddrInUse);
        drop(first);
        let _second = bind(&path).expect("a socket nobody answers on is left over: replaced");
        let file = dir.join("file");
        std::fs::write(&file, "").unwrap();
        assert_eq!(bind(&file).expect_err("not a socket").kind(), std::io::ErrorKind::AlreadyExists);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
