//! Fuzzes the `tracestate` checker the kernel and userspace share against
//! a plain reading of the W3C grammar (split on commas, trim, check each
//! member), and checks that the value it trims to lies inside the input.
#![no_main]

use clew_common::tracestate::{self, Check};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let mut c = Check::new();
    let mut stepped = true;
    for &b in input {
        stepped = c.step(b);
        if !stepped {
            break;
        }
    }
    let valid = stepped && c.finish();
    assert_eq!(valid, reference(input), "{:?}", String::from_utf8_lossy(input));
    assert_eq!(valid, tracestate::valid(input));
    if valid {
        let (at, n) = c.trimmed();
        let (at, n) = (at as usize, n as usize);
        assert!(at + n <= input.len() && n > 0);
        let ows = |b: &u8| *b == b' ' || *b == b'\t';
        assert!(input[..at].iter().all(ows) && input[at + n..].iter().all(ows));
    }
});

fn reference(value: &[u8]) -> bool {
    let Ok(value) = std::str::from_utf8(value) else {
        // Every valid value is ASCII.
        return false;
    };
    let members: Vec<&str> = value
        .split(',')
        .map(|m| m.trim_matches([' ', '\t']))
        .filter(|m| !m.is_empty())
        .collect();
    if members.is_empty() || members.len() > 32 {
        return false;
    }
    let mut keys = Vec::new();
    for m in &members {
        let Some((k, v)) = m.split_once('=') else {
            return false;
        };
        if !key(k) || !val(v) || keys.contains(&k) {
            return false;
        }
        keys.push(k);
    }
    members.join(",").len() <= 512
}

fn key(k: &str) -> bool {
    let rest = |s: &str| {
        s.bytes()
            .all(|c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/'))
    };
    let starts = |s: &str, digit: bool| {
        s.bytes()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || (digit && c.is_ascii_digit()))
    };
    match k.split_once('@') {
        None => k.len() <= 256 && starts(k, false) && rest(k),
        Some((tenant, system)) => {
            tenant.len() <= 241
                && system.len() <= 14
                && starts(tenant, true)
                && starts(system, false)
                && rest(tenant)
                && rest(system)
        }
    }
}

fn val(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 256
        && !v.ends_with(' ')
        && v.bytes()
            .all(|c| (0x20..=0x7e).contains(&c) && c != b',' && c != b'=')
}
