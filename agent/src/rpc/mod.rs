//! The agent's unix-socket gRPC services: the VPC CNI's network-policy
//! backend and our own for `na-cni`, served together on one socket.
pub mod server;

/// The VPC CNI's network-policy backend (`rpc.NPBackend`).
pub mod npbackend {
    tonic::include_proto!("rpc");
}

/// What `na-cni` asks (`na.sandboxes.v1.Sandboxes`).
pub mod sandboxes {
    tonic::include_proto!("na.sandboxes.v1");
}

/// Where the VPC CNI plugin calls its network-policy agent.
pub const DEFAULT_SOCKET: &str = "/var/run/aws-node/npa.sock";

/// A client channel to the agent's socket at `path`.
pub async fn connect(path: std::path::PathBuf) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    // The URI is required and unused: every connection goes to the socket.
    tonic::transport::Endpoint::from_static("http://agent")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
}
