use std::{
    io::{ErrorKind, Read, Write},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use anyhow::Result;

use crate::{Node, Pod};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

/// One connection attempt: protocol and destination port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Probe {
    pub proto: Proto,
    pub port: u16,
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = match self.proto {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        };
        write!(f, "{p}/{}", self.port)
    }
}

/// How long one probe waits for its answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(400);

impl Probe {
    pub const fn tcp(port: u16) -> Self {
        Self { proto: Proto::Tcp, port }
    }

    pub const fn udp(port: u16) -> Self {
        Self { proto: Proto::Udp, port }
    }

    /// Whether a request from `from` to `to` gets its answer back: the full
    /// round trip, so a dropped reply counts as denied.
    ///
    /// Only silence is a denial (policy drops packets; it never refuses).
    /// A refused connection, an unreachable network or a wrong answer is an
    /// error: a dead server or broken routing must fail the test that meets
    /// it, not pass every cell that expects a denial.
    pub fn run(&self, from: &Pod, to: IpAddr) -> Result<bool> {
        self.run_in(from.netns(), to)
    }

    /// Like [`Probe::run`], from any namespace (the node's, for instance).
    pub fn run_in(&self, from: &crate::NetNs, to: IpAddr) -> Result<bool> {
        let addr = SocketAddr::new(to, self.port);
        let proto = self.proto;
        match from.run(move || exchange(proto, addr))? {
            Ok(echoed) => {
                anyhow::ensure!(echoed, "{self} to {addr}: answered with something else than the echo");
                Ok(true)
            }
            Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => Ok(false),
            Err(e) => anyhow::bail!("{self} to {addr}: {e} (a denial is silence, not an error)"),
        }
    }
}

fn exchange(proto: Proto, addr: SocketAddr) -> std::io::Result<bool> {
    let mut buf = [0u8; 16];
    match proto {
        Proto::Tcp => {
            let mut s = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)?;
            s.set_read_timeout(Some(PROBE_TIMEOUT))?;
            s.write_all(b"ping")?;
            let n = s.read(&mut buf)?;
            Ok(&buf[..n] == b"ping")
        }
        Proto::Udp => {
            let bind: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
            let s = UdpSocket::bind(bind)?;
            s.set_read_timeout(Some(PROBE_TIMEOUT))?;
            // Connected, so an ICMP port unreachable surfaces as "refused".
            s.connect(addr)?;
            s.send(b"ping")?;
            let n = s.recv(&mut buf)?;
            Ok(&buf[..n] == b"ping")
        }
    }
}

/// Address family of a probe matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(self, pod: &Pod) -> IpAddr {
        match self {
            Self::V4 => IpAddr::V4(pod.ip),
            Self::V6 => IpAddr::V6(pod.ip6),
        }
    }
}

/// Runs `probe` from every pod to every other pod, concurrently. Returns
/// `[from][to]`; the diagonal is `None` (a pod reaching itself never crosses
/// the datapath).
pub fn matrix(node: &Node, probe: Probe, family: Family) -> Result<Vec<Vec<Option<bool>>>> {
    let to: Vec<IpAddr> = node.pods().iter().map(|p| family.of(p)).collect();
    matrix_to(node, probe, &to)
}

/// [`matrix`], reaching pod `j` at `to[j]` (its Service's address, say).
pub fn matrix_to(node: &Node, probe: Probe, to: &[IpAddr]) -> Result<Vec<Vec<Option<bool>>>> {
    let pods: Vec<&Pod> = node.pods().iter().collect();
    matrix_from(&pods, probe, to)
}

/// [`matrix_to`] among some of the node's pods: from `pods[i]` to the pod
/// reached at `to[j]`, `pods[j]` itself (the diagonal) not probed.
pub fn matrix_from(pods: &[&Pod], probe: Probe, to: &[IpAddr]) -> Result<Vec<Vec<Option<bool>>>> {
    std::thread::scope(|s| {
        let handles: Vec<Vec<_>> = pods
            .iter()
            .enumerate()
            .map(|(i, from)| {
                to.iter()
                    .enumerate()
                    .map(|(j, &addr)| (i != j).then(|| s.spawn(move || probe.run(from, addr))))
                    .collect()
            })
            .collect();
        handles
            .into_iter()
            .map(|row| {
                row.into_iter().map(|h| h.map(|h| h.join().expect("probe thread panicked")).transpose()).collect()
            })
            .collect()
    })
}

/// Renders a matrix in the upstream e2e style: `.` reached, `X` blocked.
pub fn render(node: &Node, m: &[Vec<Option<bool>>]) -> String {
    let names: Vec<String> = node.pods().iter().map(Pod::key).collect();
    render_table(&names, &verdict_cells(m))
}

/// A matrix's cells as upstream prints them: `.` reached, `X` blocked, `-`
/// not probed.
pub fn verdict_cells(m: &[Vec<Option<bool>>]) -> Vec<Vec<char>> {
    m.iter()
        .map(|row| {
            row.iter()
                .map(|cell| match cell {
                    Some(true) => '.',
                    Some(false) => 'X',
                    None => '-',
                })
                .collect()
        })
        .collect()
}

/// A square table of one character per (row, column) pair, rows and columns
/// both labelled with `names`.
pub fn render_table(names: &[String], cells: &[Vec<char>]) -> String {
    let w = names.iter().map(String::len).max().unwrap_or(1);
    let mut out = format!("{:w$} ", "");
    for n in names {
        out += &format!(" {n:>w$}");
    }
    out.push('\n');
    for (name, row) in names.iter().zip(cells) {
        out += &format!("{name:w$} ");
        for c in row {
            out += &format!(" {c:>w$}");
        }
        out.push('\n');
    }
    out
}
