//! Decoding of ring-buffer records (layouts in `clew-common`). Records are
//! borrowed, not copied: payload slices point into the ring buffer.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use clew_common::{
    dataflag, dir, kind,
    logs::{logflag, LogHeader},
    procflag, role, ConnEvent, CtxEvent, DataHeader, ProcEvent, SockAddr, TraceCtx,
};

#[derive(Debug)]
pub struct Data<'a> {
    pub conn_id: u64,
    pub tgid: u32,
    pub tid: u32,
    pub fd: u32,
    pub ts_ns: u64,
    pub ingress: bool,
    /// Plaintext from a TLS library call rather than bytes at the socket.
    pub tls: bool,
    /// Records of this connection were lost just before this one.
    pub after_loss: bool,
    /// Bytes the syscall moved; `payload` is the captured prefix of them.
    pub total: usize,
    pub payload: &'a [u8],
    /// The SERVER span the kernel decided for the request these bytes
    /// start, when it came inside the record.
    pub server_span: Option<TraceCtx>,
}

impl<'a> Data<'a> {
    /// What the kernel decided, as the separate context record says it.
    pub fn kernel_ctx(&self) -> Option<KernelCtx> {
        self.server_span.map(|ctx| KernelCtx {
            server: true,
            conn_id: self.conn_id,
            tid: self.tid,
            ts_ns: self.ts_ns,
            ctx,
            stream_id: 0,
        })
    }

    /// Bytes one syscall of thread 7 (process 1, fd 3) moved on connection
    /// `conn_id`, as the protocol tests and fuzz targets feed sessions;
    /// `total` beyond `payload.len()` is an uncaptured tail.
    pub fn synthetic(
        conn_id: u64,
        ingress: bool,
        payload: &'a [u8],
        total: usize,
        ts_ns: u64,
    ) -> Self {
        Data {
            conn_id,
            tgid: 1,
            tid: 7,
            fd: 3,
            ts_ns,
            ingress,
            tls: false,
            after_loss: false,
            total,
            payload,
            server_span: None,
        }
    }
}

#[derive(Debug)]
pub struct ConnOpen {
    pub conn_id: u64,
    pub tgid: u32,
    pub fd: u32,
    pub role: u8,
    pub ts_ns: u64,
    pub peer: Option<SocketAddr>,
    /// Our end of a connect() (IPv4, from sockops).
    pub local: Option<SocketAddr>,
}

/// Ids the kernel decided for a span (and, client side, injected).
#[derive(Debug)]
pub struct KernelCtx {
    pub server: bool,
    /// Server side only: the connection whose next request this is.
    pub conn_id: u64,
    pub tid: u32,
    pub ts_ns: u64,
    pub ctx: TraceCtx,
    /// Client side: the HTTP/2 stream the context was injected into; 0 for
    /// HTTP/1.
    pub stream_id: u32,
}

/// A write a thread made to a log stream while serving a span.
#[derive(Debug)]
pub struct LogWrite<'a> {
    pub tgid: u32,
    pub tid: u32,
    pub fd: u32,
    pub ts_ns: u64,
    /// The span the thread served, as the kernel named it.
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
    /// The kernel found this very file judged worth capturing.
    pub verified: bool,
    /// The file's inode number and device (0 for standard output and error).
    pub ino: u64,
    pub dev: u32,
    /// Bytes the write moved; `payload` is the captured prefix of them.
    pub total: usize,
    pub payload: &'a [u8],
}

#[derive(Debug)]
pub enum Event<'a> {
    Ctx(KernelCtx),
    Log(LogWrite<'a>),
    Data(Data<'a>),
    Open(ConnOpen),
    Close {
        conn_id: u64,
        ts_ns: u64,
        /// Records of the connection were lost since its last one.
        after_loss: bool,
    },
    /// `kernel_selected`: the kernel selected the process on this exec
    /// because it matched an `--exe` selector.
    Exec {
        tgid: u32,
        kernel_selected: bool,
    },
    Exit {
        tgid: u32,
    },
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("record of {0} bytes is too short")]
    Short(usize),
    #[error("unknown record kind {0}")]
    Kind(u32),
    #[error("data record claims {captured} captured bytes but carries {present}")]
    Length { captured: usize, present: usize },
}

fn read<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    // SAFETY: length checked; the types are repr(C) plain data and the read
    // is unaligned-safe.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const T) })
}

pub fn decode(bytes: &[u8]) -> Result<Event<'_>, DecodeError> {
    let k: u32 = read(bytes)?;
    match k {
        kind::DATA => {
            let h: DataHeader = read(bytes)?;
            let payload = &bytes[size_of::<DataHeader>()..];
            let captured = h.captured as usize;
            let trailer = if h.flags & dataflag::SERVER_SPAN != 0 {
                size_of::<TraceCtx>()
            } else {
                0
            };
            if payload.len() < captured + trailer {
                return Err(DecodeError::Length {
                    captured,
                    present: payload.len(),
                });
            }
            let server_span = (trailer != 0)
                .then(|| read::<TraceCtx>(&payload[captured..]))
                .transpose()?;
            Ok(Event::Data(Data {
                conn_id: h.conn_id,
                tgid: (h.pid_tgid >> 32) as u32,
                tid: h.pid_tgid as u32,
                fd: h.fd,
                ts_ns: h.ts_ns,
                ingress: h.direction == dir::INGRESS,
                tls: h.flags & dataflag::TLS != 0,
                after_loss: h.flags & dataflag::AFTER_LOSS != 0,
                total: (h.total as usize).max(captured),
                payload: &payload[..captured],
                server_span,
            }))
        }
        kind::CONN_OPEN => {
            let c: ConnEvent = read(bytes)?;
            Ok(Event::Open(ConnOpen {
                conn_id: c.conn_id,
                tgid: (c.pid_tgid >> 32) as u32,
                fd: c.fd,
                role: c.role,
                ts_ns: c.ts_ns,
                peer: sockaddr(&c.peer),
                local: sockaddr(&c.local),
            }))
        }
        kind::CONN_CLOSE => {
            let c: ConnEvent = read(bytes)?;
            Ok(Event::Close {
                conn_id: c.conn_id,
                ts_ns: c.ts_ns,
                after_loss: c.flags & dataflag::AFTER_LOSS != 0,
            })
        }
        kind::TRACE_CTX => {
            let c: CtxEvent = read(bytes)?;
            Ok(Event::Ctx(KernelCtx {
                server: c.role == role::ACCEPTED,
                conn_id: c.conn_id,
                tid: c.pid_tgid as u32,
                ts_ns: c.ts_ns,
                ctx: c.ctx,
                stream_id: c.stream_id,
            }))
        }
        kind::PROC_EXEC => {
            let p = read::<ProcEvent>(bytes)?;
            Ok(Event::Exec {
                tgid: p.tgid,
                kernel_selected: p.flags & procflag::EXE_SELECTED != 0,
            })
        }
        kind::LOG => {
            let h: LogHeader = read(bytes)?;
            let payload = &bytes[size_of::<LogHeader>()..];
            let captured = h.captured as usize;
            if payload.len() < captured {
                return Err(DecodeError::Length {
                    captured,
                    present: payload.len(),
                });
            }
            Ok(Event::Log(LogWrite {
                tgid: (h.pid_tgid >> 32) as u32,
                tid: h.pid_tgid as u32,
                fd: h.fd,
                ts_ns: h.ts_ns,
                trace_id: h.trace_id,
                span_id: h.span_id,
                sampled: h.flags & logflag::SAMPLED != 0,
                verified: h.flags & logflag::VERIFIED != 0,
                ino: h.ino,
                dev: h.dev,
                total: (h.total as usize).max(captured),
                payload: &payload[..captured],
            }))
        }
        kind::PROC_EXIT => Ok(Event::Exit {
            tgid: read::<ProcEvent>(bytes)?.tgid,
        }),
        other => Err(DecodeError::Kind(other)),
    }
}

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

fn sockaddr(a: &SockAddr) -> Option<SocketAddr> {
    if a.family != AF_INET && a.family != AF_INET6 {
        return None;
    }
    let v6 = Ipv6Addr::from(a.addr);
    let ip = match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    };
    Some(SocketAddr::new(ip, a.port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        unsafe { std::slice::from_raw_parts(v as *const T as *const u8, size_of::<T>()) }.to_vec()
    }

    /// A record of 100 bytes moved, 3 captured, on connection 7 (fd 5 of
    /// thread 43 of process 42, at 99 ns).
    fn header(direction: u8, flags: u8) -> DataHeader {
        DataHeader {
            kind: kind::DATA,
            direction,
            flags,
            _pad: [0; 2],
            conn_id: 7,
            pid_tgid: (42u64 << 32) | 43,
            ts_ns: 99,
            total: 100,
            captured: 3,
            fd: 5,
            syscall: 1,
        }
    }

    #[test]
    fn data_record_round_trips() {
        let mut b = bytes_of(&header(dir::EGRESS, 0));
        b.extend_from_slice(b"GET");
        let Event::Data(d) = decode(&b).unwrap() else {
            panic!()
        };
        assert_eq!(
            (d.tgid, d.tid, d.fd, d.total, d.ingress),
            (42, 43, 5, 100, false)
        );
        assert_eq!(d.payload, b"GET");
        assert!(d.kernel_ctx().is_none());
    }

    #[test]
    fn a_server_span_rides_after_the_payload() {
        let h = header(dir::INGRESS, dataflag::SERVER_SPAN);
        let ctx = TraceCtx {
            trace_id: [1; 16],
            span_id: [2; 8],
            flags: clew_common::ctxflag::SAMPLED,
            ..Default::default()
        };
        let mut b = bytes_of(&h);
        b.extend_from_slice(b"GET");
        b.extend_from_slice(&bytes_of(&ctx));
        let Event::Data(d) = decode(&b).unwrap() else {
            panic!()
        };
        assert_eq!((d.payload, d.total), (&b"GET"[..], 100));
        let k = d.kernel_ctx().unwrap();
        assert_eq!((k.server, k.conn_id, k.tid, k.ts_ns), (true, 7, 43, 99));
        assert_eq!((k.ctx, k.stream_id), (ctx, 0));
        b.pop();
        assert!(matches!(decode(&b), Err(DecodeError::Length { .. })));
    }

    #[test]
    fn log_record_round_trips() {
        let h = LogHeader {
            kind: kind::LOG,
            flags: logflag::SAMPLED,
            pid_tgid: (42u64 << 32) | 43,
            ts_ns: 99,
            trace_id: [1; 16],
            span_id: [2; 8],
            ino: 77,
            dev: 8,
            fd: 5,
            total: 100,
            captured: 4,
        };
        let mut b = bytes_of(&h);
        b.extend_from_slice(
            b"hi
!",
        );
        let Event::Log(w) = decode(&b).unwrap() else {
            panic!()
        };
        assert_eq!(
            (w.tgid, w.tid, w.fd, w.total, w.ino, w.dev),
            (42, 43, 5, 100, 77, 8)
        );
        assert!(w.sampled && !w.verified);
        assert_eq!((w.trace_id, w.span_id), ([1; 16], [2; 8]));
        assert_eq!(w.payload, b"hi\n!");
        b.truncate(b.len() - 1);
        assert!(matches!(decode(&b), Err(DecodeError::Length { .. })));
    }

    #[test]
    fn truncated_and_unknown_records_are_errors() {
        assert_eq!(decode(&[1, 0]).unwrap_err(), DecodeError::Short(2));
        assert_eq!(
            decode(&[9, 0, 0, 0, 0, 0, 0, 0]).unwrap_err(),
            DecodeError::Kind(9)
        );
        let h = DataHeader {
            kind: kind::DATA,
            direction: 0,
            flags: 0,
            _pad: [0; 2],
            conn_id: 0,
            pid_tgid: 0,
            ts_ns: 0,
            total: 10,
            captured: 10,
            fd: 0,
            syscall: 0,
        };
        assert!(matches!(
            decode(&bytes_of(&h)),
            Err(DecodeError::Length { .. })
        ));
    }

    #[test]
    fn ipv4_peers_are_unmapped() {
        let mut a = SockAddr {
            family: AF_INET,
            port: 8080,
            ..Default::default()
        };
        a.addr[10] = 0xff;
        a.addr[11] = 0xff;
        a.addr[12..].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(sockaddr(&a), Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(sockaddr(&SockAddr::default()), None);
    }
}
