//! Fuzzes the HTTP/2 session (framer, HPACK, stream pairing): arbitrary
//! bytes cut into arbitrary syscall chunks, some partly uncaptured, fed to
//! both directions of server and client sessions.
#![no_main]

use clew::{
    capture::Data,
    nesting::Nesting,
    protocol::{http2::Session, Role},
    sampling::{Root, Sampler},
};
use libfuzzer_sys::fuzz_target;

/// What a valid connection opens with, so the fuzzer starts past detection.
const HELLO: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
const SETTINGS: &[u8] = b"\0\0\0\x04\0\0\0\0\0";

fuzz_target!(|input: &[u8]| {
    for role in [Role::Server, Role::Client] {
        for upgraded in [false, true] {
            run(role, upgraded, input);
        }
    }
});

/// Each control byte says how many data bytes follow as one chunk, which
/// direction carries it, and whether the syscall moved more than was captured.
fn run(role: Role, upgraded: bool, mut input: &[u8]) {
    let mut s = if upgraded {
        Session::after_upgrade(role, None)
    } else {
        Session::new(role, None)
    };
    let mut n = Nesting::new(Sampler::ParentBased(Root::AlwaysOn));
    let mut out = Vec::new();
    let requests_in = role == Role::Server;
    feed(&mut s, &mut n, &mut out, requests_in, HELLO, HELLO.len(), 0);
    feed(&mut s, &mut n, &mut out, !requests_in, SETTINGS, SETTINGS.len(), 1);
    let mut ts = 2;
    while let Some((&control, rest)) = input.split_first() {
        let len = usize::from(control & 0x1f).min(rest.len());
        let (chunk, rest) = rest.split_at(len);
        input = rest;
        let ingress = control & 0x20 != 0;
        let missing = match control >> 6 {
            0 | 1 => 0,
            2 => len * 3 + 1,
            _ => 1 << (len % 24),
        };
        feed(&mut s, &mut n, &mut out, ingress, chunk, len + missing, ts);
        ts += 1;
        for x in out.drain(..) {
            assert!(x.end_ns >= x.start_ns);
        }
    }
    s.on_close(ts, &mut n, &mut out);
}

fn feed(
    s: &mut Session,
    n: &mut Nesting,
    out: &mut Vec<clew::protocol::http2::Exchange>,
    ingress: bool,
    payload: &[u8],
    total: usize,
    ts_ns: u64,
) {
    let d = Data {
        conn_id: 1,
        tgid: 1,
        tid: 1,
        fd: 3,
        ts_ns,
        ingress,
        tls: false,
        total,
        payload,
    };
    s.on_data(&d, n, out);
}
