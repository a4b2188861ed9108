//! Fuzzes the kernel's Kafka walks (`clew_common::kafka`) as userspace runs
//! them: arbitrary bytes as a Produce request (its size field made to fit,
//! its version from the input) must be rewritten consistently or left
//! alone, and as a Fetch response must be walked without a panic. A
//! rewritten request walks again with every record now carrying its
//! `traceparent`, and nothing left to inject.
#![no_main]

use clew_common::kafka::{rewrite_produce, scan_fetch, status, MAX_GROWTH, MAX_REQUEST};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    if input.len() < 8 {
        return;
    }
    let mut request = input.to_vec();
    let size = (request.len() - 4) as u32;
    request[..4].copy_from_slice(&size.to_be_bytes());
    let (trace, span) = ([7u8; 16], [9u8; 8]);
    let mut out = vec![0u8; request.len() + MAX_GROWTH];
    let (w, n) = rewrite_produce(&request, &mut out, &trace, &span, true);
    // (A request the rewrite grew past the bound is not walked again.)
    if n > 0 && n < MAX_REQUEST {
        let mut again = vec![0u8; n + MAX_GROWTH];
        let (w2, n2) = rewrite_produce(&out[..n], &mut again, &trace, &span, true);
        assert_eq!(w2.status, status::DONE, "a rewritten request does not walk");
        assert_eq!((w2.injected, n2), (0, 0), "a rewritten record lacks its traceparent");
        assert_eq!(w2.own, w.injected + w.own);
    }
    let version = u16::from_be_bytes([input[6], input[7]]) as u32 % 20;
    let _ = scan_fetch(input, version);
});
