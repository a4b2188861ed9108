//! The Fetch response, walked by hand rather than by `kafka-protocol`'s
//! decoder: brokers in use send tagged fields the schema does not list
//! for the version they answer (tansu 0.6 adds NodeEndpoints, tag 0, to
//! v12 responses). Clients skip tags they do not know, as the protocol
//! asks, while the crate's decoder rejects the whole response. Only the
//! fields Clew reads are kept; record batches still go to the crate.

use bytes::{Buf, Bytes};

/// One partition's part of a Fetch response.
pub struct FetchedPartition {
    /// Topic name (v4–v12) or id (v13+).
    pub topic: Result<String, [u8; 16]>,
    pub partition: i32,
    pub error: i16,
    pub records: Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("truncated or malformed Fetch response")]
pub struct Malformed;

/// First version with compact strings, arrays and tagged fields.
const FLEXIBLE: i16 = 12;
/// First version naming topics by id.
const TOPIC_IDS: i16 = 13;

/// The body of a Fetch response of `version` (after its header): the
/// top-level error code and every partition.
pub fn response(body: &mut Bytes, version: i16) -> Result<(i16, Vec<FetchedPartition>), Malformed> {
    let mut c = Cursor {
        buf: body,
        flexible: version >= FLEXIBLE,
    };
    c.i32()?; // throttle_time_ms
    let mut error = 0;
    if version >= 7 {
        error = c.i16()?;
        c.i32()?; // session_id
    }
    let mut out = Vec::new();
    for _ in 0..c.array_len()? {
        let topic = if version >= TOPIC_IDS {
            Err(c.uuid()?)
        } else {
            Ok(c.string()?)
        };
        for _ in 0..c.array_len()? {
            let partition = c.i32()?;
            let error = c.i16()?;
            c.skip(8 + 8)?; // high_watermark, last_stable_offset
            if version >= 5 {
                c.skip(8)?; // log_start_offset
            }
            for _ in 0..c.array_len()? {
                c.skip(8 + 8)?; // aborted transaction: producer_id, first_offset
                c.tags()?;
            }
            if version >= 11 {
                c.i32()?; // preferred_read_replica
            }
            let records = c.bytes()?;
            c.tags()?;
            out.push(FetchedPartition {
                topic: topic.clone(),
                partition,
                error,
                records,
            });
        }
        c.tags()?;
    }
    c.tags()?;
    Ok((error, out))
}

struct Cursor<'a> {
    buf: &'a mut Bytes,
    flexible: bool,
}

impl Cursor<'_> {
    fn need(&self, n: usize) -> Result<(), Malformed> {
        if self.buf.remaining() < n {
            return Err(Malformed);
        }
        Ok(())
    }

    fn skip(&mut self, n: usize) -> Result<(), Malformed> {
        self.need(n)?;
        self.buf.advance(n);
        Ok(())
    }

    fn i16(&mut self) -> Result<i16, Malformed> {
        self.need(2)?;
        Ok(self.buf.get_i16())
    }

    fn i32(&mut self) -> Result<i32, Malformed> {
        self.need(4)?;
        Ok(self.buf.get_i32())
    }

    fn uuid(&mut self) -> Result<[u8; 16], Malformed> {
        self.need(16)?;
        let mut id = [0; 16];
        self.buf.copy_to_slice(&mut id);
        Ok(id)
    }

    fn uvarint(&mut self) -> Result<u64, Malformed> {
        let mut v = 0u64;
        for shift in (0..35).step_by(7) {
            self.need(1)?;
            let b = self.buf.get_u8();
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Malformed)
    }

    /// A length: compact (unsigned varint, plus one, 0 for null) when
    /// flexible, else `classic` bytes (-1 for null). `None` for null.
    fn len(&mut self, classic_i32: bool) -> Result<Option<usize>, Malformed> {
        let n: i64 = if self.flexible {
            self.uvarint()? as i64 - 1
        } else if classic_i32 {
            i64::from(self.i32()?)
        } else {
            i64::from(self.i16()?)
        };
        if n < 0 {
            return Ok(None);
        }
        let n = usize::try_from(n).map_err(|_| Malformed)?;
        Ok(Some(n))
    }

    fn array_len(&mut self) -> Result<usize, Malformed> {
        let n = self.len(true)?.unwrap_or(0);
        // Each element takes at least a byte: a bogus count fails here,
        // not after a huge allocation.
        self.need(n)?;
        Ok(n)
    }

    fn string(&mut self) -> Result<String, Malformed> {
        let n = self.len(false)?.unwrap_or(0);
        self.need(n)?;
        let s = self.buf.split_to(n);
        String::from_utf8(s.to_vec()).map_err(|_| Malformed)
    }

    fn bytes(&mut self) -> Result<Bytes, Malformed> {
        let n = self.len(true)?.unwrap_or(0);
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }

    /// Tagged fields (flexible versions): skipped, known or not.
    fn tags(&mut self) -> Result<(), Malformed> {
        if !self.flexible {
            return Ok(());
        }
        for _ in 0..self.uvarint()? {
            self.uvarint()?;
            let n = usize::try_from(self.uvarint()?).map_err(|_| Malformed)?;
            self.skip(n)?;
        }
        Ok(())
    }
}
