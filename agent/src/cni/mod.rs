//! `na-cni`: a chained CNI plugin that holds a pod's start until the agent
//! has enforced its policy. It runs after the plugin that makes the pod's
//! veth (ptp, bridge, ...), tells the agent the pod's host interface and
//! addresses from that plugin's result, and passes the result on unchanged.
pub mod spec;

use std::{path::PathBuf, time::Duration};

use serde_json::Value;
use spec::{Code, Command, Error, Invocation, NetConf, Setup};

use crate::rpc::sandboxes::{self, sandboxes_client::SandboxesClient};

/// How long ADD waits for the agent by default: attaching takes
/// milliseconds, but a pod the agent does not know waits for the API server
/// (`--cni-settle-timeout`).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs one invocation: `var` reads the runtime's environment, `stdin` is
/// the network configuration. Returns what goes to stdout, and whether the
/// plugin succeeded.
pub async fn run(var: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> (String, bool) {
    let invocation = match Invocation::from_env(var) {
        Ok(i) => i,
        Err(e) => return (e.to_json(None), false),
    };
    if invocation.command == Command::Version {
        let v = serde_json::json!({"cniVersion": spec::VERSION, "supportedVersions": spec::SUPPORTED_VERSIONS});
        return (v.to_string(), true);
    }
    let conf = match NetConf::parse(stdin) {
        Ok(c) => c,
        Err(e) => return (e.to_json(None), false),
    };
    match handle(&invocation, &conf).await {
        Ok(out) => (out, true),
        Err(e) => (e.to_json(Some(&conf.cni_version)), false),
    }
}

async fn handle(invocation: &Invocation, conf: &NetConf) -> Result<String, Error> {
    let agent = Agent {
        socket: conf.socket.clone().unwrap_or_else(|| crate::rpc::DEFAULT_SOCKET.into()),
        timeout: conf.timeout_seconds.and_then(|s| Duration::try_from_secs_f64(s).ok()).unwrap_or(DEFAULT_TIMEOUT),
    };
    let pod = invocation
        .pod
        .as_ref()
        .map(|(namespace, name)| sandboxes::Pod { namespace: namespace.clone(), name: name.clone() });
    match invocation.command {
        Command::Add => {
            let prev = prev_result(conf)?;
            let passed = prev.to_string();
            // Not a pod (a runtime used outside Kubernetes): no policy names it.
            let Some(pod) = pod else { return Ok(passed) };
            let setup = Setup::from_prev_result(prev)?;
            let request = sandboxes::AddRequest {
                pod: Some(pod),
                container_id: invocation.container_id.clone(),
                host_interface: setup.host_interface,
                ips: setup.ips.iter().map(ToString::to_string).collect(),
            };
            match agent.call(|mut c| async move { c.add(request).await }).await {
                Ok(_) => Ok(passed),
                Err(Failure::Unreachable(why)) if conf.fail_open && why.starts_with(NOT_LISTENING) => {
                    eprintln!("na-cni: the agent cannot be reached ({why}); failOpen lets the pod start unenforced");
                    Ok(passed)
                }
                Err(f) => Err(f.into_error("ADD")),
            }
        }
        Command::Check => {
            if ["0.3.0", "0.3.1"].contains(&conf.cni_version.as_str()) {
                return Err(Error::new(Code::IncompatibleVersion, "CHECK needs cniVersion 0.4.0 or later", ""));
            }
            let Some(pod) = pod else { return Ok(String::new()) };
            let setup = Setup::from_prev_result(prev_result(conf)?)?;
            let request = sandboxes::CheckRequest { pod: Some(pod), host_interface: setup.host_interface };
            agent.call(|mut c| async move { c.check(request).await }).await.map_err(|f| f.into_error("CHECK"))?;
            Ok(String::new())
        }
        Command::Del => {
            let Some(pod) = pod else { return Ok(String::new()) };
            let request = sandboxes::DelRequest { pod: Some(pod), container_id: invocation.container_id.clone() };
            match agent.call(|mut c| async move { c.del(request).await }).await {
                Ok(_) => Ok(String::new()),
                // The spec wants DEL to succeed when there is nothing left to
                // do; an agent that is down removes the pod's state when it
                // sees the pod gone.
                Err(Failure::Unreachable(why)) => {
                    eprintln!(
                        "na-cni: the agent cannot be reached ({why}); it removes the pod's state when it sees the pod gone"
                    );
                    Ok(String::new())
                }
                Err(f) => Err(f.into_error("DEL")),
            }
        }
        Command::Version => unreachable!("answered before the configuration is read"),
    }
}

fn prev_result(conf: &NetConf) -> Result<&Value, Error> {
    conf.prev_result.as_ref().ok_or_else(|| {
        Error::new(
            Code::InvalidConfig,
            "na-cni is a chained plugin and got no prevResult",
            "list it after the plugin that creates the pod's interface",
        )
    })
}

struct Agent {
    socket: PathBuf,
    timeout: Duration,
}

/// How an [`Failure::Unreachable`] for an agent that is not there at all
/// begins: only that lets `failOpen` start a pod unenforced. An agent that
/// is there but slow, or drops the call, fails the ADD.
const NOT_LISTENING: &str = "not listening: ";

enum Failure {
    /// No agent answered in time (see [`NOT_LISTENING`]).
    Unreachable(String),
    /// The agent answered no.
    Refused(tonic::Status),
}

impl Failure {
    fn into_error(self, command: &str) -> Error {
        match self {
            Self::Unreachable(why) => {
                Error::new(Code::TryAgainLater, format!("{command}: the network policy agent cannot be reached"), why)
            }
            Self::Refused(status) if status.code() == tonic::Code::InvalidArgument => {
                Error::new(Code::InvalidConfig, format!("{command}: the agent refused the request"), status.message())
            }
            Self::Refused(status) => Error::new(
                Code::NotEnforced,
                format!("{command}: the pod's network policy is not enforced"),
                status.message(),
            ),
        }
    }
}

impl Agent {
    async fn call<T, F>(&self, f: impl FnOnce(SandboxesClient<tonic::transport::Channel>) -> F) -> Result<T, Failure>
    where
        F: Future<Output = Result<T, tonic::Status>>,
    {
        let attempt = async {
            let channel = crate::rpc::connect(self.socket.clone()).await.map_err(|e| {
                Failure::Unreachable(format!("{NOT_LISTENING}{}: {}", self.socket.display(), source_chain(&e)))
            })?;
            f(SandboxesClient::new(channel)).await.map_err(|s| match s.code() {
                tonic::Code::Unavailable => Failure::Unreachable(s.message().to_owned()),
                _ => Failure::Refused(s),
            })
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .unwrap_or_else(|_| Err(Failure::Unreachable(format!("no answer within {:?}", self.timeout))))
    }
}

/// An error with its causes: tonic's own message says only "transport error".
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}
