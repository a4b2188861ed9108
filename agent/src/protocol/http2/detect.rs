//! Recognising HTTP/2 from a connection's first bytes. Each check answers
//! `Some(true)` (HTTP/2), `Some(false)` (not), or `None` (the bytes so far
//! are a prefix of what HTTP/2 would send: wait for more).

use super::frame::{FrameHeader, HEADER_LEN, SETTINGS};

/// What a client sends first on an HTTP/2 connection (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// SETTINGS frames longer than this are not what a peer opens with
/// (the protocol defines seven settings; a few unknown ones are tolerated).
const MAX_OPENING_SETTINGS: u32 = 16 * 6;

/// A client's first bytes: the preface, then a SETTINGS frame. A preface
/// alone is enough: some clients write the SETTINGS frame separately.
pub fn is_client_preface(first: &[u8]) -> Option<bool> {
    let n = first.len().min(PREFACE.len());
    if first[..n] != PREFACE[..n] {
        return Some(false);
    }
    if first.len() < PREFACE.len() {
        return None;
    }
    match opening_settings(&first[PREFACE.len()..]) {
        // Nothing after the preface in this chunk.
        None => Some(true),
        known => known,
    }
}

/// A server's first bytes: servers may write their SETTINGS frame before
/// reading the client's preface, so it can be the first thing a server
/// connection sends.
pub fn is_server_settings(first: &[u8]) -> Option<bool> {
    opening_settings(first)
}

/// A SETTINGS frame without ACK on stream 0, of a plausible length; as
/// much of its header as `bytes` holds is checked.
fn opening_settings(bytes: &[u8]) -> Option<bool> {
    let mut header = [0u8; HEADER_LEN];
    let n = bytes.len().min(HEADER_LEN);
    header[..n].copy_from_slice(&bytes[..n]);
    let h = FrameHeader::parse(&header);
    let plausible = [
        // Length (3 bytes): a whole number of 6-byte settings.
        n < 3 || (h.len.is_multiple_of(6) && h.len <= MAX_OPENING_SETTINGS),
        n < 4 || h.kind == SETTINGS,
        n < 5 || h.flags == 0,
        // The stream id: zero, however many of its bytes are here.
        header[5..n.max(5)].iter().all(|b| *b == 0),
    ];
    match (plausible.iter().all(|p| *p), n == HEADER_LEN) {
        (false, _) => Some(false),
        (true, true) => Some(true),
        (true, false) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS_FRAME: &[u8] = &[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];

    #[test]
    fn client_preface_is_recognised_in_pieces() {
        let mut all = PREFACE.to_vec();
        all.extend_from_slice(SETTINGS_FRAME);
        assert_eq!(is_client_preface(&all), Some(true));
        assert_eq!(is_client_preface(PREFACE), Some(true));
        assert_eq!(is_client_preface(&PREFACE[..10]), None);
        assert_eq!(is_client_preface(b""), None);
        assert_eq!(is_client_preface(b"PRI * HTTP/1.1"), Some(false));
        assert_eq!(is_client_preface(b"GET / HTTP/1.1\r\n"), Some(false));
        let mut ping_first = PREFACE.to_vec();
        ping_first.extend_from_slice(&[0, 0, 8, 6, 0, 0, 0, 0, 0]);
        assert_eq!(is_client_preface(&ping_first), Some(false));
    }

    #[test]
    fn server_settings_are_recognised() {
        assert_eq!(is_server_settings(SETTINGS_FRAME), Some(true));
        assert_eq!(is_server_settings(&[0; 9][..]), Some(false));
        assert_eq!(is_server_settings(&[0, 0, 0, 4, 0, 0, 0, 0, 0]), Some(true));
        assert_eq!(is_server_settings(&SETTINGS_FRAME[..4]), None);
        // An ACK is never first.
        assert_eq!(
            is_server_settings(&[0, 0, 0, 4, 1, 0, 0, 0, 0]),
            Some(false)
        );
        assert_eq!(is_server_settings(b"HTTP/1.1 200 OK"), Some(false));
        assert_eq!(is_server_settings(&[0, 0, 7]), Some(false));
    }
}
