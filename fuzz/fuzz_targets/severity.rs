//! Fuzzes the log severity parser: any line, no panic, and a severity it
//! finds is a valid SeverityNumber whose text the line shows (or, for a
//! JSON number level, that number).
#![no_main]

use clew::logs::severity;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    let Some(s) = severity::parse(line) else {
        return;
    };
    assert!((1..=24).contains(&s.number), "{s:?}");
    assert!(!s.text.is_empty());
    let text = s.text.as_bytes();
    let shown = line.windows(text.len()).any(|w| w == text);
    // A JSON name may come unescaped from an escaped string; a number is
    // written as the number.
    let json = line.iter().any(|&b| b == b'{');
    assert!(shown || json, "{s:?} not in {:?}", String::from_utf8_lossy(line));
});
