//! Is a connection met mid-stream HTTP/1, and which end are we?

use crate::protocol::Role;

const METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

/// The role of a connection first seen mid-stream, from the first bytes in
/// one direction: whoever sends a request line is the client.
pub fn sniff_role(ingress: bool, payload: &[u8]) -> Option<Role> {
    let request = METHODS.iter().any(|m| payload.starts_with(m));
    let response = payload.starts_with(b"HTTP/1.");
    match (request, response, ingress) {
        (true, _, true) | (_, true, false) => Some(Role::Server),
        (true, _, false) | (_, true, true) => Some(Role::Client),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_sniffed_from_start_lines() {
        assert_eq!(sniff_role(true, b"GET / HTTP/1.1"), Some(Role::Server));
        assert_eq!(sniff_role(false, b"GET / HTTP/1.1"), Some(Role::Client));
        assert_eq!(sniff_role(true, b"HTTP/1.1 200 OK"), Some(Role::Client));
        assert_eq!(sniff_role(true, b"\x16\x03\x01"), None);
    }
}
