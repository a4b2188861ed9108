//! Entry points of the HTTP/2 fuzz targets, shared with a bounded random
//! run in the unit tests so CI exercises them on every build (the
//! coverage-guided runs live in `fuzz/`, see the README).

use crate::{
    capture::Data,
    nesting::Nesting,
    protocol::{
        http2::{Exchange, HeaderDecoder, Session},
        Role,
    },
    sampling::{Root, Sampler},
};

/// What a valid connection opens with, so inputs start past detection.
const HELLO: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
const SETTINGS: &[u8] = b"\0\0\0\x04\0\0\0\0\0";

/// Arbitrary bytes cut into syscall chunks, some partly uncaptured, fed to
/// both directions of server and client sessions, fresh and upgraded.
pub fn session_input(input: &[u8]) {
    for role in [Role::Server, Role::Client] {
        for upgraded in [false, true] {
            run(role, upgraded, input);
        }
    }
}

/// Arbitrary header blocks, in order, against one dynamic table, as a
/// connection's direction would send them (after an error, as after lost
/// records). The first byte of each block says how long it is.
pub fn hpack_input(input: &[u8]) {
    let mut d = HeaderDecoder::default();
    let mut rest = input;
    while let Some((&len, tail)) = rest.split_first() {
        let (block, tail) = tail.split_at(usize::from(len).min(tail.len()));
        rest = tail;
        if d.decode(block).is_err() {
            // The table is unknown now: go on as after a loss, which
            // exercises the partly known table.
            d.forget();
        }
    }
}

/// Each control byte says how many data bytes follow as one chunk, which
/// direction carries it, whether the syscall moved more than was captured,
/// and whether records were lost before it.
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
    feed(
        &mut s,
        &mut n,
        &mut out,
        !requests_in,
        SETTINGS,
        SETTINGS.len(),
        1,
    );
    let mut ts = 2;
    while let Some((&control, rest)) = input.split_first() {
        let len = usize::from(control & 0x1f).min(rest.len());
        let (chunk, rest) = rest.split_at(len);
        input = rest;
        let ingress = control & 0x20 != 0;
        if control >> 6 == 1 {
            // Records were lost before this chunk.
            s.resume_after_loss();
        }
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
    out: &mut Vec<Exchange>,
    ingress: bool,
    payload: &[u8],
    total: usize,
    ts_ns: u64,
) {
    s.on_data(&Data::synthetic(1, ingress, payload, total, ts_ns), n, out);
}

#[cfg(test)]
mod tests {
    use rand::{rngs::StdRng, Rng, SeedableRng};

    use super::*;

    /// Random frames with plausible headers (so inputs get past framing
    /// and into HPACK and stream pairing), mutated: a bounded fuzz run.
    fn random_input(rng: &mut StdRng) -> Vec<u8> {
        let mut v = Vec::new();
        for _ in 0..rng.random_range(1..12) {
            let len: usize = rng.random_range(0..40);
            let mut frame = vec![0, 0, len as u8, rng.random_range(0..11), rng.random()];
            frame.extend_from_slice(&[0, 0, 0, rng.random_range(0..8)]);
            frame.extend((0..len).map(|_| rng.random::<u8>()));
            // Control byte: whole frame in one chunk, random direction.
            for piece in frame.chunks(31) {
                v.push(piece.len() as u8 | (rng.random::<u8>() & 0xe0));
                v.extend_from_slice(piece);
            }
        }
        if rng.random_bool(0.2) {
            let at = rng.random_range(0..v.len());
            v[at] = rng.random();
        }
        v
    }

    #[test]
    fn random_sessions_never_panic() {
        let mut rng = StdRng::seed_from_u64(0x6832);
        for _ in 0..3_000 {
            session_input(&random_input(&mut rng));
        }
    }

    #[test]
    fn random_header_blocks_never_panic() {
        let mut rng = StdRng::seed_from_u64(0x6870);
        for _ in 0..20_000 {
            let len = rng.random_range(0..64);
            let input: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            hpack_input(&input);
        }
    }
}
