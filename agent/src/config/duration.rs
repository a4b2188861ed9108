//! Durations in the file as people write them (`30s`, `1m 30s`, `250ms`),
//! for `#[serde(with = "duration")]` on `Option<Duration>` fields.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    d.map(|d| humantime::format_duration(d).to_string())
        .serialize(s)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    parse(&text).map(Some).map_err(serde::de::Error::custom)
}

/// Also the flags' parser.
pub fn parse(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration like 30s or 500ms: {e}"))
}
