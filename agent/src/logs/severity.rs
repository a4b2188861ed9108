//! The severity a log line shows, in the forms common loggers write, as
//! an OpenTelemetry `SeverityNumber` (the log data model's mappings:
//! syslog's crit, alert and emerg are ERROR2, ERROR3 and FATAL; Python's
//! CRITICAL is FATAL, as its OpenTelemetry handler maps it):
//!
//! - a JSON object line with a top-level `level`, `severity`, `levelname`,
//!   `log.level` or `lvl` (a name, or pino's and bunyan's numbers 10–60);
//! - a `<0>`…`<7>` syslog priority prefix (what services under systemd write);
//! - within the line's first [`HEAD`] bytes: `level=warn` (logfmt), a name
//!   in brackets in any case (`[error]` as nginx writes it, `[WARN ]`), or
//!   a name in capitals standing alone (`2024-05-01 12:00:00 ERROR …`,
//!   Python's default `WARNING:root:…`).
//!
//! The first of these a line shows wins; a line that shows none has no
//! severity (rather than a guess from a word in its message).

use serde::Deserialize;

use super::record::Severity;

/// Bytes at the start of a line searched for a severity word.
pub const HEAD: usize = 128;

/// Names and their `SeverityNumber`; `bare`: also recognised alone in
/// capitals (short or common words are only taken in a marked form).
const NAMES: &[(&str, u8, bool)] = &[
    ("trace", 1, true),
    ("debug", 5, true),
    ("info", 9, true),
    ("information", 9, false),
    ("notice", 10, true),
    ("warn", 13, true),
    ("warning", 13, true),
    ("err", 17, false),
    ("error", 17, true),
    ("severe", 17, true),
    ("crit", 18, false),
    ("alert", 19, false),
    ("critical", 21, true),
    ("emerg", 21, false),
    ("emergency", 21, false),
    ("fatal", 21, true),
];

/// `<0>`…`<7>`: syslog severities, emerg to debug.
const PRIORITIES: [u8; 8] = [21, 19, 18, 17, 13, 10, 9, 5];

/// The severity `line` shows, if any.
pub fn parse(line: &[u8]) -> Option<Severity> {
    let start = line.iter().position(|b| !b.is_ascii_whitespace())?;
    let line = &line[start..];
    if line[0] == b'{' {
        if let Some(s) = from_json(line) {
            return Some(s);
        }
    }
    if let [b'<', d @ b'0'..=b'7', b'>', ..] = line {
        let text = String::from_utf8_lossy(&line[..3]).into_owned();
        return Some(Severity {
            number: PRIORITIES[(d - b'0') as usize],
            text,
        });
    }
    from_text(&line[..line.len().min(HEAD)])
}

fn name(word: &[u8]) -> Option<u8> {
    NAMES
        .iter()
        .find(|(n, _, _)| word.eq_ignore_ascii_case(n.as_bytes()))
        .map(|(_, number, _)| *number)
}

fn severity(word: &[u8]) -> Option<Severity> {
    Some(Severity {
        number: name(word)?,
        text: String::from_utf8_lossy(word).into_owned(),
    })
}

/// A level field's value: a name, or a number as pino and bunyan write.
#[derive(Deserialize)]
#[serde(untagged)]
enum Level<'a> {
    Name(#[serde(borrow)] std::borrow::Cow<'a, str>),
    Number(i64),
}

/// The fields looked at; the rest of the object is skipped unread.
#[derive(Deserialize)]
struct Levels<'a> {
    #[serde(borrow)]
    level: Option<Level<'a>>,
    #[serde(borrow)]
    severity: Option<Level<'a>>,
    #[serde(borrow)]
    levelname: Option<Level<'a>>,
    #[serde(borrow, rename = "log.level")]
    log_level: Option<Level<'a>>,
    #[serde(borrow)]
    lvl: Option<Level<'a>>,
}

fn from_json(line: &[u8]) -> Option<Severity> {
    let end = line.iter().rposition(|b| !b.is_ascii_whitespace())?;
    let l: Levels = serde_json::from_slice(&line[..=end]).ok()?;
    let level = [l.level, l.severity, l.levelname, l.log_level, l.lvl]
        .into_iter()
        .flatten()
        .next()?;
    match level {
        Level::Name(n) => severity(n.trim().as_bytes()),
        Level::Number(n) => {
            let number = match n {
                10 => 1,
                20 => 5,
                30 => 9,
                40 => 13,
                50 => 17,
                60 => 21,
                _ => return None,
            };
            Some(Severity {
                number,
                text: n.to_string(),
            })
        }
    }
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The first marked or capitalised severity word of `head`.
fn from_text(head: &[u8]) -> Option<Severity> {
    let mut i = 0;
    while i < head.len() {
        if !is_word(head[i]) || (i > 0 && is_word(head[i - 1])) {
            i += 1;
            continue;
        }
        let end = head[i..]
            .iter()
            .position(|&b| !is_word(b))
            .map_or(head.len(), |n| i + n);
        let word = &head[i..end];
        if let Some(s) = marked(head, i, end).or_else(|| bare(word)) {
            return Some(s);
        }
        i = end;
    }
    None
}

/// `word` (at `i..end` of `head`) in brackets, or as a logfmt value of
/// `level`, `lvl` or `severity` (quoted or not).
fn marked(head: &[u8], i: usize, end: usize) -> Option<Severity> {
    let word = &head[i..end];
    let before = &head[..i];
    let after = &head[end..];
    let bracketed = before.ends_with(b"[")
        && after
            .iter()
            .find(|&&b| b != b' ')
            .is_some_and(|&b| b == b']');
    let before = before.strip_suffix(b"\"").unwrap_or(before);
    let logfmt = [&b"level="[..], b"lvl=", b"severity="].iter().any(|k| {
        before.ends_with(k) && {
            let key_at = before.len() - k.len();
            key_at == 0 || !is_word(before[key_at - 1])
        }
    });
    if bracketed || logfmt {
        severity(word)
    } else {
        None
    }
}

/// `word` in capitals, a name recognised alone.
fn bare(word: &[u8]) -> Option<Severity> {
    if !word.iter().all(u8::is_ascii_uppercase) {
        return None;
    }
    NAMES
        .iter()
        .find(|(n, _, bare)| *bare && word.eq_ignore_ascii_case(n.as_bytes()))
        .map(|(_, number, _)| Severity {
            number: *number,
            text: String::from_utf8_lossy(word).into_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sev(line: &str) -> Option<(u8, String)> {
        parse(line.as_bytes()).map(|s| (s.number, s.text))
    }

    fn is(line: &str, number: u8, text: &str) {
        assert_eq!(sev(line), Some((number, text.to_owned())), "{line:?}");
    }

    #[test]
    fn python_logging_s_default_format() {
        is("WARNING:root:disk almost full", 13, "WARNING");
        is("ERROR:app.db:query failed", 17, "ERROR");
        is("CRITICAL:app:gone", 21, "CRITICAL");
        is("INFO:werkzeug:GET /", 9, "INFO");
        is("DEBUG:urllib3:Starting new connection", 5, "DEBUG");
    }

    #[test]
    fn words_in_capitals_after_a_timestamp() {
        is("2024-05-01 12:00:00,123 ERROR [main] boom", 17, "ERROR");
        is(
            "2024-05-01T12:00:00.123Z  WARN 4321 --- [nio-8080] c.e.Foo : slow",
            13,
            "WARN",
        );
        is(
            "12:00:00.000 [pool-1] INFO  com.example.App - started",
            9,
            "INFO",
        );
        is("SEVERE: bad", 17, "SEVERE");
        is("TRACE entering", 1, "TRACE");
        is("FATAL: the end", 21, "FATAL");
    }

    #[test]
    fn nginx_and_bracketed_levels() {
        is(
            "2024/05/01 12:00:00 [error] 1234#0: *5 open() \"/x\" failed",
            17,
            "error",
        );
        is(
            "2024/05/01 12:00:00 [warn] 1#1: conflicting name",
            13,
            "warn",
        );
        is(
            "2024/05/01 12:00:00 [crit] 1#1: SSL_do_handshake()",
            18,
            "crit",
        );
        is(
            "2024/05/01 12:00:00 [emerg] 1#1: bind() failed",
            21,
            "emerg",
        );
        is("2024/05/01 12:00:00 [notice] 1#1: signal 15", 10, "notice");
        is("[WARN ] cache miss", 13, "WARN");
        is("[Error] x", 17, "Error");
    }

    #[test]
    fn logfmt_and_json() {
        is("ts=2024-05-01 level=warn msg=\"slow\"", 13, "warn");
        is("time=1 level=\"error\" msg=x", 17, "error");
        is("lvl=err msg=x", 17, "err");
        is(r#"{"level":"warning","msg":"slow"}"#, 13, "warning");
        is(r#"  {"msg":"x","severity":"ERROR"}  "#, 17, "ERROR");
        is(r#"{"levelname":"INFO","message":"hi"}"#, 9, "INFO");
        is(r#"{"log.level":"debug","message":"hi"}"#, 5, "debug");
        is(r#"{"level":50,"time":1,"msg":"pino"}"#, 17, "50");
        is(r#"{"level":30,"msg":"bunyan"}"#, 9, "30");
        // Nested fields are not the line's level; the text may still show one.
        assert_eq!(sev(r#"{"ctx":{"level":"error"},"msg":"x"}"#), None);
        // Not JSON after all: read as text.
        is(r#"{broken ERROR"#, 17, "ERROR");
    }

    #[test]
    fn syslog_priority_prefixes() {
        is("<3>disk failed", 17, "<3>");
        is("<4>careful", 13, "<4>");
        is("<7>details", 5, "<7>");
        assert_eq!(sev("<8>not a priority"), None);
    }

    #[test]
    fn prose_is_not_a_severity() {
        for line in [
            "",
            "   ",
            "127.0.0.1 - - [01/May/2024 12:00:00] \"GET /x HTTP/1.1\" 200 -",
            "request failed with an error",
            "Error: lower-case words in prose are not levels",
            "ERRORS=3 remain",
            "levels=warn only",
            "a_ERROR_b",
            "[errors] plural",
            "ERR in capitals is too short to trust alone",
            "CRIT too",
        ] {
            assert_eq!(sev(line), None, "{line:?}");
        }
    }

    #[test]
    fn only_the_head_is_searched() {
        let late = format!("{} ERROR", "x ".repeat(HEAD));
        assert_eq!(sev(&late), None);
        assert_eq!(
            parse(&[0xff, 0xfe, b' ', b'E', b'R', b'R', b'O', b'R'])
                .unwrap()
                .number,
            17
        );
    }
}
