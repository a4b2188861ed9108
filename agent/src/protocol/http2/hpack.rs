//! HPACK decoding of one direction's header blocks, keeping only the
//! fields spans use.
//!
//! The decoder is `loona-hpack`, the maintained fork of the `hpack` crate
//! (`h2` keeps its own private): it returns errors rather than panicking on
//! malformed input, bounds integers, and lets us cap the dynamic table a
//! peer may ask for. Its dynamic table lives as long as the connection:
//! blocks must be decoded in order, every one of them, and after an error
//! the table is unknown, so the caller stops decoding that direction.

use loona_hpack::{decoder::DecoderError, Decoder};

use super::unhuffman;
use crate::protocol::{http1::MAX_HEADER_VALUE, http_common::bounded_text};

/// Dynamic table size a peer may switch to (the default is 4 KiB); a
/// larger size update is an error, which bounds memory per connection.
pub const MAX_TABLE: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("HPACK: {0}")]
pub struct HpackError(DecoderError);

/// The header fields of one block that spans use, values cut to
/// [`MAX_HEADER_VALUE`] bytes; the others are dropped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fields {
    pub method: Option<String>,
    pub path: Option<String>,
    pub scheme: Option<String>,
    pub authority: Option<String>,
    pub status: Option<u16>,
    pub content_type: Option<String>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub baggage: Option<String>,
    pub user_agent: Option<String>,
    pub grpc_status: Option<u32>,
    pub grpc_message: Option<String>,
}

impl Fields {
    fn keep(&mut self, name: &[u8], value: &[u8]) {
        let text = || Some(bounded_text(value, MAX_HEADER_VALUE).into_owned());
        let text_of = || std::str::from_utf8(value).ok();
        // HTTP/2 field names are lower case (RFC 9113 §8.2.1); the first of
        // a repeated field wins, as in HTTP/1.
        let slot = match name {
            // Repeated: an empty value, which joins no trace (see
            // `trace_context::single`).
            b"traceparent" if self.traceparent.is_some() => {
                self.traceparent = Some(String::new());
                return;
            }
            // Repeated: one list (RFC 9110 §5.3), bounded: past the limit
            // it is dropped whole anyway.
            b"tracestate" if self.tracestate.is_some() => {
                let state = self.tracestate.get_or_insert_default();
                if state.len() <= clew_common::tracestate::CARRY_BYTES {
                    state.push(',');
                    state.push_str(&text().unwrap_or_default());
                }
                return;
            }
            b":method" => &mut self.method,
            b":path" => &mut self.path,
            b":scheme" => &mut self.scheme,
            b":authority" => &mut self.authority,
            b"content-type" => &mut self.content_type,
            b"traceparent" => &mut self.traceparent,
            b"tracestate" => &mut self.tracestate,
            b"baggage" => &mut self.baggage,
            b"user-agent" => &mut self.user_agent,
            b"grpc-message" => &mut self.grpc_message,
            b":status" => {
                self.status = self.status.or_else(|| text_of()?.parse().ok());
                return;
            }
            b"grpc-status" => {
                self.grpc_status = self.grpc_status.or_else(|| text_of()?.parse().ok());
                return;
            }
            _ => return,
        };
        if slot.is_none() {
            *slot = text();
        }
    }
}

/// Decodes the header blocks one endpoint sends, in order.
pub struct HeaderDecoder {
    decoder: Decoder<'static>,
    /// The block with its Huffman strings decoded (see `unhuffman`).
    plain: Vec<u8>,
}

impl Default for HeaderDecoder {
    fn default() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(MAX_TABLE);
        HeaderDecoder {
            decoder,
            plain: Vec::new(),
        }
    }
}

impl HeaderDecoder {
    pub fn decode(&mut self, block: &[u8]) -> Result<Fields, HpackError> {
        let mut fields = Fields::default();
        let block = match unhuffman::rewrite(block, &mut self.plain) {
            Some(()) => &self.plain[..],
            None => block,
        };
        self.decoder
            .decode_with_cb(block, |name, value| fields.keep(&name, &value))
            .map_err(HpackError)?;
        Ok(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7541 C.4: three requests with Huffman-coded literals that fill
    /// the dynamic table and index into it.
    #[test]
    fn rfc_requests_with_huffman_and_the_dynamic_table() {
        let mut d = HeaderDecoder::default();
        let first = hex::decode("828684418cf1e3c2e5f23a6ba0ab90f4ff").unwrap();
        let f = d.decode(&first).unwrap();
        assert_eq!(f.method.as_deref(), Some("GET"));
        assert_eq!(f.authority.as_deref(), Some("www.example.com"));
        let second = hex::decode("828684be5886a8eb10649cbf").unwrap();
        let f = d.decode(&second).unwrap();
        assert_eq!(f.authority.as_deref(), Some("www.example.com"));
        assert_eq!(f.path.as_deref(), Some("/"));
    }

    #[test]
    fn size_updates_evict_entries() {
        let mut d = HeaderDecoder::default();
        // Table size 64 (31 + 33), then `user-agent: x` indexed (43 bytes).
        let f = d.decode(&[0x3f, 0x21, 0x7a, 1, b'x']).unwrap();
        assert_eq!(f.user_agent.as_deref(), Some("x"));
        // `user-agent: y` does not fit beside it: `x` is evicted.
        d.decode(&[0x7a, 1, b'y']).unwrap();
        assert_eq!(d.decode(&[0xbe]).unwrap().user_agent.as_deref(), Some("y"));
        assert!(d.decode(&[0xbf]).is_err());
    }

    #[test]
    fn garbage_and_oversized_tables_are_errors() {
        let mut d = HeaderDecoder::default();
        // Index 70: past the static table, and the dynamic one is empty.
        assert!(d.decode(&[0x80 | 70]).is_err());
        // A size update to 1 MiB (5-bit prefix, then 7-bit groups).
        assert!(d.decode(&[0x3f, 0xe1, 0xff, 0x3f, 0x82]).is_err());
        assert!(d.decode(&[0x40, 0x85]).is_err());
    }

    #[test]
    fn status_and_grpc_fields_are_numbers() {
        let mut d = HeaderDecoder::default();
        // :status 200 (static 8), then literal grpc-status: 14 without indexing.
        let mut block = vec![0x88, 0x00, 11];
        block.extend_from_slice(b"grpc-status");
        block.push(2);
        block.extend_from_slice(b"14");
        let f = d.decode(&block).unwrap();
        assert_eq!((f.status, f.grpc_status), (Some(200), Some(14)));
    }
}
