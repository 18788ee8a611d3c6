//! Flow logs: one JSON line per verdict event, naming the pod and the policy
//! rule that decided, bounded in rate so a flood of drops cannot flood the
//! log (or the agent).
use std::{
    collections::HashMap,
    io::Write,
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use na_common::events::{PolicyEvent, tier, verdict};
use na_policy::{Compiler, Direction, ObjectRef, Services};
use serde::{Deserialize, Serialize};

use crate::{decode, pod_id::PodId, status::Status};

/// One flow log line.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FlowLine {
    /// Seconds since the Unix epoch, with milliseconds.
    pub time: String,
    pub node: String,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub direction: String,
    pub src_ip: IpAddr,
    pub src_port: u16,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
    pub protocol: String,
    pub verdict: String,
    pub tier: String,
    /// `namespace/name` of the NetworkPolicy whose rule allowed the flow.
    pub policy: Option<String>,
    /// Index of that rule in the policy's ingress or egress list.
    pub rule: Option<usize>,
    /// For a flow denied (or revoked) because no rule admitted it, the policies that isolate the pod in that direction, as they are
    /// when the line is written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub isolated_by: Vec<String>,
    /// `namespace/name` of the Service the pod connected to, when the flow
    /// went through one (`dst_ip` and `dst_port` are then its endpoint's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// Which events become lines.
#[derive(Clone, Copy, Debug)]
pub struct FlowLogConfig {
    /// Log allowed flows too (denied ones always are).
    pub accept: bool,
    /// Lines per second at most; the rest are counted and reported.
    pub max_per_sec: u32,
}

pub struct FlowLogger {
    config: FlowLogConfig,
    node: String,
    out: Output,
    window: Instant,
    in_window: u32,
    suppressed: u64,
}

/// Where lines go: stdout, or a file rotated by size.
pub enum Output {
    Stdout,
    File { path: PathBuf, file: std::fs::File, written: u64, max_bytes: u64, keep: usize },
}

impl Output {
    pub fn file(path: PathBuf, max_bytes: u64, keep: usize) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        let written = file.metadata()?.len();
        Ok(Self::File { path, file, written, max_bytes, keep })
    }

    fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        match self {
            Self::Stdout => writeln!(std::io::stdout().lock(), "{line}"),
            Self::File { path, file, written, max_bytes, keep } => {
                if *written + line.len() as u64 + 1 > *max_bytes {
                    // path.N-1 -> path.N, ..., path -> path.1
                    for i in (1..*keep).rev() {
                        let _ = std::fs::rename(rotated(path, i), rotated(path, i + 1));
                    }
                    std::fs::rename(&*path, rotated(path, 1))?;
                    *file = std::fs::OpenOptions::new().create(true).append(true).open(&*path)?;
                    *written = 0;
                }
                writeln!(file, "{line}")?;
                *written += line.len() as u64 + 1;
                Ok(())
            }
        }
    }
}

fn rotated(path: &std::path::Path, i: usize) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!(".{i}"));
    p.into()
}

impl FlowLogger {
    pub fn new(config: FlowLogConfig, node: String, out: Output) -> Self {
        Self { config, node, out, window: Instant::now(), in_window: 0, suppressed: 0 }
    }

    /// Logs `event` if the configuration and the rate allow.
    pub fn record(
        &mut self,
        event: &PolicyEvent,
        pods: &HashMap<u32, ObjectRef>,
        names: &impl Names,
        services: &Services,
    ) {
        if event.verdict == verdict::ALLOW && !self.config.accept {
            return;
        }
        if self.window.elapsed() >= Duration::from_secs(1) {
            if self.suppressed > 0 {
                tracing::warn!(suppressed = self.suppressed, "flow log rate limit reached; lines dropped");
            }
            self.window = Instant::now();
            self.in_window = 0;
            self.suppressed = 0;
        }
        if self.in_window >= self.config.max_per_sec {
            self.suppressed += 1;
            return;
        }
        self.in_window += 1;
        let mut line = line(&self.node, event, pods.get(&event.ifindex), names, SystemTime::now());
        line.service = services.name_of(event.service_id).map(ToString::to_string);
        if let Err(e) = self.out.write_line(&serde_json::to_string(&line).expect("plain data serialises")) {
            tracing::warn!("writing the flow log: {e}");
        }
    }
}

/// Where a line's names come from: the agent's compiler as it runs, or the
/// status file it wrote (for `na-cli events`).
pub trait Names {
    /// The policy (`namespace/name`) and rule index of attribution id `id`.
    fn rule(&self, id: u32) -> Option<(String, usize)>;
    /// The policies that isolate `pod` in `direction` (`na_common::direction`).
    fn isolating(&self, pod: &ObjectRef, direction: u32) -> Vec<String>;
}

impl Names for Compiler {
    fn rule(&self, id: u32) -> Option<(String, usize)> {
        self.attributions().get(id).map(|a| (a.policy.to_string(), a.rule))
    }

    fn isolating(&self, pod: &ObjectRef, direction: u32) -> Vec<String> {
        let dir = if direction == na_common::direction::INGRESS { Direction::Ingress } else { Direction::Egress };
        Compiler::isolating(self, pod, dir).iter().map(ToString::to_string).collect()
    }
}

impl Names for Status {
    fn rule(&self, id: u32) -> Option<(String, usize)> {
        Status::rule(self, id).map(|r| (r.policy.clone(), r.rule))
    }

    fn isolating(&self, pod: &ObjectRef, direction: u32) -> Vec<String> {
        self.isolated_by(PodId::new(&pod.namespace, &pod.name).as_str(), direction)
    }
}

/// The line for `event`: `pod` is the pod behind its veth.
pub fn line(node: &str, e: &PolicyEvent, pod: Option<&ObjectRef>, names: &impl Names, now: SystemTime) -> FlowLine {
    let (policy, rule) = decode::attribution(e.policy_id, |id| names.rule(id));
    // Only a denial by the rules is the isolating policies' doing: those of
    // the packet's direction, or for a revoked flow met by a reply, of the
    // direction that opened it.
    let by_rules = e.verdict != verdict::ALLOW && matches!(e.tier, tier::NETWORK_POLICY | tier::REVOKED);
    let direction = u32::from(e.direction);
    let rules_direction = if e.tier == tier::REVOKED && e.reply == 1 { 1 - direction } else { direction };
    let isolated_by = match pod {
        Some(pod) if by_rules => names.isolating(pod, rules_direction),
        _ => Vec::new(),
    };
    let since = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    FlowLine {
        time: format!("{}.{:03}", since.as_secs(), since.subsec_millis()),
        node: node.to_owned(),
        namespace: pod.map(|p| p.namespace.clone()),
        pod: pod.map(|p| p.name.clone()),
        direction: decode::direction_name(u32::from(e.direction)).to_owned(),
        src_ip: decode::addr(e.family, e.src_addr.0),
        src_port: e.src_port,
        dst_ip: decode::addr(e.family, e.dst_addr.0),
        dst_port: e.dst_port,
        protocol: decode::protocol_name(e.protocol),
        verdict: decode::verdict_name(e.verdict).to_owned(),
        tier: decode::tier_name(e.tier).to_owned(),
        policy,
        rule,
        isolated_by,
        service: None,
    }
}

/// Decodes a ring buffer record.
pub fn decode(bytes: &[u8]) -> Option<PolicyEvent> {
    (bytes.len() >= std::mem::size_of::<PolicyEvent>())
        // SAFETY: PolicyEvent is plain integers; the length was checked.
        .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<PolicyEvent>()) })
}

#[cfg(test)]
mod tests {
    use na_common::{direction, family};
    use na_policy::{Attribution, Attributions};

    use super::*;

    fn event(verdict_: u8, policy_id: u32) -> PolicyEvent {
        let mut src = [0u8; 16];
        src[..4].copy_from_slice(&[10, 0, 0, 2]);
        let mut dst = [0u8; 16];
        dst[..4].copy_from_slice(&[10, 0, 0, 1]);
        PolicyEvent {
            src_addr: na_common::Addr(src),
            dst_addr: na_common::Addr(dst),
            src_port: 40000,
            dst_port: 80,
            protocol: na_common::protocol::TCP,
            family: family::IPV4,
            direction: direction::INGRESS as u8,
            verdict: verdict_,
            tier: tier::NETWORK_POLICY,
            policy_id,
            ifindex: 7,
            ..Default::default()
        }
    }

    /// Names as a table gives them: `attributions`, and `isolating` for
    /// every pod and direction.
    struct Fixed {
        attributions: Attributions,
        /// By direction.
        isolating: [Vec<String>; 2],
    }

    impl Names for Fixed {
        fn rule(&self, id: u32) -> Option<(String, usize)> {
            self.attributions.get(id).map(|a| (a.policy.to_string(), a.rule))
        }

        fn isolating(&self, _: &ObjectRef, direction: u32) -> Vec<String> {
            self.isolating[direction as usize].clone()
        }
    }

    #[test]
    fn lines_name_the_pod_and_the_deciding_policy() {
        let pods = HashMap::from([(7, ObjectRef::new("x", "a"))]);
        let isolating = [vec!["x/deny".to_owned()], vec!["x/out".to_owned()]];
        let mut names = Fixed { attributions: Attributions::default(), isolating };
        let id =
            names.attributions.id(Attribution::network_policy(ObjectRef::new("x", "allow-b"), Direction::Ingress, 2));
        let l = line("n1", &event(verdict::ALLOW, id), pods.get(&7), &names, SystemTime::UNIX_EPOCH);
        assert_eq!((l.namespace.as_deref(), l.pod.as_deref()), (Some("x"), Some("a")));
        assert_eq!((l.verdict.as_str(), l.policy.as_deref(), l.rule), ("ACCEPT", Some("x/allow-b"), Some(2)));
        assert_eq!((l.src_ip.to_string(), l.dst_port, l.protocol.as_str()), ("10.0.0.2".into(), 80, "TCP"));
        assert!(l.isolated_by.is_empty(), "an allowed flow names the rule, not the isolation");
        let d = line("n1", &event(verdict::DENY, 0), pods.get(&7), &names, SystemTime::UNIX_EPOCH);
        assert_eq!((d.verdict.as_str(), d.policy.as_deref(), d.direction.as_str()), ("DENY", None, "ingress"));
        assert_eq!(d.isolated_by, ["x/deny"], "a denial by the rules names the policies isolating the pod");
        let json = serde_json::to_string(&d).unwrap();
        assert!(json.contains(r#""pod":"a""#) && json.contains(r#""policy":null"#), "{json}");
        assert!(json.contains(r#""isolated_by":["x/deny"]"#), "{json}");
        // Denials not of the rules' making name no policy.
        for other in [tier::SPOOFED, tier::DEFAULT_DENY] {
            let mut denied = event(verdict::DENY, 0);
            denied.tier = other;
            assert!(line("n1", &denied, pods.get(&7), &names, SystemTime::UNIX_EPOCH).isolated_by.is_empty());
        }
        // A revoked flow names the policies of the direction that opened it.
        let mut revoked = event(verdict::DENY, 0);
        revoked.tier = tier::REVOKED;
        assert_eq!(line("n1", &revoked, pods.get(&7), &names, SystemTime::UNIX_EPOCH).isolated_by, ["x/deny"]);
        revoked.reply = 1;
        let reply = line("n1", &revoked, pods.get(&7), &names, SystemTime::UNIX_EPOCH);
        assert_eq!((reply.direction.as_str(), reply.isolated_by.as_slice()), ("ingress", &["x/out".to_owned()][..]));
    }

    #[test]
    fn rate_limit_and_accept_filter() {
        let dir = std::env::temp_dir().join(format!("na-flowlog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("flows.log");
        let out = Output::file(path.clone(), 1 << 20, 2).unwrap();
        let mut logger = FlowLogger::new(FlowLogConfig { accept: false, max_per_sec: 3 }, "n1".into(), out);
        let names = Fixed { attributions: Attributions::default(), isolating: Default::default() };
        let pods = HashMap::new();
        for _ in 0..5 {
            logger.record(&event(verdict::DENY, 0), &pods, &names, &Services::default());
            logger.record(&event(verdict::ALLOW, 0), &pods, &names, &Services::default());
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.lines().all(|l| l.contains("DENY")));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn files_rotate_by_size() {
        let dir = std::env::temp_dir().join(format!("na-flowlog-rot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("flows.log");
        let mut out = Output::file(path.clone(), 100, 2).unwrap();
        for i in 0..10 {
            out.write_line(&format!("{i:040}")).unwrap();
        }
        assert!(std::fs::metadata(&path).unwrap().len() <= 100);
        assert!(rotated(&path, 1).exists() && rotated(&path, 2).exists() && !rotated(&path, 3).exists());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
