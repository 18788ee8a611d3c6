use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result};
use nix::sched::{CloneFlags, setns};

use crate::{Pod, Proto};

/// How often server loops look at the stop flag.
const POLL: Duration = Duration::from_millis(20);

/// Echo servers inside pods; stopped and joined on drop.
#[derive(Default)]
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    /// Starts an echo server for `proto`/`port` inside `pod`, listening on all
    /// addresses of both families. Returns once it is bound.
    pub fn start(&mut self, pod: &Pod, proto: Proto, port: u16) -> Result<()> {
        let ns = pod.netns().open()?;
        let stop = self.stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        self.threads.push(std::thread::spawn(move || {
            let bound = setns(&ns, CloneFlags::CLONE_NEWNET).context("setns").and_then(|()| bind(proto, port));
            match bound {
                Ok(socket) => {
                    let _ = ready_tx.send(Ok(()));
                    serve(socket, &stop);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        }));
        ready_rx.recv().context("server thread died")?
    }
}

enum Socket {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// Binds `[::]`, which on Linux also accepts IPv4.
fn bind(proto: Proto, port: u16) -> Result<Socket> {
    let addr = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
    Ok(match proto {
        Proto::Tcp => {
            let l = TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            Socket::Tcp(l)
        }
        Proto::Udp => {
            let s = UdpSocket::bind(addr)?;
            s.set_read_timeout(Some(POLL))?;
            Socket::Udp(s)
        }
    })
}

fn serve(socket: Socket, stop: &AtomicBool) {
    let mut buf = [0u8; 1500];
    std::thread::scope(|s| {
        while !stop.load(Ordering::Relaxed) {
            match &socket {
                Socket::Tcp(l) => match l.accept() {
                    // Each connection echoes until its peer closes it, so tests
                    // can hold long-lived connections.
                    Ok((conn, _)) => {
                        s.spawn(move || echo(conn, stop));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL),
                    Err(_) => std::thread::sleep(POLL),
                },
                Socket::Udp(u) => {
                    if let Ok((n, peer)) = u.recv_from(&mut buf) {
                        let _ = u.send_to(&buf[..n], peer);
                    }
                }
            }
        }
    });
}

fn echo(mut conn: std::net::TcpStream, stop: &AtomicBool) {
    let mut buf = [0u8; 1500];
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(POLL));
    while !stop.load(Ordering::Relaxed) {
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
