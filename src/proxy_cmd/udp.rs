//! UDP routes: datagrams relayed between clients and an upstream, a session per client.
//!
//! A datagram from a client the route has no session for opens one: a socket of its own
//! towards the upstream (so replies find their client, as a NAT's port mapping does), and a
//! connection in the tracker opened with that datagram's bytes, keyed as the kernel keys the
//! client's leg (client address to the listening address; bind a route to a specific address
//! rather than a wildcard, so that this is the address the client sent to). Every datagram
//! after it, either way, is one `transfer` of its size: one datagram in the tracker too, so
//! the counters are the kernel's own.
//!
//! UDP has no close: a session ends when it has been idle for the idle time (no datagram
//! either way), and its entry stays until it times out, as the kernel's does. The idle time is
//! at most the tracker's `nf_conntrack_udp_timeout`, so the entry always outlives the
//! session, and a datagram never finds the session alive but its entry gone. A client that
//! comes back after its session ended gets a new one; its first datagram finds the old entry
//! if it is still there, exactly as the kernel's lookup would.
//!
//! A datagram that finds its session's queue full (an upstream slower than its clients) is
//! dropped and counted, as a full socket buffer would drop it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use super::{Counts, Direction, Handle, Legs, Opened, Protocol, Refusal, Request};

/// Datagrams waiting for one session's upstream socket.
const SESSION_QUEUE: usize = 1024;
/// The largest datagram relayed: what a UDP datagram can carry.
const MAX_DATAGRAM: usize = 65_535;

/// One route's setup.
pub(super) struct UdpRoute {
    pub socket: UdpSocket,
    pub upstream: SocketAddr,
    pub zone: u16,
    /// How long a session may stay without a datagram either way.
    pub idle: Duration,
}

/// A live session, as the route's loop knows it.
struct Session {
    key: u64,
    to_upstream: mpsc::Sender<Vec<u8>>,
}

/// What every session of a route shares.
#[derive(Clone)]
struct Shared {
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    upstream: SocketAddr,
    zone: u16,
    idle: Duration,
    handle: Option<Handle>,
    counts: Arc<Counts>,
    /// Where a session says it ended: its client and key.
    ended: mpsc::UnboundedSender<(SocketAddr, u64)>,
    stop: watch::Receiver<bool>,
}

/// Relays one route until the stop is given; then ends every session.
pub(super) async fn serve(
    route: UdpRoute,
    handle: Option<Handle>,
    counts: Arc<Counts>,
    stop: watch::Receiver<bool>,
) {
    let UdpRoute {
        socket,
        upstream,
        zone,
        idle,
    } = route;
    let Ok(local) = socket.local_addr() else {
        return;
    };
    let (ended, mut ended_rx) = mpsc::unbounded_channel();
    let shared = Shared {
        socket: Arc::new(socket),
        local,
        upstream,
        zone,
        idle,
        handle,
        counts,
        ended,
        stop,
    };
    let mut sessions: HashMap<SocketAddr, Session> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut stop = shared.stop.clone();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some((peer, key)) = ended_rx.recv() => {
                if sessions.get(&peer).is_some_and(|s| s.key == key) {
                    sessions.remove(&peer);
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            received = shared.socket.recv_from(&mut buf) => {
                let Ok((n, peer)) = received else { continue };
                let mut datagram = buf[..n].to_vec();
                if let Some(session) = sessions.get(&peer) {
                    match session.to_upstream.try_send(datagram) {
                        Ok(()) => continue,
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            shared.counts.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        // The session ended meanwhile: this datagram starts the next one.
                        Err(mpsc::error::TrySendError::Closed(d)) => {
                            sessions.remove(&peer);
                            datagram = d;
                        }
                    }
                }
                if let Some(session) = shared.open(peer, datagram, &mut tasks).await {
                    sessions.insert(peer, session);
                }
            }
        }
    }
    // The sessions end with the route (each sees the stop): each forgets its connection.
    drop(sessions);
    while tasks.join_next().await.is_some() {}
}

impl Shared {
    /// A new client's first datagram: opens its connection in the tracker (refused over a
    /// limit: the datagram is dropped and the refusal logged) and starts its session.
    async fn open(
        &self,
        peer: SocketAddr,
        first: Vec<u8>,
        tasks: &mut tokio::task::JoinSet<()>,
    ) -> Option<Session> {
        let key = self.counts.accepted.fetch_add(1, Ordering::Relaxed);
        let legs = Legs {
            protocol: Protocol::Udp,
            client: peer,
            local: self.local,
        };
        let first_bytes = first.len() as u64;
        let tracked = match &self.handle {
            Some(handle) => match handle.open(key, self.zone, legs, first_bytes).await {
                Opened::Tracked => true,
                Opened::Untracked => false,
                Opened::Refused(why) => {
                    match why {
                        Refusal::PerSource { .. } => &self.counts.refused_source,
                        Refusal::PerZone { .. } => &self.counts.refused_zone,
                    }
                    .fetch_add(1, Ordering::Relaxed);
                    eprintln!(
                        "ctwasm proxy: refused udp {peer} (zone {}): {why}",
                        self.zone
                    );
                    return None;
                }
            },
            None => false,
        };
        // The counted first datagram is the one sent: the session's socket comes next, and
        // if it cannot be made the connection is forgotten (its entry times out).
        let upstream = match self.connect().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!(
                    "ctwasm proxy: udp {peer}: upstream {}: {e}; its datagrams are dropped",
                    self.upstream
                );
                self.counts.upstream_failed.fetch_add(1, Ordering::Relaxed);
                self.forget(tracked, key);
                return None;
            }
        };
        let (to_upstream, queue) = mpsc::channel(SESSION_QUEUE);
        // Room for one is there: the channel is new.
        let _ = to_upstream.try_send(first);
        tasks.spawn(self.clone().relay(peer, key, tracked, upstream, queue));
        Some(Session { key, to_upstream })
    }

    /// The session's own socket, connected to the upstream.
    async fn connect(&self) -> std::io::Result<UdpSocket> {
        let any: SocketAddr = match self.upstream {
            SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(any).await?;
        socket.connect(self.upstream).await?;
        Ok(socket)
    }

    /// Relays one session's datagrams both ways until it has been idle for the idle time or
    /// the stop is given; counts each in the tracker (the first one was counted by the open).
    async fn relay(
        self,
        peer: SocketAddr,
        key: u64,
        tracked: bool,
        upstream: UdpSocket,
        mut queue: mpsc::Receiver<Vec<u8>>,
    ) {
        let mut stop = self.stop.clone();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut first = true;
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = tokio::time::sleep(self.idle) => break,
                datagram = queue.recv() => {
                    let Some(datagram) = datagram else { break };
                    if upstream.send(&datagram).await.is_err() {
                        // An ICMP error from the upstream (refused) fails the send; the
                        // datagram is lost on the way, as the kernel would have seen it.
                        self.counts.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    self.count(tracked && !first, key, Direction::Original, datagram.len());
                    first = false;
                }
                received = upstream.recv(&mut buf) => {
                    let Ok(n) = received else { continue };
                    if self.socket.send_to(&buf[..n], peer).await.is_ok() {
                        self.count(tracked, key, Direction::Reply, n);
                    }
                }
            }
        }
        // No more datagrams for this session; what is still queued is dropped.
        queue.close();
        self.forget(tracked, key);
        let _ = self.ended.send((peer, key));
    }

    /// Counts one relayed datagram.
    fn count(&self, tracked: bool, key: u64, dir: Direction, bytes: usize) {
        let bytes = bytes as u64;
        match dir {
            Direction::Original => &self.counts.bytes_to_upstream,
            Direction::Reply => &self.counts.bytes_to_client,
        }
        .fetch_add(bytes, Ordering::Relaxed);
        if let (true, Some(handle)) = (tracked, &self.handle) {
            handle.send(Request::Transfer { key, dir, bytes });
        }
    }

    fn forget(&self, tracked: bool, key: u64) {
        if let (true, Some(handle)) = (tracked, &self.handle) {
            handle.send(Request::Forget { key });
        }
    }
}
