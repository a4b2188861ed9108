//! `http.route` from request paths, so that metrics get one series per
//! route instead of one per URL. User patterns (`/users/{id}`) win; the
//! rest is templated automatically: identifier-looking segments become
//! `{id}`, and a path position that takes more than
//! [`MAX_VALUES_PER_POSITION`] distinct values becomes `{param}`.

use std::hash::BuildHasher;

use compact_str::CompactString;
use foldhash::HashMap;

use anyhow::{bail, Result};

use crate::{
    processor::Processor,
    span::{AttrValue, Span, SpanKind},
};

/// Distinct literal segments one position may take before it collapses.
pub const MAX_VALUES_PER_POSITION: usize = 32;
/// Positions tracked per agent; past it, new positions collapse at once
/// (bounding the memory automatic templating takes).
const MAX_POSITIONS: usize = 2048;
/// Segments longer than this are taken for identifiers (tokens, slugs of
/// generated content), and never stored.
const MAX_LITERAL_LEN: usize = 48;
/// Segments from this long with digits and letters mixed look random.
const RANDOM_MIN_LEN: usize = 12;

/// A user route template: `/`-separated literal segments and `{name}`
/// placeholders, each matching exactly one segment.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Pattern {
    text: String,
    segments: Vec<Option<String>>,
}

impl TryFrom<String> for Pattern {
    type Error = anyhow::Error;

    fn try_from(text: String) -> Result<Self> {
        Pattern::parse(&text)
    }
}

impl From<Pattern> for String {
    fn from(p: Pattern) -> String {
        p.text
    }
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        let Some(rest) = text.strip_prefix('/') else {
            bail!("route {text:?} must start with /");
        };
        let segments = rest
            .split('/')
            .map(|s| {
                if s.starts_with('{') && s.ends_with('}') && s.len() > 2 {
                    Ok(None)
                } else if s.contains(['{', '}']) {
                    bail!("route {text:?}: a placeholder must be a whole segment, like {{id}}")
                } else {
                    Ok(Some(s.to_owned()))
                }
            })
            .collect::<Result<_>>()?;
        Ok(Pattern {
            text: text.to_owned(),
            segments,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn matches(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let mut parts = rest.split('/');
        self.segments.iter().all(|want| match (want, parts.next()) {
            (_, None) => false,
            (None, Some(got)) => !got.is_empty(),
            (Some(lit), Some(got)) => lit == got,
        }) && parts.next().is_none()
    }
}

/// The first user pattern `path` matches.
pub fn user_route<'p>(patterns: &'p [Pattern], path: &str) -> Option<&'p str> {
    patterns
        .iter()
        .find(|p| p.matches(path))
        .map(Pattern::as_str)
}

/// Names HTTP server spans after the user pattern their path matches
/// (`GET /users/{id}`) and sets their `http.route`. Automatic templates
/// stay out of spans: they are a guess, good for grouping metrics only.
pub struct RouteNames {
    pub patterns: Vec<Pattern>,
}

impl Processor for RouteNames {
    fn process(&mut self, span: &mut Span) -> bool {
        if span.kind != SpanKind::Server || self.patterns.is_empty() {
            return true;
        }
        let Some(AttrValue::Str(path)) = span.attr("url.path") else {
            return true;
        };
        let Some(route) = user_route(&self.patterns, path) else {
            return true;
        };
        let method = match span.attr("http.request.method") {
            Some(AttrValue::Str(m)) if m != "_OTHER" => m.as_ref(),
            _ => "HTTP",
        };
        span.name = format!("{method} {route}").into();
        span.attributes
            .push(("http.route", route.to_owned().into()));
        true
    }
}

/// Route templating for metric attributes.
pub struct Routes {
    patterns: Vec<Pattern>,
    auto: bool,
    /// The root position of each service's paths.
    roots: HashMap<Box<str>, u32>,
    /// Recent paths' templates.
    memo: Memo,
    /// Every path position seen, a tree: each maps the segments it keeps
    /// (literals and placeholders) to the position after them.
    positions: Vec<Position>,
}

#[derive(Default)]
struct Position {
    next: HashMap<Box<str>, u32>,
    /// Distinct literals seen here; past [`MAX_VALUES_PER_POSITION`], the
    /// position has collapsed and no new literal is kept.
    literals: usize,
}

impl Routes {
    pub fn new(patterns: Vec<Pattern>, auto: bool) -> Self {
        Routes {
            patterns,
            auto,
            roots: HashMap::default(),
            positions: Vec::new(),
            memo: Memo::default(),
        }
    }

    /// `http.route` for a server request of `service` to `path`; `None`
    /// when there is none to give (no pattern matched and automatic
    /// templating is off, or the path is not origin-form).
    pub fn route(&mut self, service: &str, path: &str) -> Option<CompactString> {
        if let Some(p) = user_route(&self.patterns, path) {
            return Some(p.into());
        }
        if !self.auto || !path.starts_with('/') {
            return None;
        }
        let root = match self.roots.get(service) {
            Some(&root) => Some(root),
            None => self.new_position().inspect(|&root| {
                self.roots.insert(service.into(), root);
            }),
        };
        let Some(root) = root else {
            return Some(self.template(None, path).into());
        };
        let learned = self.positions.len();
        if let Some(route) = self.memo.get(root, path, learned) {
            return Some(route.clone());
        }
        let route = CompactString::from(self.template(Some(root), path));
        self.memo.put(root, path, self.positions.len(), &route);
        Some(route)
    }

    /// The template of `path` from position `at`, learning its literals.
    fn template(&mut self, mut at: Option<u32>, path: &str) -> String {
        let mut route = String::with_capacity(path.len());
        // A char set, not a char: the single char's memchr set-up costs
        // more than these short segments take to scan.
        for segment in path[1..].split(['/']) {
            let id = looks_like_id(segment);
            let literal = at
                .filter(|_| !id)
                .and_then(|p| self.keep_literal(p, segment));
            let part = match literal {
                Some(_) => segment,
                None if id => "{id}",
                None => "{param}",
            };
            route.push('/');
            route.push_str(part);
            at = literal.or_else(|| at.and_then(|p| self.next(p, part)));
        }
        route
    }

    /// The position after `segment` kept literal at position `p`,
    /// remembered if new; `None` once the position has collapsed (or the
    /// table is full).
    fn keep_literal(&mut self, p: u32, segment: &str) -> Option<u32> {
        let pos = &self.positions[p as usize];
        if let Some(&next) = pos.next.get(segment) {
            return Some(next);
        }
        if pos.literals >= MAX_VALUES_PER_POSITION {
            return None;
        }
        let next = self.new_position()?;
        let pos = &mut self.positions[p as usize];
        pos.literals += 1;
        pos.next.insert(segment.into(), next);
        Some(next)
    }

    /// The position after `kept` at `p`; placeholders get theirs on first use.
    fn next(&mut self, p: u32, kept: &str) -> Option<u32> {
        if let Some(&n) = self.positions[p as usize].next.get(kept) {
            return Some(n);
        }
        let n = self.new_position()?;
        self.positions[p as usize].next.insert(kept.into(), n);
        Some(n)
    }

    /// `None` once the table is full: what lies deeper is not remembered,
    /// and its literals become `{param}`.
    fn new_position(&mut self) -> Option<u32> {
        if self.positions.len() >= MAX_POSITIONS {
            return None;
        }
        self.positions.push(Position::default());
        Some(self.positions.len() as u32 - 1)
    }
}

/// Paths' templates cached in slots chosen by hash (a newer path takes an
/// older one's slot): a service answers the same few paths over and over,
/// and templating one walks a position per segment. The tree of positions
/// only grows, and a template can only change when it does: an entry holds
/// while the count of positions is the one it was made with.
struct Memo {
    slots: Vec<Option<Memoized>>,
    hasher: foldhash::fast::FixedState,
}

struct Memoized {
    root: u32,
    positions: usize,
    path: CompactString,
    route: CompactString,
}

/// Slots of [`Memo`]: about 64 bytes each.
const MEMO_SLOTS: usize = 256;

impl Default for Memo {
    fn default() -> Self {
        Memo {
            slots: (0..MEMO_SLOTS).map(|_| None).collect(),
            hasher: Default::default(),
        }
    }
}

impl Memo {
    fn slot(&self, root: u32, path: &str) -> usize {
        self.hasher.hash_one((root, path)) as usize % MEMO_SLOTS
    }

    fn get(&self, root: u32, path: &str, positions: usize) -> Option<&CompactString> {
        let m = self.slots[self.slot(root, path)].as_ref()?;
        (m.root == root && m.positions == positions && m.path == path).then_some(&m.route)
    }

    fn put(&mut self, root: u32, path: &str, positions: usize, route: &CompactString) {
        let slot = self.slot(root, path);
        self.slots[slot] = Some(Memoized {
            root,
            positions,
            path: path.into(),
            route: route.clone(),
        });
    }
}

/// Numbers, UUIDs, hex strings and long random-looking tokens.
fn looks_like_id(s: &str) -> bool {
    if s.is_empty() {
        return false;
    }
    let digits = s.bytes().filter(u8::is_ascii_digit).count();
    if digits == s.len() || s.len() > MAX_LITERAL_LEN {
        return true;
    }
    let hex = s.bytes().all(|b| b.is_ascii_hexdigit());
    if hex && s.len() >= 8 && digits > 0 {
        return true;
    }
    if is_uuid(s) {
        return true;
    }
    let alnum = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b));
    alnum && s.len() >= RANDOM_MIN_LEN && digits >= 2 && digits < s.len()
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auto() -> Routes {
        Routes::new(Vec::new(), true)
    }

    #[test]
    fn identifiers_become_placeholders() {
        let mut r = auto();
        let mut route = |p| r.route("svc", p).unwrap();
        assert_eq!(route("/users/42"), "/users/{id}");
        assert_eq!(
            route("/orders/3f2b6c1e-9a4d-4c21-8f3e-1b2c3d4e5f60/items"),
            "/orders/{id}/items"
        );
        assert_eq!(route("/blobs/deadbeef0042"), "/blobs/{id}");
        assert_eq!(route("/s/aZ3kQ9pLm2xT"), "/s/{id}");
        assert_eq!(route("/health"), "/health");
        assert_eq!(route("/"), "/");
        // Words that happen to be hex are kept.
        assert_eq!(route("/facade"), "/facade");
    }

    #[test]
    fn placeholders_lead_to_their_own_positions() {
        let mut r = auto();
        assert_eq!(
            r.route("svc", "/users/1/orders").unwrap(),
            "/users/{id}/orders"
        );
        assert_eq!(
            r.route("svc", "/users/2/orders").unwrap(),
            "/users/{id}/orders"
        );
        assert_eq!(
            r.route("svc", "/users/3/items").unwrap(),
            "/users/{id}/items"
        );
    }

    #[test]
    fn three_hundred_users_are_one_route() {
        let mut r = auto();
        let routes: std::collections::HashSet<_> = (0..300)
            .map(|n| r.route("svc", &format!("/users/{n}")).unwrap())
            .collect();
        assert_eq!(routes.into_iter().collect::<Vec<_>>(), ["/users/{id}"]);
    }

    #[test]
    fn a_position_with_too_many_values_collapses() {
        let mut r = auto();
        let names: Vec<String> = (0..100).map(|i| format!("page-{}", word(i))).collect();
        let routes: std::collections::HashSet<_> = names
            .iter()
            .map(|n| r.route("svc", &format!("/docs/{n}/edit")).unwrap())
            .collect();
        assert_eq!(routes.len(), MAX_VALUES_PER_POSITION + 1);
        assert!(routes.contains("/docs/{param}/edit"));
        // Another service's positions are its own.
        assert_eq!(
            r.route("other", "/docs/page-x/edit").unwrap(),
            "/docs/page-x/edit"
        );
    }

    #[test]
    fn remembered_templates_are_the_ones_templating_gives() {
        let paths: Vec<String> = (0..300)
            .map(|i| match i % 3 {
                0 => format!("/docs/page-{}/edit", word(i / 3)),
                1 => format!("/docs/page-{}/edit", word(i % 7)),
                _ => format!("/users/{i}/cart"),
            })
            .collect();
        let (mut remembering, mut forgetting) = (auto(), auto());
        for p in paths.iter().chain(&paths) {
            forgetting.memo = Memo::default();
            assert_eq!(
                remembering.route("svc", p),
                forgetting.route("svc", p),
                "{p}"
            );
        }
        assert!(remembering.memo.slots.iter().any(Option::is_some));
    }

    #[test]
    fn the_position_table_is_bounded() {
        let mut r = auto();
        for i in 0..(MAX_POSITIONS * 2) {
            r.route(&format!("svc-{i}"), "/a/b");
        }
        assert!(r.positions.len() <= MAX_POSITIONS);
    }

    #[test]
    fn user_patterns_win_and_match_whole_segments() {
        let patterns = vec![
            Pattern::parse("/users/{id}").unwrap(),
            Pattern::parse("/users/{id}/orders/{order}").unwrap(),
        ];
        let mut r = Routes::new(patterns.clone(), false);
        assert_eq!(r.route("s", "/users/alice").as_deref(), Some("/users/{id}"));
        assert_eq!(
            r.route("s", "/users/alice/orders/7").as_deref(),
            Some("/users/{id}/orders/{order}")
        );
        assert_eq!(r.route("s", "/users/"), None);
        assert_eq!(r.route("s", "/users/alice/x"), None);
        assert_eq!(user_route(&patterns, "/users/bob"), Some("/users/{id}"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(Pattern::parse("users/{id}").is_err());
        assert!(Pattern::parse("/users/x{id}").is_err());
        assert!(Pattern::parse("/").is_ok());
    }

    #[test]
    fn server_spans_are_named_after_a_matching_pattern_only() {
        use crate::export::test_support::{resource, span};
        let mut names = RouteNames {
            patterns: vec![Pattern::parse("/users/{id}").unwrap()],
        };
        let mut s = span(&resource(1, "svc"), 1, 1, None);
        s.attributes = vec![
            ("http.request.method", "GET".into()),
            ("url.path", "/users/7".into()),
        ];
        assert!(names.process(&mut s));
        assert_eq!(s.name, "GET /users/{id}");
        assert_eq!(s.attr("http.route"), Some(&"/users/{id}".into()));
        let mut other = span(&resource(1, "svc"), 1, 2, None);
        other.attributes = vec![("url.path", "/orders/7".into())];
        let before = other.name.clone();
        assert!(names.process(&mut other));
        assert_eq!((&other.name, other.attr("http.route")), (&before, None));
    }

    /// Letters only, distinct per `i`.
    fn word(mut i: usize) -> String {
        let mut w = String::new();
        loop {
            w.push((b'a' + (i % 26) as u8) as char);
            i /= 26;
            if i == 0 {
                return w;
            }
        }
    }
}
