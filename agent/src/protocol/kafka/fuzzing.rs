//! Entry point for the fuzz target: any bytes, any split into reads, in
//! either direction, must give no panic and bounded memory.

use super::{Directory, Session};
use crate::{
    capture::Data,
    nesting::Nesting,
    protocol::Role,
    sampling::{Root, Sampler},
};

/// `data`'s first byte picks the role (bit 0) and whether records are lost
/// before each call whose length is a multiple of 7 (bit 1); the rest is
/// cut into calls whose lengths, directions and uncaptured tails come from
/// the bytes themselves.
pub fn session(data: &[u8]) {
    let Some((&first, mut rest)) = data.split_first() else {
        return;
    };
    let role = if first & 1 == 0 {
        Role::Client
    } else {
        Role::Server
    };
    let mut s = Session::new(role, None);
    let mut nesting = Nesting::new(Sampler::ParentBased(Root::AlwaysOn));
    let mut directory = Directory::default();
    let mut out = Vec::new();
    let mut ts = 0;
    while let Some((&ctl, tail)) = rest.split_first() {
        let n = usize::from(ctl >> 2).min(tail.len()).max(1).min(tail.len());
        let (chunk, next) = tail.split_at(n);
        // Bit 1: the call moved more than was captured.
        let total = chunk.len() + usize::from(ctl & 2) * 100;
        ts += 1;
        if first & 2 != 0 && n.is_multiple_of(7) {
            s.resume_after_loss();
        }
        let d = Data::synthetic(1, ctl & 1 == 0, chunk, total, ts);
        s.on_data(&d, &mut nesting, &mut directory, &mut out);
        rest = next;
    }
    s.on_close(ts + 1, &mut nesting, &mut directory, &mut out);
}
