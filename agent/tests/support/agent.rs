//! The agent as a process in a test node, fed from a manifests directory.
use std::{
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command},
    time::{Duration, Instant},
};

use na_harness::NODE_IP;
use serde_json::{Value, json};

use super::Env;

pub const NODE: &str = "node-1";

/// A manifests directory and, beside it, one for the agent's own files (not
/// inside: writing them would wake the directory watch); both removed on drop.
pub struct Manifests(pub PathBuf, pub PathBuf);

impl Manifests {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("na-manifests-{}-{}", std::process::id(), rand_suffix()));
        let state = dir.with_extension("state");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        Self(dir, state)
    }

    pub fn write(&self, file: &str, docs: &[Value]) {
        let text: Vec<String> = docs.iter().map(|d| serde_json::to_string(d).unwrap()).collect();
        // Written aside and renamed in, as a config management tool would.
        let tmp = self.0.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text.join("\n---\n")).unwrap();
        std::fs::rename(tmp, self.0.join(file)).unwrap();
    }

    pub fn write_raw(&self, file: &str, text: &str) {
        std::fs::write(self.0.join(file), text).unwrap();
    }
}

impl Drop for Manifests {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

/// The agent process, killed on drop; its log's path.
pub struct Agent(Child, PathBuf);

impl Agent {
    pub fn start(env: &Env, manifests: &Manifests, status: &PathBuf) -> Self {
        Self::start_with(env, manifests, status, &[])
    }

    pub fn start_with(env: &Env, manifests: &Manifests, status: &PathBuf, extra: &[&str]) -> Self {
        Self::start_with_env(env, manifests, status, extra, &[])
    }

    /// [`Self::start_with`], with these environment variables set for the agent.
    pub fn start_with_env(
        env: &Env,
        manifests: &Manifests,
        status: &PathBuf,
        extra: &[&str],
        vars: &[(&str, &str)],
    ) -> Self {
        let mut args: Vec<std::ffi::OsString> = vec!["--manifests".into(), manifests.0.clone().into()];
        args.extend(extra.iter().map(Into::into));
        Self::spawn_with_env(env, status, &Self::with_flow_log(status, &args), vars)
    }

    pub fn launch(env: &Env, status: &PathBuf, source: &[std::ffi::OsString]) -> Self {
        Self::spawn(env, status, &Self::with_flow_log(status, source))
    }

    /// `source` after the flags that make the agent log every verdict beside `status`.
    fn with_flow_log(status: &std::path::Path, source: &[std::ffi::OsString]) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> =
            ["--enable-policy-event-logs", "--flow-log-accept", "--flow-log-file"].map(Into::into).into();
        args.push(status.with_extension("flows").into());
        args.extend(source.iter().cloned());
        args
    }

    /// The agent with exactly these arguments besides node, bpffs and status.
    pub fn spawn(env: &Env, status: &PathBuf, args: &[std::ffi::OsString]) -> Self {
        Self::spawn_with_env(env, status, args, &[])
    }

    fn spawn_with_env(env: &Env, status: &PathBuf, args: &[std::ffi::OsString], vars: &[(&str, &str)]) -> Self {
        // Only the network namespace: `ip netns exec` would also give the agent
        // its own mount namespace, and with it a private bpffs whose pins die
        // with the process. Root, but with no capability beyond the
        // DaemonSet's and no way to gain one (allowPrivilegeEscalation:
        // false): what needs more fails here as it would on a node.
        let log = status.with_extension("log");
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", env.node.netns().name()))
            .arg("--")
            .args(na_harness::privileges::as_daemon_set())
            .arg(binary("na-agent", option_env!("CARGO_BIN_EXE_na-agent")))
            .args(["--node-name", NODE, "--node-ip", &NODE_IP.to_string()])
            .arg("--bpffs-root")
            .arg(env.root())
            .arg("--status-file")
            .arg(status)
            .arg("--cni-socket")
            .arg(cni_socket(status))
            .args(args)
            .envs(vars.iter().copied())
            .stdout(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting na-agent");
        Self(child, log)
    }

    /// The agent's process id (nsenter execs it in place).
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    pub fn running(&mut self) -> bool {
        self.0.try_wait().is_ok_and(|exit| exit.is_none())
    }

    pub fn kill(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        // A failing test shows what the agent said last.
        if std::thread::panicking() {
            eprintln!("--- the agent's last log lines ({}):", self.1.display());
            eprintln!("{}", na_harness::last_lines(&self.1, 40));
        }
    }
}

/// The agent's answer to GET `path` on `port` inside the node; None while
/// nothing listens there.
pub fn http_get(env: &Env, port: u16, path: &'static str) -> Option<String> {
    env.node
        .netns()
        .run(move || {
            let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            Some(out)
        })
        .unwrap()
}

/// The socket the agent writing `status` answers CNI calls on.
pub fn cni_socket(status: &std::path::Path) -> PathBuf {
    status.with_extension("sock")
}

pub fn status(path: &PathBuf) -> Value {
    std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(Value::Null)
}

/// Polls `cond` until it holds; fails the test after a bound.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the agent enforces what the manifests directory holds now,
/// with `pods` pods attached and no error.
pub fn wait_applied(manifests: &Manifests, status_file: &std::path::Path, pods: usize) {
    let want = na_agent::source::manifests::load_dir(&manifests.0).revision;
    wait_until("the agent enforces the manifests", || {
        let s = status(&status_file.to_path_buf());
        s["revision"] == want.as_str()
            && s["attached"].as_array().is_some_and(|a| a.len() == pods)
            && s["errors"].as_array().is_some_and(Vec::is_empty)
    });
}

pub fn pod(env: &Env, key: &str, app: &str) -> Value {
    let p = env.pod(key);
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": p.name, "namespace": p.namespace, "labels": {"app": app}, "uid": format!("uid-{key}")},
           "spec": {"nodeName": NODE, "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 80}]}]},
           "status": {"phase": "Running", "podIP": p.ip.to_string(),
                      "podIPs": [{"ip": p.ip.to_string()}, {"ip": p.ip6.to_string()}]}})
}

pub fn policy(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name, "namespace": "x"}, "spec": spec})
}

pub fn echoes(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4];
    s.write_all(b"ping").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"ping"
}

/// One of the package's binaries: as cargo names it to tests (`built`), or
/// from `$NA_AGENT`/`$NA_CLI`, or beside the running executable's directory
/// (`target/debug/examples/x` -> `target/debug/name`).
pub fn binary(name: &str, built: Option<&str>) -> PathBuf {
    if let Some(path) = built {
        return path.into();
    }
    if let Some(path) = std::env::var_os(name.replace('-', "_").to_uppercase()) {
        return path.into();
    }
    let exe = std::env::current_exe().expect("current executable");
    exe.parent().and_then(|p| p.parent()).expect("a target directory").join(name)
}

/// The fake API server serving `cluster` inside `env`'s node, where the
/// agent runs, and beside it the files of an agent in Kubernetes mode.
pub struct ApiInNode {
    pub server: super::fake_apiserver::Server,
    pub state: Manifests,
    pub status_file: PathBuf,
}

impl ApiInNode {
    pub fn serve(env: &Env, cluster: super::fake_apiserver::Cluster) -> Self {
        let listener = env.node.netns().run(|| std::net::TcpListener::bind("127.0.0.1:0")).unwrap().unwrap();
        let server = super::fake_apiserver::serve(listener, cluster);
        let state = Manifests::new();
        std::fs::write(state.1.join("kubeconfig"), super::fake_apiserver::kubeconfig(server.port)).unwrap();
        let status_file = state.1.join("status.json");
        Self { server, state, status_file }
    }

    pub fn cluster(&self) -> std::sync::MutexGuard<'_, super::fake_apiserver::Cluster> {
        self.server.cluster()
    }

    /// The agent watching the server, in its node.
    pub fn agent(&self, env: &Env) -> Agent {
        Agent::launch(env, &self.status_file, &["--kubeconfig".into(), self.state.1.join("kubeconfig").into()])
    }

    /// How many pods the agent reports attached.
    pub fn attached(&self) -> usize {
        status(&self.status_file)["attached"].as_array().map_or(0, Vec::len)
    }
}
