//! The image `cargo xtask image` builds, run with podman the way
//! deploy/daemonset.yaml runs it: both init containers, then the agent with
//! the DaemonSet's command, ConfigMap, security context and mounts, in the
//! network namespace of a test node that stands for the host. It must mount
//! bpffs, install its CLI, enforce a policy on the node's pods, and explain
//! it with `na-cli` from inside the container (as `kubectl exec` would) and
//! from the copy it installed on the node.
//!
//! The one departure from the DaemonSet: no API server runs here, so the
//! agent finds the test's fake one through `KUBECONFIG` (a file mounted for
//! it) instead of the service account's in-cluster configuration.
//! Needs root, podman, runc and the archive `cargo xtask image` writes
//! (`cargo xtask test` builds it first).
mod support;

use std::{
    collections::BTreeMap,
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Container, PodSpec};
use na_agent::datapath::AttachMode;
use na_harness::{Family, NODE_IP, Probe};
use serde_json::json;
use support::{
    Env,
    agent::{ApiInNode, http_get, pod, policy, status},
    deploy::{environment, load},
    fake_apiserver::{Cluster, NAMESPACES, PODS, POLICIES},
};

/// The health port the ConfigMap gives the agent (on loopback).
const HEALTH: u16 = 8163;
/// Where the test mounts the kubeconfig in the agent's container.
const KUBECONFIG: &str = "/etc/na-test/kubeconfig";

fn archive() -> PathBuf {
    let path = std::env::var_os("NA_IMAGE_ARCHIVE")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/image/na-agent.oci.tar"), PathBuf::from);
    assert!(
        path.exists(),
        "no image at {}: build it with `cargo xtask image` (`cargo xtask test` does)",
        path.display()
    );
    path
}

fn podman(args: &[OsString]) -> Output {
    let out = Command::new("podman").args(args).output().expect("running podman (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "podman {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(Into::into).collect()
}

/// The image loaded into podman's store, removed from it on drop.
struct Image(String);

impl Image {
    fn load(archive: &Path) -> Self {
        let out = podman(&[os(&["load", "--quiet", "--input"]), vec![archive.into()]].concat());
        let text = String::from_utf8_lossy(&out.stdout);
        let name = text.lines().find_map(|l| l.split_once(": ")).map(|(_, n)| n.trim().to_owned());
        Self(name.unwrap_or_else(|| panic!("podman load named no image: {text}")))
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rmi", "--force", &self.0]).output();
    }
}

/// A detached container, removed (killed first) on drop.
struct Running(String);

impl Running {
    fn logs(&self) -> String {
        let out = Command::new("podman").args(["logs", &self.0]).output().expect("podman logs");
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rm", "--force", "--time", "2", &self.0]).output();
    }
}

/// A directory of the test's standing for the node's host paths; `bpf`
/// is a shared mount of its own, so that a mount the init container makes
/// under it reaches the node (Bidirectional propagation). Unmounted and
/// removed on drop.
struct HostPaths(PathBuf);

impl HostPaths {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("na-image-{}", std::process::id()));
        let bpf = dir.join("sys/fs/bpf");
        std::fs::create_dir_all(&bpf).unwrap();
        let paths = Self(dir);
        run(Command::new("mount").args(["--bind"]).arg(&bpf).arg(&bpf));
        // A peer group of its own: bound from a shared `/`, it would join
        // `/`'s, and the init container's mount would propagate there too.
        run(Command::new("mount").arg("--make-private").arg(&bpf));
        run(Command::new("mount").arg("--make-shared").arg(&bpf));
        paths
    }

    /// Where the host path `path` of a hostPath volume is.
    fn host(&self, path: &str) -> PathBuf {
        let dir = self.0.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn bpffs_root(&self) -> PathBuf {
        self.0.join("sys/fs/bpf/netpol")
    }
}

impl Drop for HostPaths {
    fn drop(&mut self) {
        // bpffs sits on the bind mount at the same point: one unmount each,
        // and bounded, since remove_dir_all must not reach into a mount.
        let bpf = self.0.join("sys/fs/bpf");
        for _ in 0..4 {
            if !Command::new("mountpoint").arg("-q").arg(&bpf).status().is_ok_and(|s| s.success()) {
                let _ = std::fs::remove_dir_all(&self.0);
                return;
            }
            let _ = Command::new("umount").arg("--recursive").arg(&bpf).status();
        }
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `podman run` flags for `container` of `pod` as the kubelet would run it
/// on the test node: security context, mounts (hostPath volumes under
/// `host`), environment and host network.
fn run_flags(
    pod: &PodSpec,
    container: &Container,
    env: &BTreeMap<String, String>,
    host: &HostPaths,
    node_netns: &str,
) -> Vec<OsString> {
    // This machine's limits: podman's larger defaults fail without
    // CAP_SYS_RESOURCE, and runc cannot set a process limit above pid_max.
    let (_, files) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let (_, procs) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NPROC).unwrap();
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().parse().unwrap();
    let procs = procs.min(pid_max);
    let mut flags = os(&["--runtime", "runc"]);
    flags.extend(os(&["--ulimit", &format!("nofile={files}:{files}"), "--ulimit", &format!("nproc={procs}:{procs}")]));
    assert_eq!(pod.host_network, Some(true), "the DaemonSet's pod runs in the node's network namespace");
    flags.push(format!("--network=ns:/run/netns/{node_netns}").into());
    let security = container.security_context.clone().unwrap_or_default();
    if security.privileged == Some(true) {
        flags.push("--privileged".into());
    }
    if security.read_only_root_filesystem == Some(true) {
        // And no tmpfs over /run, /tmp: the kubelet mounts none.
        flags.extend(os(&["--read-only", "--read-only-tmpfs=false"]));
    }
    if security.allow_privilege_escalation == Some(false) {
        flags.extend(os(&["--security-opt", "no-new-privileges"]));
    }
    // Without a profile named, podman applies its own default, as a kubelet
    // with --seccomp-default would.
    let seccomp = security.seccomp_profile.or_else(|| pod.security_context.as_ref()?.seccomp_profile.clone());
    match seccomp.as_ref().map(|p| p.type_.as_str()) {
        Some("Unconfined") => flags.extend(os(&["--security-opt", "seccomp=unconfined"])),
        None | Some("RuntimeDefault") => {}
        Some(other) => panic!("seccomp profile {other} not understood by this test"),
    }
    for cap in security.capabilities.iter().flat_map(|c| c.drop.iter().flatten()) {
        flags.extend(os(&["--cap-drop", &cap.to_lowercase()]));
    }
    for cap in security.capabilities.iter().flat_map(|c| c.add.iter().flatten()) {
        flags.extend(os(&["--cap-add", cap]));
    }
    for mount in container.volume_mounts.iter().flatten() {
        let volume = pod.volumes.iter().flatten().find(|v| v.name == mount.name).expect("a volume for every mount");
        let path = &volume.host_path.as_ref().expect("hostPath volumes only").path;
        let propagation = match mount.mount_propagation.as_deref() {
            Some("Bidirectional") => "rshared",
            Some("HostToContainer") => "rslave",
            _ => "rprivate",
        };
        let mut spec = OsString::from(host.host(path));
        spec.push(format!(":{}:{propagation}", mount.mount_path));
        flags.extend(["--volume".into(), spec]);
    }
    for (name, value) in env {
        flags.extend(os(&["--env", &format!("{name}={value}")]));
    }
    let command = container.command.as_ref().expect("every container names its command");
    flags.extend(os(&["--entrypoint", &command[0]]));
    flags
}

#[test]
fn the_image_runs_as_the_daemon_set_runs_it() {
    let archive = archive();
    let deploy = load();
    let pod_spec = deploy.daemon_sets[0].spec.clone().unwrap().template.spec.unwrap();
    let config = &deploy.config_maps[0];
    let env = Env::new(AttachMode::default()).unwrap();
    let node = env.node.netns().name().to_owned();
    let host = HostPaths::new();
    let image = Image::load(&archive);
    let container = |name: &str| {
        let inits = pod_spec.init_containers.iter().flatten();
        inits.chain(&pod_spec.containers).find(|c| c.name == name).unwrap_or_else(|| panic!("no container {name}"))
    };
    let podman_run = |c: &Container, extra: &[OsString]| -> Vec<OsString> {
        let mut args = os(&["run"]);
        args.extend(extra.iter().cloned());
        args.extend(run_flags(&pod_spec, c, &environment(c, config, &NODE_IP.to_string()), &host, &node));
        args.push(image.0.clone().into());
        args.extend(c.command.iter().flatten().skip(1).chain(c.args.iter().flatten()).map(Into::into));
        args
    };

    // Init 1 mounts bpffs on the (test's) host and makes the pin directories.
    podman(&podman_run(container("prepare-bpffs"), &os(&["--rm"])));
    assert!(na_agent::bpffs::is_bpffs(&host.bpffs_root()), "bpffs is mounted where the node sees it");
    for dir in ["programs", "maps", "links"] {
        assert!(host.bpffs_root().join(dir).is_dir(), "{dir} made under {}", host.bpffs_root().display());
    }

    // Init 2 puts na-cli and the CNI plugin on the host.
    podman(&podman_run(container("install-binaries"), &os(&["--rm"])));
    let installed = host.host("/opt/cni/bin");
    for binary in ["na-cli", "na-cni"] {
        assert!(installed.join(binary).is_file(), "{binary} installed in {}", installed.display());
    }

    // The agent: a admits only b.
    let mut cluster = Cluster::new();
    cluster.apply(NAMESPACES, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}));
    for app in ["a", "b", "c"] {
        cluster.apply(PODS, pod(&env, &format!("x/{app}"), app));
    }
    cluster.apply(
        POLICIES,
        policy(
            "a-ingress",
            json!({"podSelector": {"matchLabels": {"app": "a"}},
                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}]}]}),
        ),
    );
    let api = ApiInNode::serve(&env, cluster);
    let name = format!("na-agent-test-{}", std::process::id());
    let mut kubeconfig = OsString::from(api.state.1.join("kubeconfig"));
    kubeconfig.push(format!(":{KUBECONFIG}:ro"));
    let extra = [
        os(&["--detach", "--name", &name, "--env", &format!("KUBECONFIG={KUBECONFIG}"), "--volume"]),
        vec![kubeconfig],
    ]
    .concat();
    let agent_container = container("na-agent");
    podman(&podman_run(agent_container, &extra));
    let agent = Running(name);
    let status_file = host.host("/run/na-agent").join("status.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(&status_file)["attached"].as_array().is_none_or(|a| a.len() != 3) {
        assert!(Instant::now() < deadline, "the agent did not attach the three pods; its log:\n{}", agent.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    let (a, b, c) = (env.pod("x/a"), env.pod("x/b"), env.pod("x/c"));
    assert!(Probe::tcp(80).run(b, Family::V4.of(a)).unwrap(), "b reaches a");
    assert!(!Probe::tcp(80).run(c, Family::V4.of(a)).unwrap(), "c does not reach a");
    assert!(!Probe::tcp(80).run(c, Family::V6.of(a)).unwrap(), "nor over IPv6");
    assert!(Probe::tcp(80).run(a, Family::V4.of(c)).unwrap(), "a's egress is open");
    // Where the kubelet's probes go.
    let ready = http_get(&env, HEALTH, "/readyz").expect("health answers on loopback");
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");

    // na-cli from the image, inside the agent's container, with its defaults.
    let exec = |args: &[&str]| {
        let out = podman(&[os(&["exec", &agent.0, "/usr/local/bin/na-cli"]), os(args)].concat());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let report = exec(&["pod", "x/a"]);
    assert!(report.contains("x/a-ingress"), "{report}");
    let trace = exec(&["trace", &c.ip.to_string(), &a.ip.to_string(), "tcp/80"]);
    assert!(trace.contains("Verdict: DENY") && trace.contains("isolated by x/a-ingress"), "{trace}");
    let listed = exec(&["ebpf", "loaded-ebpfdata"]);
    assert_eq!(listed.matches("PinPath:").count(), 6, "both programs on each of the three veths: {listed}");
    // And the copy installed on the node, run there.
    let on_node = run(Command::new("nsenter")
        .arg(format!("--net=/run/netns/{node}"))
        .arg("--")
        .arg(installed.join("na-cli"))
        .arg("--bpffs-root")
        .arg(host.bpffs_root())
        .arg("--status-file")
        .arg(&status_file)
        .args(["ebpf", "loaded-ebpfdata"]));
    assert_eq!(on_node.matches("PinPath:").count(), 6, "both programs on each of the three veths: {on_node}");
    drop(agent);
}
