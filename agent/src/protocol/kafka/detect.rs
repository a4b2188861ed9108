//! Is a connection Kafka? Its first message is a request: a size, an API
//! key and a version that API has, a correlation id, and a client id
//! string that fits in the message.

use kafka_protocol::messages::ApiKey;

/// Smallest request: key, version, correlation id, client id length.
const MIN_REQUEST: u32 = 10;
/// Larger than any request a client sends unprompted.
const MAX_REQUEST: u32 = 256 << 20;

/// The first bytes a client wrote (or a server read) start a Kafka
/// request: a whole header, or only a plausible size, as servers that
/// read the size before the rest (tansu, most async brokers) see it. A
/// size alone is confirmed or refuted by the first message's header.
pub fn is_request(b: &[u8]) -> bool {
    if let Ok(size) = <[u8; 4]>::try_from(b) {
        return (MIN_REQUEST..=MAX_REQUEST).contains(&u32::from_be_bytes(size));
    }
    let Some(head) = b.get(..14) else {
        return false;
    };
    let be16 = |i: usize| i16::from_be_bytes([head[i], head[i + 1]]);
    let size = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    if !(MIN_REQUEST..=MAX_REQUEST).contains(&size) {
        return false;
    }
    let Ok(api) = ApiKey::try_from(be16(4)) else {
        return false;
    };
    let range = api.valid_versions();
    let version = be16(6);
    if version < range.min || version > range.max {
        return false;
    }
    // Header v1+ starts with a nullable client id string (flexible headers
    // keep it classic); header v0 (only old ControlledShutdown) has none.
    if api.request_header_version(version) == 0 {
        return true;
    }
    let client_len = be16(12);
    if client_len == -1 {
        return true;
    }
    let Ok(n) = usize::try_from(client_len) else {
        return false;
    };
    if n + 10 > size as usize {
        return false;
    }
    let shown = &b[14..b.len().min(14 + n)];
    shown.iter().all(|c| c.is_ascii_graphic() || *c == b' ')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_told_from_other_protocols() {
        // kafka-python's first request: ApiVersions v0, client id "kafka-python-2.0.2".
        let mut api_versions = vec![0, 0, 0, 28, 0, 18, 0, 0, 0, 0, 0, 1, 0, 18];
        api_versions.extend_from_slice(b"kafka-python-2.0.2");
        assert!(is_request(&api_versions));
        assert!(!is_request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(!is_request(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        // An API key no Kafka has, and a version ApiVersions never had.
        let mut unknown = api_versions.clone();
        unknown[5] = 200;
        assert!(!is_request(&unknown));
        let mut version = api_versions.clone();
        version[7] = 99;
        assert!(!is_request(&version));
        // A client id longer than the message.
        let mut long = api_versions.clone();
        long[13] = 100;
        assert!(!is_request(&long));
        assert!(!is_request(&api_versions[..10]));
        // A server's first read of just the size.
        assert!(is_request(&api_versions[..4]));
        assert!(!is_request(b"GET "));
    }
}
