//! Prometheus metrics and health endpoints. Counters are read from the pods'
//! per-CPU maps at scrape time, so metrics never depend on event logging.
use std::{
    fmt::Write as _,
    sync::{Arc, Mutex},
    time::Duration,
};

use na_policy::ObjectRef;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::{
    bpffs::PinLayout,
    datapath::{NodeTables, counters},
    reconcile::ErrorKind,
};

/// Upper bounds of the latency histograms, in seconds.
const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// A latency histogram over [`BUCKETS`].
#[derive(Clone, Debug, Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        for (n, le) in self.buckets.iter_mut().zip(BUCKETS) {
            if secs <= le {
                *n += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }

    fn render(&self, s: &mut String, name: &str, help: &str) {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (le, n) in BUCKETS.iter().zip(self.buckets) {
            let _ = writeln!(s, "{name}_bucket{{le=\"{le}\"}} {n}");
        }
        let _ = writeln!(s, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(s, "{name}_sum {}", self.sum);
        let _ = writeln!(s, "{name}_count {}", self.count);
    }
}

/// How a CNI ADD ended, as the metrics count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AddResult {
    /// The pod's policy is enforced.
    Enforced,
    /// The pod was not known in time: it is judged as a pod without labels until it is.
    Assumed,
    /// Nothing could be enforced; the ADD failed.
    Failed,
}

impl AddResult {
    const ALL: [Self; 3] = [Self::Enforced, Self::Assumed, Self::Failed];

    fn label(self) -> &'static str {
        match self {
            Self::Enforced => "enforced",
            Self::Assumed => "assumed",
            Self::Failed => "failed",
        }
    }
}

/// What the agent reports; shared between its loop and the HTTP server.
#[derive(Clone, Debug)]
pub struct Telemetry {
    layout: PinLayout,
    /// Set after the first full reconcile.
    pub ready: bool,
    /// Attached pods with the ifindex their counters are kept under.
    pub pods: Vec<(ObjectRef, u32)>,
    /// Reconcile errors by kind, in [`ErrorKind::ALL`]'s order.
    reconcile_errors: [u64; ErrorKind::ALL.len()],
    /// Watch failures (each retried with backoff, relisting after a 410).
    pub watch_errors: u64,
    /// Pods attached again after their attachment or record was lost.
    pub attachments_restored: u64,
    programming: Histogram,
    cni_add: Histogram,
    cni_adds: [u64; AddResult::ALL.len()],
}

impl Telemetry {
    pub fn new(layout: PinLayout) -> Self {
        Self {
            layout,
            ready: false,
            pods: Vec::new(),
            reconcile_errors: [0; ErrorKind::ALL.len()],
            watch_errors: 0,
            attachments_restored: 0,
            programming: Histogram::default(),
            cni_add: Histogram::default(),
            cni_adds: [0; AddResult::ALL.len()],
        }
    }

    /// Records the time from an object change to its maps being written.
    pub fn observe_programming(&mut self, d: Duration) {
        self.programming.observe(d);
    }

    pub fn observe_reconcile_error(&mut self, kind: ErrorKind) {
        self.reconcile_errors[kind as usize] += 1;
    }

    /// Records a CNI ADD: how it ended and how long the agent took to answer.
    pub fn observe_cni_add(&mut self, result: AddResult, d: Duration) {
        self.cni_adds[result as usize] += 1;
        self.cni_add.observe(d);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str("# HELP na_pods_enforced Local pods with programs attached.\n# TYPE na_pods_enforced gauge\n");
        let _ = writeln!(s, "na_pods_enforced {}", self.pods.len());
        s.push_str("# HELP na_reconcile_errors_total Reconcile failures, by kind (retried every 2 s).\n");
        s.push_str("# TYPE na_reconcile_errors_total counter\n");
        for (kind, n) in ErrorKind::ALL.iter().zip(self.reconcile_errors) {
            let _ = writeln!(s, "na_reconcile_errors_total{{kind=\"{}\"}} {n}", kind.label());
        }
        s.push_str(
            "# HELP na_watch_errors_total API watch failures, each retried.\n# TYPE na_watch_errors_total counter\n",
        );
        let _ = writeln!(s, "na_watch_errors_total {}", self.watch_errors);
        s.push_str("# HELP na_attachments_restored_total Pods whose programs something else removed from their veth (a tc filter or qdisc deleted, a link detached), or whose veth record no longer led to their maps, attached again.\n# TYPE na_attachments_restored_total counter\n");
        let _ = writeln!(s, "na_attachments_restored_total {}", self.attachments_restored);
        s.push_str("# HELP na_policy_packets_total Packets judged by a pod's programs.\n# TYPE na_policy_packets_total counter\n");
        let mut bytes = String::from(
            "# HELP na_policy_bytes_total Bytes judged by a pod's programs.\n# TYPE na_policy_bytes_total counter\n",
        );
        let mut audited = String::from(
            "# HELP na_policy_audit_denials_total New flows an audited pod's NetworkPolicies would have dropped (passed, not enforced).\n# TYPE na_policy_audit_denials_total counter\n",
        );
        let tables = NodeTables::open(&self.layout).ok();
        for (pod, ifindex) in &self.pods {
            let Some(c) = tables.as_ref().and_then(|t| t.counters(*ifindex).ok()).map(|v| counters(&v)) else {
                continue;
            };
            for (direction, verdict, t) in [
                ("ingress", "allow", c.ingress_allowed),
                ("ingress", "deny", c.ingress_denied),
                ("egress", "allow", c.egress_allowed),
                ("egress", "deny", c.egress_denied),
            ] {
                let labels = format!(
                    "namespace=\"{}\",pod=\"{}\",direction=\"{direction}\",verdict=\"{verdict}\"",
                    pod.namespace, pod.name
                );
                let _ = writeln!(s, "na_policy_packets_total{{{labels}}} {}", t.packets);
                let _ = writeln!(bytes, "na_policy_bytes_total{{{labels}}} {}", t.bytes);
            }
            for (direction, t) in [("ingress", c.ingress_audited), ("egress", c.egress_audited)] {
                let labels = format!("namespace=\"{}\",pod=\"{}\",direction=\"{direction}\"", pod.namespace, pod.name);
                let _ = writeln!(audited, "na_policy_audit_denials_total{{{labels}}} {}", t.packets);
            }
        }
        s.push_str(&bytes);
        s.push_str(&audited);
        let programming = "From an object change to the maps written.";
        self.programming.render(&mut s, "na_policy_programming_seconds", programming);
        s.push_str(
            "# HELP na_cni_adds_total CNI ADDs answered, by how they ended.\n# TYPE na_cni_adds_total counter\n",
        );
        for (result, n) in AddResult::ALL.iter().zip(self.cni_adds) {
            let _ = writeln!(s, "na_cni_adds_total{{result=\"{}\"}} {n}", result.label());
        }
        let cni = "From a CNI ADD reaching the agent to its answer (the pod's start waits for it).";
        self.cni_add.render(&mut s, "na_cni_add_seconds", cni);
        s
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, telemetry: Arc<Mutex<Telemetry>>) -> std::io::Result<()> {
    loop {
        let (mut conn, _) = listener.accept().await?;
        let telemetry = telemetry.clone();
        tokio::spawn(async move {
            let Ok(request) = tokio::time::timeout(Duration::from_secs(5), read_head(&mut conn)).await else {
                return;
            };
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = match path {
                "/metrics" => {
                    // Rendered from a copy: the agent's loop, which updates
                    // the figures, never waits for a scrape's map reads.
                    let t = telemetry.lock().expect("telemetry lock").clone();
                    match tokio::task::spawn_blocking(move || t.render()).await {
                        Ok(body) => ("200 OK", body),
                        Err(_) => ("500 Internal Server Error", "rendering failed\n".to_owned()),
                    }
                }
                "/healthz" => ("200 OK", "ok\n".to_owned()),
                "/readyz" if telemetry.lock().expect("telemetry lock").ready => ("200 OK", "ready\n".to_owned()),
                "/readyz" => ("503 Service Unavailable", "first reconcile not done\n".to_owned()),
                _ => ("404 Not Found", "not found\n".to_owned()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(response.as_bytes()).await;
        });
    }
}

/// The request line and headers (the request may arrive in pieces).
async fn read_head(conn: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut t = Telemetry::new(PinLayout::new("/nonexistent"));
        t.observe_programming(Duration::from_millis(3));
        t.observe_programming(Duration::from_millis(30));
        let text = t.render();
        assert!(text.contains("na_policy_programming_seconds_bucket{le=\"0.0025\"} 0"), "{text}");
        assert!(text.contains("na_policy_programming_seconds_bucket{le=\"0.005\"} 1"), "{text}");
        assert!(text.contains("na_policy_programming_seconds_bucket{le=\"0.05\"} 2"), "{text}");
        assert!(text.contains("na_policy_programming_seconds_count 2"), "{text}");
        assert!(text.contains("na_pods_enforced 0"));
        t.observe_cni_add(AddResult::Assumed, Duration::from_millis(20));
        let text = t.render();
        assert!(text.contains("na_cni_adds_total{result=\"assumed\"} 1"), "{text}");
        assert!(text.contains("na_cni_adds_total{result=\"failed\"} 0"), "{text}");
        assert!(text.contains("na_cni_add_seconds_bucket{le=\"0.01\"} 0"), "{text}");
        assert!(text.contains("na_cni_add_seconds_bucket{le=\"0.025\"} 1"), "{text}");
        t.observe_reconcile_error(ErrorKind::Attach);
        t.observe_reconcile_error(ErrorKind::Attach);
        let text = t.render();
        assert!(text.contains("na_reconcile_errors_total{kind=\"attach\"} 2"), "{text}");
        assert!(text.contains("na_reconcile_errors_total{kind=\"compile\"} 0"), "{text}");
    }
}
