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
};

/// Upper bounds of the programming latency histogram, in seconds.
const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// What the agent reports; shared between its loop and the HTTP server.
#[derive(Debug)]
pub struct Telemetry {
    layout: PinLayout,
    /// Set after the first full reconcile.
    pub ready: bool,
    /// Attached pods with the ifindex their counters are kept under.
    pub pods: Vec<(ObjectRef, u32)>,
    pub reconcile_errors: u64,
    /// Watch failures (each retried with backoff, relisting after a 410).
    pub watch_errors: u64,
    programming: [u64; BUCKETS.len()],
    programming_count: u64,
    programming_sum: f64,
}

impl Telemetry {
    pub fn new(layout: PinLayout) -> Self {
        Self {
            layout,
            ready: false,
            pods: Vec::new(),
            reconcile_errors: 0,
            watch_errors: 0,
            programming: [0; BUCKETS.len()],
            programming_count: 0,
            programming_sum: 0.0,
        }
    }

    /// Records the time from an object change to its maps being written.
    pub fn observe_programming(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.programming[i] += 1;
            }
        }
        self.programming_count += 1;
        self.programming_sum += secs;
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str("# HELP na_pods_enforced Local pods with programs attached.\n# TYPE na_pods_enforced gauge\n");
        let _ = writeln!(s, "na_pods_enforced {}", self.pods.len());
        s.push_str("# HELP na_reconcile_errors_total Pods left as they were because writing them failed.\n");
        s.push_str("# TYPE na_reconcile_errors_total counter\n");
        let _ = writeln!(s, "na_reconcile_errors_total {}", self.reconcile_errors);
        s.push_str(
            "# HELP na_watch_errors_total API watch failures, each retried.\n# TYPE na_watch_errors_total counter\n",
        );
        let _ = writeln!(s, "na_watch_errors_total {}", self.watch_errors);
        s.push_str("# HELP na_policy_packets_total Packets judged by a pod's programs.\n# TYPE na_policy_packets_total counter\n");
        let mut bytes = String::from(
            "# HELP na_policy_bytes_total Bytes judged by a pod's programs.\n# TYPE na_policy_bytes_total counter\n",
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
        }
        s.push_str(&bytes);
        s.push_str("# HELP na_policy_programming_seconds From an object change to the maps written.\n");
        s.push_str("# TYPE na_policy_programming_seconds histogram\n");
        for (le, n) in BUCKETS.iter().zip(self.programming) {
            let _ = writeln!(s, "na_policy_programming_seconds_bucket{{le=\"{le}\"}} {n}");
        }
        let _ = writeln!(s, "na_policy_programming_seconds_bucket{{le=\"+Inf\"}} {}", self.programming_count);
        let _ = writeln!(s, "na_policy_programming_seconds_sum {}", self.programming_sum);
        let _ = writeln!(s, "na_policy_programming_seconds_count {}", self.programming_count);
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
            let (status, body) = {
                let t = telemetry.lock().expect("telemetry lock");
                match path {
                    "/metrics" => ("200 OK", t.render()),
                    "/healthz" => ("200 OK", "ok\n".to_owned()),
                    "/readyz" if t.ready => ("200 OK", "ready\n".to_owned()),
                    "/readyz" => ("503 Service Unavailable", "first reconcile not done\n".to_owned()),
                    _ => ("404 Not Found", "not found\n".to_owned()),
                }
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
    }
}
