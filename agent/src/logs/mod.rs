//! Logs tied to traces, with no change to the application: what a thread
//! writes to its standard output, standard error or a log file while it
//! serves a request becomes OTLP log records carrying that request's
//! SERVER span ids (the kernel side is ebpf/src/logs.rs). The
//! application's output is only read, never changed.
//!
//! Here: which fds are log streams (`files`), one record per line, cut at
//! a bound and counted, with the severity the line shows (`severity`), a
//! bound on records per second per process (`limit`), then the exporter.
//! The agent's own log lines name counts, fds and paths, never what a
//! line said.

mod files;
mod limit;
mod record;
pub mod severity;

use std::{sync::Arc, time::Instant};

pub use files::{Sources, Stream};
pub use record::{LogRecord, Severity};

use crate::{
    capture::{LogVerdicts, LogWrite},
    clock::{unix_now_ns, Clock},
    export::Exporter,
    nesting::Nesting,
    span::{AttrValue, Attributes, Resource},
    stats::{self, Stats},
};
use files::{Files, Judgement};
use limit::RateLimit;

/// What `--logs`, `--log-record-bytes` and `--log-rate` chose.
#[derive(Clone, Debug)]
pub struct LogSettings {
    pub sources: Sources,
    /// Longest record body, in bytes; longer lines are cut.
    pub record_bytes: usize,
    /// Records per second per process.
    pub per_second: u32,
    /// Processes that export their own spans through an SDK have none of
    /// theirs exported by Clew: their records would name spans that do
    /// not exist, so none is made.
    pub defer_sdk: bool,
}

/// Attribute set on records cut at the bound.
pub const TRUNCATED: &str = "clew.log.truncated";

pub struct Logs {
    files: Files,
    record_bytes: usize,
    limit: RateLimit,
    defer_sdk: bool,
    verdicts: LogVerdicts,
    exporter: Exporter<LogRecord>,
    stats: Arc<Stats>,
}

impl Logs {
    pub fn new(
        settings: LogSettings,
        verdicts: LogVerdicts,
        exporter: Exporter<LogRecord>,
        stats: Arc<Stats>,
    ) -> Logs {
        Logs {
            files: Files::new(settings.sources),
            record_bytes: settings.record_bytes,
            limit: RateLimit::new(settings.per_second),
            defer_sdk: settings.defer_sdk,
            verdicts,
            exporter,
            stats,
        }
    }

    /// A write the kernel captured, by a process whose resource is
    /// `resource`, while its thread served a span the kernel named.
    pub fn on_write(
        &mut self,
        w: &LogWrite<'_>,
        resource: Arc<Resource>,
        nesting: &Nesting,
        clock: &Clock,
    ) {
        if self.defer_sdk && resource.sdk_exports {
            stats::add(&self.stats.log_writes_sdk_process, 1);
            return;
        }
        let stream = match self.files.judge(w.tgid, w.fd, w.ino, w.dev, w.verified) {
            Judgement::Capture { stream, verdict } => {
                if verdict {
                    self.verdicts.set(w.tgid, w.fd, w.ino, w.dev, true);
                }
                stream
            }
            Judgement::Skip { verdict } => {
                if verdict {
                    self.verdicts.set(w.tgid, w.fd, w.ino, w.dev, false);
                }
                stats::add(&self.stats.log_writes_unmatched, 1);
                return;
            }
            Judgement::Unresolved => {
                stats::add(&self.stats.log_writes_unresolved, 1);
                return;
            }
        };
        // The span as userspace knows it: its trace may have moved (an
        // alias), and its sampling decision is userspace's too.
        let (trace_id, sampled) = match nesting.open_span(&w.span_id) {
            Some(s) => (s.trace_id, s.sampled),
            None => {
                let mut t = w.trace_id;
                nesting.resolve_trace(&mut t);
                (t, w.sampled)
            }
        };
        let time_ns = clock.to_unix_ns(w.ts_ns);
        let observed_ns = unix_now_ns();
        let now = Instant::now();
        for (line, cut) in lines(w.payload, w.total) {
            if !self.limit.allow(w.tgid, now) {
                stats::add(&self.stats.log_records_dropped_rate, 1);
                continue;
            }
            let (body, truncated) = body(line, cut, self.record_bytes);
            let mut attributes: Attributes = match &stream {
                Stream::Stdout => vec![("log.iostream", "stdout".into())],
                Stream::Stderr => vec![("log.iostream", "stderr".into())],
                Stream::File(p) => vec![("log.file.path", p.to_string().into())],
            };
            if truncated {
                stats::add(&self.stats.log_records_truncated, 1);
                attributes.push((TRUNCATED, AttrValue::Bool(true)));
            }
            let record = LogRecord {
                time_ns,
                observed_ns,
                severity: severity::parse(body.as_bytes()),
                body,
                attributes,
                trace_id,
                span_id: w.span_id,
                sampled,
                resource: resource.clone(),
            };
            if self.exporter.submit(record) {
                stats::add(&self.stats.log_records, 1);
            } else {
                stats::add(&self.stats.log_records_dropped_queue, 1);
            }
        }
    }

    /// Process `tgid` is gone.
    pub fn forget_process(&mut self, tgid: u32) {
        self.limit.forget(tgid);
        for fd in self.files.forget_process(tgid) {
            self.verdicts.forget(tgid, fd);
        }
    }

    pub fn exporter(&self) -> &Exporter<LogRecord> {
        &self.exporter
    }

    pub fn into_exporter(self) -> Exporter<LogRecord> {
        self.exporter
    }
}

/// The lines of a write of `total` bytes whose first bytes are `captured`,
/// each with whether the capture cut it (the last, when bytes are
/// missing). Line ends (`\n`, `\r\n`) are not part of a line; blank lines
/// are left out.
fn lines(captured: &[u8], total: usize) -> impl Iterator<Item = (&[u8], bool)> {
    let missing = total > captured.len();
    let count = captured.split(|&b| b == b'\n').count();
    captured
        .split(|&b| b == b'\n')
        .enumerate()
        .map(move |(i, l)| {
            (
                l.strip_suffix(b"\r").unwrap_or(l),
                missing && i + 1 == count,
            )
        })
        .filter(|(l, _)| !l.iter().all(u8::is_ascii_whitespace))
}

/// A record's body: the line as text (invalid UTF-8 replaced), cut at a
/// character boundary at most `bound` bytes in; and whether it was cut.
fn body(line: &[u8], cut: bool, bound: usize) -> (String, bool) {
    let mut text = String::from_utf8_lossy(line).into_owned();
    if text.len() <= bound {
        return (text, cut);
    }
    let mut end = bound;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    (text, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(captured: &str, total: usize) -> Vec<(&str, bool)> {
        lines(captured.as_bytes(), total)
            .map(|(l, cut)| (std::str::from_utf8(l).unwrap(), cut))
            .collect()
    }

    #[test]
    fn a_write_is_split_into_its_lines() {
        assert_eq!(split("one\n", 4), [("one", false)]);
        assert_eq!(
            split("one\r\ntwo\n\n  \nthree", 18),
            [("one", false), ("two", false), ("three", false)]
        );
        // The capture ended inside the last line.
        assert_eq!(split("one\ntw", 100), [("one", false), ("tw", true)]);
        // ... or just after a line end: nothing is cut.
        assert_eq!(split("one\n", 100), [("one", false)]);
        assert!(split("\n\n", 2).is_empty());
    }

    #[test]
    fn bodies_are_cut_at_the_bound_on_a_character_boundary() {
        assert_eq!(body(b"short", false, 10), ("short".into(), false));
        assert_eq!(
            body(b"0123456789ab", false, 10),
            ("0123456789".into(), true)
        );
        // 'é' is two bytes: never split.
        assert_eq!(
            body("abcdefghié".as_bytes(), false, 10),
            ("abcdefghi".into(), true)
        );
        assert!(body(b"cut by the kernel", true, 100).1);
        assert_eq!(body(b"\xffok", false, 10).0, "\u{fffd}ok");
    }
}
