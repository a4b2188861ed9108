//! What Clew needs from each Kafka message, decoded by the `kafka-protocol`
//! crate (generated from Apache Kafka's message schemas, so every version,
//! classic or flexible, decodes the way brokers and clients encode it).
//! Everything here is a pure function of a message's bytes.

use bytes::{Buf, Bytes};
use kafka_protocol::{
    messages::{
        ApiKey, ApiVersionsRequest, HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest,
        MetadataResponse, OffsetCommitRequest, ProduceRequest, ProduceResponse, RequestHeader,
        ResponseHeader, SyncGroupRequest,
    },
    protocol::Decodable,
    records::{Compression, RecordBatchDecoder},
};

use super::fetch;
use crate::trace_context::TraceParent;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("api key {0} is not a Kafka API")]
    UnknownApi(i16),
    #[error("{api:?} v{version}: {source}")]
    Decode {
        api: ApiKey,
        version: i16,
        source: anyhow::Error,
    },
    #[error("truncated header")]
    Header,
}

/// A request's header: which API, which version, and the correlation id
/// its response will carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub api: ApiKey,
    pub version: i16,
    pub correlation_id: i32,
    pub client_id: Option<String>,
}

/// A topic as a message names it: Produce and Fetch use ids instead of
/// names from v13 on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    Name(String),
    Id([u8; 16]),
}

/// The trace context a record carries in its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordCtx {
    pub traceparent: TraceParent,
    pub tracestate: Option<String>,
}

/// One record batch of a Produce request, or the records of one fetched
/// partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub topic: Topic,
    pub partition: i32,
    pub records: u32,
    /// First offset (fetched records; a Produce request's is assigned by the broker).
    pub base_offset: i64,
    pub compression: Option<&'static str>,
    /// Records' contexts, in order; `None` for a record without a valid
    /// `traceparent`. Empty when the records could not be decoded.
    pub contexts: Vec<Option<RecordCtx>>,
    /// Each record's value is null (a tombstone), in order.
    pub tombstones: Vec<bool>,
    /// Records that did not decode (a truncated last batch of a fetch).
    pub undecoded: bool,
    /// Partition-level error (responses).
    pub error: i16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Produce {
        acks: i16,
        batches: Vec<Batch>,
    },
    Fetch,
    /// A consumer-group request: names the group of this client.
    Group(String),
    ApiVersions {
        software: Option<String>,
    },
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionResult {
    pub topic: Topic,
    pub partition: i32,
    pub error: i16,
    pub base_offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Produce(Vec<PartitionResult>),
    Fetch {
        error: i16,
        batches: Vec<Batch>,
    },
    /// Topic ids and the names they stand for.
    Metadata(Vec<([u8; 16], String)>),
    Other,
}

/// The header at the start of a request, leaving `buf` at its body.
pub fn request_head(buf: &mut Bytes) -> Result<RequestHead, WireError> {
    if buf.len() < 8 {
        return Err(WireError::Header);
    }
    let key = i16::from_be_bytes([buf[0], buf[1]]);
    let version = i16::from_be_bytes([buf[2], buf[3]]);
    let api = ApiKey::try_from(key).map_err(|()| WireError::UnknownApi(key))?;
    let header_version = api.request_header_version(version);
    let header =
        RequestHeader::decode(buf, header_version).map_err(|source| WireError::Decode {
            api,
            version,
            source,
        })?;
    Ok(RequestHead {
        api,
        version,
        correlation_id: header.correlation_id,
        client_id: header.client_id.map(|c| c.to_string()),
    })
}

/// The correlation id at the start of a response, before its header is
/// decoded (which needs the request's API and version).
pub fn response_correlation(buf: &[u8]) -> Option<i32> {
    Some(i32::from_be_bytes(buf.get(..4)?.try_into().ok()?))
}

fn decode<T: Decodable>(buf: &mut Bytes, api: ApiKey, version: i16) -> Result<T, WireError> {
    T::decode(buf, version).map_err(|source| WireError::Decode {
        api,
        version,
        source,
    })
}

/// A request's body, after [`request_head`].
pub fn request(head: &RequestHead, mut body: Bytes) -> Result<Request, WireError> {
    let (api, v) = (head.api, head.version);
    let b = &mut body;
    Ok(match api {
        ApiKey::Produce => {
            let r: ProduceRequest = decode(b, api, v)?;
            let mut batches = Vec::new();
            for t in r.topic_data {
                let topic = topic(t.name.0.to_string(), t.topic_id.as_bytes());
                for p in t.partition_data {
                    let records = p.records.unwrap_or_default();
                    batches.push(records_of(topic.clone(), p.index, 0, records));
                }
            }
            Request::Produce {
                acks: r.acks,
                batches,
            }
        }
        ApiKey::Fetch => Request::Fetch,
        ApiKey::JoinGroup => Request::Group(
            decode::<JoinGroupRequest>(b, api, v)?
                .group_id
                .0
                .to_string(),
        ),
        ApiKey::SyncGroup => Request::Group(
            decode::<SyncGroupRequest>(b, api, v)?
                .group_id
                .0
                .to_string(),
        ),
        ApiKey::Heartbeat => Request::Group(
            decode::<HeartbeatRequest>(b, api, v)?
                .group_id
                .0
                .to_string(),
        ),
        ApiKey::LeaveGroup => Request::Group(
            decode::<LeaveGroupRequest>(b, api, v)?
                .group_id
                .0
                .to_string(),
        ),
        ApiKey::OffsetCommit => Request::Group(
            decode::<OffsetCommitRequest>(b, api, v)?
                .group_id
                .0
                .to_string(),
        ),
        ApiKey::ApiVersions => {
            let r: ApiVersionsRequest = decode(b, api, v)?;
            let name = r.client_software_name.to_string();
            Request::ApiVersions {
                software: (!name.is_empty()).then_some(name),
            }
        }
        _ => Request::Other,
    })
}

/// A response to a request with `api` and `version`, correlation id included.
pub fn response(api: ApiKey, version: i16, mut buf: Bytes) -> Result<Response, WireError> {
    let b = &mut buf;
    let _header: ResponseHeader = decode(b, api, api.response_header_version(version))?;
    Ok(match api {
        ApiKey::Produce => {
            let r: ProduceResponse = decode(b, api, version)?;
            let mut out = Vec::new();
            for t in r.responses {
                let topic = topic(t.name.0.to_string(), t.topic_id.as_bytes());
                for p in t.partition_responses {
                    out.push(PartitionResult {
                        topic: topic.clone(),
                        partition: p.index,
                        error: p.error_code,
                        base_offset: p.base_offset,
                    });
                }
            }
            Response::Produce(out)
        }
        ApiKey::Fetch => {
            let (error, partitions) =
                fetch::response(b, version).map_err(|e| WireError::Decode {
                    api,
                    version,
                    source: e.into(),
                })?;
            let batches = partitions
                .into_iter()
                .map(|p| {
                    let topic = match p.topic {
                        Ok(name) => Topic::Name(name),
                        Err(id) => Topic::Id(id),
                    };
                    records_of(topic, p.partition, p.error, p.records)
                })
                .filter(|b| b.records > 0 || b.error != 0)
                .collect();
            Response::Fetch { error, batches }
        }
        ApiKey::Metadata => {
            let r: MetadataResponse = decode(b, api, version)?;
            Response::Metadata(
                r.topics
                    .into_iter()
                    .filter_map(|t| {
                        let id = *t.topic_id.as_bytes();
                        (id != [0; 16]).then(|| t.name.map(|n| (id, n.0.to_string())))?
                    })
                    .collect(),
            )
        }
        _ => Response::Other,
    })
}

fn topic(name: String, id: &[u8; 16]) -> Topic {
    if name.is_empty() && *id != [0; 16] {
        Topic::Id(*id)
    } else {
        Topic::Name(name)
    }
}

/// The record batches of one partition: counts, first offset, and each
/// record's trace context. A fetch may end with a partial batch (the
/// broker cuts at its byte limit): what decoded before it counts.
fn records_of(topic: Topic, partition: i32, error: i16, mut records: Bytes) -> Batch {
    let mut batch = Batch {
        topic,
        partition,
        records: 0,
        base_offset: -1,
        compression: None,
        contexts: Vec::new(),
        tombstones: Vec::new(),
        undecoded: false,
        error,
    };
    while records.has_remaining() {
        let set = match RecordBatchDecoder::decode(&mut records) {
            Ok(set) => set,
            Err(_) => {
                batch.undecoded = true;
                break;
            }
        };
        batch.compression = batch.compression.or(compression_name(set.compression));
        for r in set.records.iter().filter(|r| !r.control) {
            if batch.base_offset < 0 {
                batch.base_offset = r.offset;
            }
            batch.records += 1;
            batch.tombstones.push(r.value.is_none());
            batch
                .contexts
                .push(record_ctx(r.headers.iter().map(|(k, v)| (k.as_bytes(), v))));
        }
    }
    batch
}

fn compression_name(c: Compression) -> Option<&'static str> {
    match c {
        Compression::None => None,
        Compression::Gzip => Some("gzip"),
        Compression::Snappy => Some("snappy"),
        Compression::Lz4 => Some("lz4"),
        Compression::Zstd => Some("zstd"),
    }
}

/// The W3C context in a record's headers. Header keys are compared as
/// bytes: W3C names are lower case and Kafka headers are case-sensitive.
/// Two different `traceparent` values make it invalid, as for HTTP.
fn record_ctx<'a>(
    headers: impl Iterator<Item = (&'a [u8], &'a Option<Bytes>)>,
) -> Option<RecordCtx> {
    let mut parent: Option<&[u8]> = None;
    let mut state = None;
    for (k, v) in headers {
        let Some(v) = v.as_deref() else { continue };
        match k {
            b"traceparent" if parent.is_some_and(|p| p != v) => return None,
            b"traceparent" => parent = Some(v),
            b"tracestate" => state = std::str::from_utf8(v).ok().map(str::to_owned),
            _ => {}
        }
    }
    let traceparent = TraceParent::parse(std::str::from_utf8(parent?).ok()?)?;
    Some(RecordCtx {
        traceparent,
        tracestate: state,
    })
}
