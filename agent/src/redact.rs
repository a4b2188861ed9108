//! Secrets out of what Clew exports: values of secret-named query keys,
//! path parameters and command-line arguments become `REDACTED`, and the
//! user-info of URLs too. The [`Redact`] processor applies it to every
//! span before any exporter or the console sees it; resources apply
//! [`command_line`] once per process.

use std::borrow::Cow;

use crate::{
    processor::Processor,
    span::{AttrValue, Span},
};

pub const REDACTED: &str = "REDACTED";

/// Names whose values are secrets when they are the whole name (compared
/// case-insensitively, ignoring `-`, `_` and `.`): the semantic
/// conventions' list for `url.query` (`AWSAccessKeyId`, `Signature`, `sig`,
/// `X-Goog-Signature`) and short names that only mean a secret alone.
const SECRET_NAMES: &[&str] = &[
    "awsaccesskeyid",
    "signature",
    "sig",
    "xgoogsignature",
    "key",
    "pass",
    "pwd",
    "user",
    "authorization",
];

/// Words that make any name containing them secret (`client_secret`,
/// `refresh_token`, `X-Api-Key`, `PGPASSWORD`, `jsessionid`).
const SECRET_WORDS: &[&str] = &[
    "token",
    "password",
    "passwd",
    "secret",
    "apikey",
    "accesskey",
    "privatekey",
    "signature",
    "credential",
    "session",
    "jwt",
    "auth",
    "cookie",
];

/// Which names are secret: the built-in lists plus the user's own.
#[derive(Clone, Debug, Default)]
pub struct SecretNames {
    /// Extra whole names, normalised.
    extra: Vec<String>,
}

impl SecretNames {
    /// `extra`: names (any case) whose values are redacted too.
    pub fn with_extra(extra: &[String]) -> Self {
        SecretNames {
            extra: extra.iter().map(|n| normalise(n)).collect(),
        }
    }

    pub fn is_secret(&self, name: &str) -> bool {
        let n = normalise(name);
        !n.is_empty()
            && (SECRET_NAMES.contains(&n.as_str())
                || SECRET_WORDS.iter().any(|w| n.contains(w))
                || self.extra.contains(&n))
    }

    /// A query string (`a=1&token=x`) with secret keys' values replaced.
    /// Keys are matched percent-decoded (`api%5Fkey`) and kept as sent.
    pub fn query<'a>(&self, query: &'a str) -> Cow<'a, str> {
        self.pairs(query, '&')
    }

    /// `k=v` members separated by `sep`, secret values replaced.
    fn pairs<'a>(&self, s: &'a str, sep: char) -> Cow<'a, str> {
        let secret = |m: &str| {
            m.split_once('=')
                .is_some_and(|(k, _)| self.is_secret(&percent_decoded(k)))
        };
        if !s.split(sep).any(secret) {
            return Cow::Borrowed(s);
        }
        let members: Vec<Cow<str>> = s
            .split(sep)
            .map(|m| match m.split_once('=') {
                Some((k, _)) if secret(m) => Cow::Owned(format!("{k}={REDACTED}")),
                _ => Cow::Borrowed(m),
            })
            .collect();
        Cow::Owned(members.join(&sep.to_string()))
    }

    /// A path with the values of secret-named path parameters replaced
    /// (`/cart;jsessionid=…/items`). A secret that is a bare segment
    /// cannot be told from an id and stays.
    pub fn path<'a>(&self, path: &'a str) -> Cow<'a, str> {
        if !path.contains(';') {
            return Cow::Borrowed(path);
        }
        let segments: Vec<Cow<str>> = path
            .split('/')
            .map(|seg| match seg.split_once(';') {
                Some((name, params)) => match self.pairs(params, ';') {
                    Cow::Borrowed(_) => Cow::Borrowed(seg),
                    Cow::Owned(p) => Cow::Owned(format!("{name};{p}")),
                },
                None => Cow::Borrowed(seg),
            })
            .collect();
        match segments.iter().all(|s| matches!(s, Cow::Borrowed(_))) {
            true => Cow::Borrowed(path),
            false => Cow::Owned(segments.join("/")),
        }
    }

    /// A URL with user-info replaced (`https://REDACTED:REDACTED@host/`, as
    /// the conventions ask for `url.full`) and its path and query redacted.
    pub fn url<'a>(&self, url: &'a str) -> Cow<'a, str> {
        let (before_query, query) = match url.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (url, None),
        };
        let (scheme, rest) = match before_query.split_once("://") {
            Some((s, r)) => (Some(s), r),
            None => (None, before_query),
        };
        let (authority, path) = match (scheme, rest.find('/')) {
            (None, _) => ("", rest),
            (Some(_), Some(i)) => rest.split_at(i),
            (Some(_), None) => (rest, ""),
        };
        let host = authority.rsplit_once('@').map(|(_, h)| h);
        let new_path = self.path(path);
        let new_query = query.map(|q| self.query(q));
        let changed = host.is_some()
            || matches!(new_path, Cow::Owned(_))
            || matches!(new_query, Some(Cow::Owned(_)));
        if !changed {
            return Cow::Borrowed(url);
        }
        let mut out = String::with_capacity(url.len());
        if let Some(s) = scheme {
            out.push_str(s);
            out.push_str("://");
            match host {
                Some(h) => {
                    out.push_str(REDACTED);
                    out.push(':');
                    out.push_str(REDACTED);
                    out.push('@');
                    out.push_str(h);
                }
                None => out.push_str(authority),
            }
        }
        out.push_str(&new_path);
        if let Some(q) = new_query {
            out.push('?');
            out.push_str(&q);
        }
        Cow::Owned(out)
    }

    /// A process's arguments joined as `process.command_line`, with the
    /// values of secret-named flags (`--password=x`, `--token x`),
    /// variables (`PGPASSWORD=x`), headers (`-H 'Authorization: …'`) and
    /// the user-info and secret query keys of URLs replaced.
    pub fn command_line(&self, args: &[String]) -> String {
        let mut out: Vec<Cow<str>> = Vec::with_capacity(args.len());
        let mut value_is_secret = false;
        for arg in args {
            if std::mem::take(&mut value_is_secret) && !arg.starts_with('-') {
                out.push(REDACTED.into());
                continue;
            }
            if arg.contains("://") {
                out.push(self.url(arg));
                continue;
            }
            let flag = arg.trim_start_matches('-');
            if let Some((name, _)) = flag.split_once('=') {
                if self.is_secret(name) {
                    let prefix = &arg[..arg.len() - flag.len() + name.len()];
                    out.push(format!("{prefix}={REDACTED}").into());
                    continue;
                }
            } else if flag.len() < arg.len() && self.is_secret(flag) {
                value_is_secret = true;
            }
            match arg.split_once(':') {
                Some((name, _)) if self.is_secret(name.trim()) => {
                    out.push(format!("{name}: {REDACTED}").into())
                }
                _ => out.push(Cow::Borrowed(arg)),
            }
        }
        out.join(" ")
    }
}

/// Lower case without the separators names are spelt with.
fn normalise(name: &str) -> String {
    name.chars()
        .filter(|c| !matches!(c, '-' | '_' | '.' | ' '))
        .flat_map(char::to_lowercase)
        .collect()
}

fn percent_decoded(s: &str) -> Cow<'_, str> {
    match s.contains('%') {
        true => Cow::Owned(crate::trace_context::percent_decode(s)),
        false => Cow::Borrowed(s),
    }
}

/// Redacts the URL attributes of every span (`url.query`, `url.full`,
/// `url.path`) and removes user-info from `server.address`.
pub struct Redact {
    pub names: SecretNames,
    /// False with `--query full`: queries are exported as sent.
    pub queries: bool,
}

impl Processor for Redact {
    fn process(&mut self, span: &mut Span) -> bool {
        for (k, v) in span.attributes.iter_mut() {
            let AttrValue::Str(s) = v else { continue };
            let new = match *k {
                "url.query" if self.queries => self.names.query(s),
                "url.full" if self.queries => self.names.url(s),
                "url.full" => self.url_keeping_query(s),
                "url.path" => self.names.path(s),
                _ => continue,
            };
            if let Cow::Owned(new) = new {
                *s = new.into();
            }
        }
        true
    }
}

impl Redact {
    /// `url.full` redacted but for its query (`--query full`).
    fn url_keeping_query<'a>(&self, url: &'a str) -> Cow<'a, str> {
        let Some((before, query)) = url.split_once('?') else {
            return self.names.url(url);
        };
        match self.names.url(before) {
            Cow::Borrowed(_) => Cow::Borrowed(url),
            Cow::Owned(b) => Cow::Owned(format!("{b}?{query}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> SecretNames {
        SecretNames::with_extra(&["Tenant-Pin".to_owned()])
    }

    #[test]
    fn semconv_and_usual_query_keys() {
        let n = names();
        assert_eq!(
            n.query("AWSAccessKeyId=A&Signature=B&sig=C&X-Goog-Signature=D&page=2"),
            "AWSAccessKeyId=REDACTED&Signature=REDACTED&sig=REDACTED&X-Goog-Signature=REDACTED&page=2"
        );
        assert_eq!(
            n.query("access_token=a&api%5Fkey=b&client_secret=c&q=rust&flag&tenant_pin=1"),
            "access_token=REDACTED&api%5Fkey=REDACTED&client_secret=REDACTED&q=rust&flag&tenant_pin=REDACTED"
        );
        assert!(matches!(n.query("q=rust&page=2"), Cow::Borrowed(_)));
    }

    #[test]
    fn urls_lose_user_info_and_secret_values() {
        let n = names();
        assert_eq!(
            n.url("https://bob:hunter2@example.com:8443/a;jsessionid=S1/b?token=T&x=1"),
            "https://REDACTED:REDACTED@example.com:8443/a;jsessionid=REDACTED/b?token=REDACTED&x=1"
        );
        assert!(matches!(
            n.url("http://example.com/a/b?x=1"),
            Cow::Borrowed(_)
        ));
        let keep = Redact {
            names: n,
            queries: false,
        };
        assert_eq!(
            keep.url_keeping_query("http://u:p@h/p?token=T"),
            "http://REDACTED:REDACTED@h/p?token=T"
        );
    }

    #[test]
    fn path_parameters() {
        let n = names();
        assert_eq!(
            n.path("/cart;JSESSIONID=abc;v=2/items"),
            "/cart;JSESSIONID=REDACTED;v=2/items"
        );
        assert!(matches!(n.path("/m;v=2/x"), Cow::Borrowed(_)));
    }

    #[test]
    fn command_lines() {
        let args = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
        let n = names();
        assert_eq!(
            n.command_line(&args("app --password=p1 --token t2 -v --db-password=p3 PGPASSWORD=p4 --port 80")),
            "app --password=REDACTED --token REDACTED -v --db-password=REDACTED PGPASSWORD=REDACTED --port 80"
        );
        assert_eq!(
            n.command_line(&args("curl --user bob:pw http://a:b@h/x?sig=s&page=2")),
            "curl --user REDACTED http://REDACTED:REDACTED@h/x?sig=REDACTED&page=2"
        );
        assert_eq!(
            n.command_line(&[
                "curl".into(),
                "-H".into(),
                "Authorization: Bearer abc".into()
            ]),
            "curl -H Authorization: REDACTED"
        );
        assert_eq!(n.command_line(&args("app --auth -v")), "app --auth -v");
    }

    #[test]
    fn the_processor_rewrites_only_url_attributes() {
        use crate::export::test_support::{resource, span};
        let mut s = span(&resource(1, "svc"), 1, 1, None);
        s.attributes = vec![
            ("url.query", "password=x".into()),
            ("url.full", "http://h/p?password=x".into()),
            ("user_agent.original", "password=x".into()),
        ];
        let mut r = Redact {
            names: names(),
            queries: true,
        };
        assert!(r.process(&mut s));
        assert_eq!(s.attr("url.query"), Some(&"password=REDACTED".into()));
        assert_eq!(
            s.attr("url.full"),
            Some(&"http://h/p?password=REDACTED".into())
        );
        assert_eq!(s.attr("user_agent.original"), Some(&"password=x".into()));
    }
}
