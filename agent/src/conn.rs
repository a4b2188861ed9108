//! The connection table: one entry per traced TCP connection, keyed by the
//! kernel's connection id, holding its addresses and protocol session.

use std::net::SocketAddr;

use foldhash::HashMap;

use crate::protocol::{ConnFacts, Protocol, Role, Session};

pub struct Conn {
    pub tgid: u32,
    pub fd: u32,
    pub facts: ConnFacts,
    /// Known from the syscall that opened it, or sniffed from the first bytes.
    pub role: Option<Role>,
    /// For a connection open before Clew started: which end the process
    /// is, from its sockets (see `established_sockets`), so that an HTTP/2
    /// or Kafka stream met mid-stream can be followed.
    pub side: Option<Role>,
    pub session: Option<Session>,
    pub last_ns: u64,
}

impl Conn {
    pub fn new(tgid: u32, fd: u32, facts: ConnFacts, role: Option<Role>, now_ns: u64) -> Self {
        Conn {
            tgid,
            fd,
            facts,
            role,
            side: None,
            session: None,
            last_ns: now_ns,
        }
    }

    /// The protocol session, detected from the connection's first captured
    /// bytes; `None` when they belong to no protocol Clew parses.
    pub fn session(&mut self, ingress: bool, payload: &[u8]) -> Option<&mut Session> {
        if self.session.is_none() {
            let facts = self.facts;
            let endpoint = |role| match role {
                Role::Client => facts.local,
                Role::Server => facts.peer,
            };
            let mid_stream = || Session::mid_stream(self.side?, ingress, payload, endpoint);
            let s = Session::detect(self.role, ingress, payload, endpoint)
                .or_else(|| self.role.is_none().then(mid_stream).flatten())?;
            self.role = Some(s.role());
            self.session = Some(s);
        }
        self.session.as_mut()
    }

    /// Records of the connection were lost while it stays open: its
    /// session resumes (HTTP/2, Kafka), or starts over (HTTP/1, see
    /// `restart_after_loss`). Returns the protocol and whether it resumed.
    pub fn resume_after_loss(&mut self) -> Option<(Protocol, bool)> {
        let s = self.session.as_mut()?;
        if s.resume_after_loss() {
            return Some((s.protocol(), true));
        }
        self.restart_after_loss().map(|p| (p, false))
    }

    /// Records of the connection were lost: forget its protocol state, so
    /// the next bytes are treated as a connection first met mid-stream
    /// (HTTP/1 resynchronises on a start line; the others cannot be picked
    /// up mid-stream, and their connection stops being captured). Returns
    /// the protocol whose state was lost.
    pub fn restart_after_loss(&mut self) -> Option<Protocol> {
        let lost = self.session.take()?.protocol();
        self.role = None;
        Some(lost)
    }
}

/// Bounded: connections whose close we never saw (records lost under load)
/// are evicted, least recently active first.
pub struct ConnTable {
    conns: HashMap<u64, Conn>,
    max: usize,
}

impl ConnTable {
    pub fn new(max: usize) -> Self {
        ConnTable {
            conns: HashMap::default(),
            max,
        }
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Adds a connection, evicting the idlest when full; returns evicted ones
    /// so the caller can stop capturing them.
    pub fn insert(&mut self, id: u64, conn: Conn) -> Option<(u64, Conn)> {
        let evicted = if self.conns.len() >= self.max && !self.conns.contains_key(&id) {
            let idlest = self
                .conns
                .iter()
                .min_by_key(|(_, c)| c.last_ns)
                .map(|(id, _)| *id);
            idlest.and_then(|i| self.conns.remove_entry(&i))
        } else {
            None
        };
        self.conns.insert(id, conn);
        evicted
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut Conn> {
        self.conns.get_mut(&id)
    }

    pub fn remove(&mut self, id: u64) -> Option<Conn> {
        self.conns.remove(&id)
    }

    /// Drops every connection of a process that exited.
    pub fn remove_process(&mut self, tgid: u32) -> Vec<(u64, Conn)> {
        let ids: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.tgid == tgid)
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter()
            .filter_map(|id| self.conns.remove_entry(&id))
            .collect()
    }
}

impl ConnFacts {
    /// Addresses from /proc, for connections whose opening syscall did not
    /// reveal them (unknown when the socket is already gone).
    pub fn from_proc(pid: u32, fd: u32) -> Self {
        match socket_addrs(pid, fd) {
            Some((local, peer)) => ConnFacts {
                peer: Some(peer),
                local: Some(local),
                tls: false,
            },
            None => ConnFacts {
                peer: None,
                local: None,
                tls: false,
            },
        }
    }
}

fn socket_addrs(pid: u32, fd: u32) -> Option<(SocketAddr, SocketAddr)> {
    let p = procfs::process::Process::new(pid as i32).ok()?;
    let inode = match p.fd_from_fd(fd as i32).ok()?.target {
        procfs::process::FDTarget::Socket(i) => i,
        _ => return None,
    };
    let v4 = p.tcp().ok().into_iter().flatten();
    let v6 = p.tcp6().ok().into_iter().flatten();
    // A dual-stack socket lists IPv4 peers IPv4-mapped: report them as the
    // kernel path does, as IPv4.
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    v4.chain(v6)
        .find(|e| e.inode == inode)
        .map(|e| (canonical(e.local_address), canonical(e.remote_address)))
}

/// Established TCP sockets a process holds: (fd, local, remote, the
/// process's side). The process accepted a connection whose local port is
/// one its network namespace listens on; it opened the others (Linux gives
/// no listening port to an outgoing connection).
pub fn established_sockets(pid: u32) -> Vec<(u32, SocketAddr, SocketAddr, Role)> {
    let Ok(p) = procfs::process::Process::new(pid as i32) else {
        return Vec::new();
    };
    let entries: Vec<_> = p
        .tcp()
        .into_iter()
        .flatten()
        .chain(p.tcp6().into_iter().flatten())
        .collect();
    let Ok(fds) = p.fd() else {
        return Vec::new();
    };
    let side = |local: SocketAddr| {
        let listening = entries.iter().any(|e| {
            e.state == procfs::net::TcpState::Listen && e.local_address.port() == local.port()
        });
        if listening {
            Role::Server
        } else {
            Role::Client
        }
    };
    fds.flatten()
        .filter_map(|fd| match fd.target {
            procfs::process::FDTarget::Socket(inode) => entries
                .iter()
                .find(|e| e.inode == inode && e.state == procfs::net::TcpState::Established)
                .map(|e| {
                    let local = e.local_address;
                    (fd.fd as u32, local, e.remote_address, side(local))
                }),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(tgid: u32, last_ns: u64) -> Conn {
        let facts = ConnFacts {
            peer: None,
            local: None,
            tls: false,
        };
        Conn::new(tgid, 3, facts, None, last_ns)
    }

    #[test]
    fn full_table_evicts_the_idlest() {
        let mut t = ConnTable::new(2);
        assert!(t.insert(1, conn(1, 10)).is_none());
        assert!(t.insert(2, conn(1, 5)).is_none());
        let (id, _) = t.insert(3, conn(1, 20)).unwrap();
        assert_eq!(id, 2);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn role_is_sniffed_from_the_first_bytes() {
        let mut c = conn(1, 0);
        assert!(c.session(true, b"\x16\x03\x01").is_none());
        assert_eq!(
            c.session(false, b"GET / HTTP/1.1\r\n").unwrap().role(),
            Role::Client
        );
    }

    #[test]
    fn a_loss_restarts_the_connection_as_met_mid_stream() {
        let mut c = conn(1, 0);
        c.role = Some(Role::Server);
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
        assert!(c.session(true, preface).is_some());
        assert_eq!(c.restart_after_loss(), Some(Protocol::Http2));
        // HTTP/2 cannot be picked up mid-stream; HTTP/1 can.
        assert!(c.session(true, b"\0\0\x04\x01\x04\0\0\0\x03").is_none());
        assert!(c.session(true, b"GET / HTTP/1.1\r\n\r\n").is_some());
        assert_eq!(c.restart_after_loss(), Some(Protocol::Http1));
        assert_eq!(c.restart_after_loss(), None);
    }

    /// A connection open before Clew started: HTTP/1 is sniffed from a
    /// start line; Kafka requests and HTTP/2 frames are followed when the
    /// process's side of the connection is known.
    #[test]
    fn connections_met_mid_stream() {
        let headers = b"\0\0\x01\x01\x05\0\0\0\x03\x82";
        let window = b"\0\0\x04\x08\0\0\0\0\0\0\0\x10\0";
        let frames = [&headers[..], &window[..]].concat();
        let mut c = conn(1, 0);
        assert!(c.session(true, &frames).is_none());
        let mut c = conn(1, 0);
        c.side = Some(Role::Server);
        let s = c.session(true, &frames).unwrap();
        assert_eq!((s.protocol(), s.role()), (Protocol::Http2, Role::Server));
        let mut c = conn(1, 0);
        c.side = Some(Role::Server);
        assert_eq!(
            c.session(false, b"HTTP/1.1 200 OK\r\n\r\n")
                .unwrap()
                .protocol(),
            Protocol::Http1
        );
        let mut c = conn(1, 0);
        c.side = Some(Role::Client);
        assert!(c
            .session(true, b"\x16\x03\x01\x02\0\x01\0\x01\xfc\x03\x03")
            .is_none());
        // A Kafka client's request (Metadata v1, client id "p").
        let request = b"\0\0\0\x0f\0\x03\0\x01\0\0\0\x07\0\x01p\xff\xff\xff\xff";
        let mut c = conn(1, 0);
        c.side = Some(Role::Client);
        let s = c.session(false, request).unwrap();
        assert_eq!((s.protocol(), s.role()), (Protocol::Kafka, Role::Client));
        // The same bytes read by a client are no request of its own.
        let mut c = conn(1, 0);
        c.side = Some(Role::Client);
        let read = c.session(true, request).map(|s| s.protocol());
        assert_ne!(read, Some(Protocol::Kafka));
    }

    #[test]
    fn http2_resumes_after_a_loss_and_http1_starts_over() {
        let mut c = conn(1, 0);
        c.role = Some(Role::Server);
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
        assert!(c.session(true, preface).is_some());
        assert_eq!(c.resume_after_loss(), Some((Protocol::Http2, true)));
        assert_eq!(
            c.session.as_ref().map(|s| s.protocol()),
            Some(Protocol::Http2)
        );
        let mut c = conn(1, 0);
        c.role = Some(Role::Server);
        assert!(c.session(true, b"GET / HTTP/1.1\r\n\r\n").is_some());
        assert_eq!(c.resume_after_loss(), Some((Protocol::Http1, false)));
        assert!(c.session.is_none());
        assert_eq!(c.resume_after_loss(), None);
    }

    #[test]
    fn process_exit_drops_its_connections() {
        let mut t = ConnTable::new(8);
        t.insert(1, conn(10, 0));
        t.insert(2, conn(11, 0));
        assert_eq!(t.remove_process(10).len(), 1);
        assert_eq!(t.len(), 1);
    }
}
