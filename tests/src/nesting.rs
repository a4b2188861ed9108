//! Nesting accuracy as a user sees it in a backend: for each request, is
//! the CLIENT span it caused a child of its SERVER span, marked as
//! uncertain, a root, or confidently under the wrong parent?

use crate::check::max_overlap;
use crate::receiver::{RecvSpan, Value};
use anyhow::{ensure, Result};
use std::fmt;

/// The attribute Clew sets on a CLIENT span whose parent it cannot be sure
/// of (the span is then a root, linked to the candidate).
pub const AMBIGUOUS: &str = "clew.parent.ambiguous";
/// The attribute Clew sets on a CLIENT span whose parent it inferred from
/// the request line (a proxy forwarding the one open request like it).
pub const INFERRED: &str = "clew.parent.inferred";

/// What the CLIENT span of each request says about its parent.
#[derive(Debug, Default)]
pub struct Tally {
    pub requests: usize,
    /// Child of its own request's SERVER span, unmarked.
    pub correct: usize,
    /// Marked ambiguous (a root linked to a candidate).
    pub ambiguous: usize,
    /// Marked inferred, under its own request's SERVER span.
    pub inferred: usize,
    /// Marked inferred, under another span: wrong, but said so.
    pub inferred_wrong: usize,
    /// A root with nothing said: the request's call is missing from its trace.
    pub roots: usize,
    /// Child of another request's span, or of nothing seen, unmarked: a
    /// silently wrong tree.
    pub wrong: usize,
    /// Downstream SERVER spans that are not the children of their CLIENT
    /// span (or, behind a proxy forwarding `traceparent`, of the proxy's
    /// caller) in its trace: the call's trace broken on the next hop.
    pub downstream_broken: usize,
    /// Most SERVER spans open at one instant.
    pub overlap: usize,
    /// Examples of wrong parents, for the failure message.
    pub wrong_examples: Vec<String>,
}

impl Tally {
    /// Classifies request i's CLIENT span (`client(i)`) against its SERVER
    /// span (`server(i)`), for i in 0..`requests`, and checks that the
    /// downstream's SERVER span (`downstream(i)`) is the call's child; each
    /// must be exactly one span in `spans`.
    pub fn measure(
        spans: &[RecvSpan],
        requests: usize,
        server: impl Fn(&RecvSpan, usize) -> bool,
        client: impl Fn(&RecvSpan, usize) -> bool,
        downstream: impl Fn(&RecvSpan, usize) -> bool,
    ) -> Result<Tally> {
        let mut t = Tally {
            requests,
            ..Tally::default()
        };
        let mut servers = Vec::new();
        for i in 0..requests {
            let one = |pick: &dyn Fn(&RecvSpan) -> bool, what: &str| -> Result<&RecvSpan> {
                let found: Vec<&RecvSpan> = spans.iter().filter(|s| pick(s)).collect();
                ensure!(
                    found.len() == 1,
                    "request {i}: {} {what} spans: {found:?}",
                    found.len()
                );
                Ok(found[0])
            };
            let srv = one(&|s| server(s, i), "SERVER")?;
            let cli = one(&|s| client(s, i), "CLIENT")?;
            let down = one(&|s| downstream(s, i), "downstream SERVER")?;
            servers.push(srv);
            // A proxy that forwards its request's `traceparent` unchanged
            // gives the downstream its caller's span as parent.
            let forwarded =
                srv.parent_span_id.is_some() && down.parent_span_id == srv.parent_span_id;
            let under_call = down.parent_span_id.as_deref() == Some(&cli.span_id);
            if down.trace_id != cli.trace_id || !(under_call || forwarded) {
                t.downstream_broken += 1;
            }
            let marked = |k: &str| cli.attrs.get(k) == Some(&Value::Bool(true));
            let right =
                cli.trace_id == srv.trace_id && cli.parent_span_id.as_deref() == Some(&srv.span_id);
            if marked(AMBIGUOUS) {
                t.ambiguous += 1;
            } else if marked(INFERRED) {
                if right {
                    t.inferred += 1;
                } else {
                    t.inferred_wrong += 1;
                }
            } else if cli.parent_span_id.is_none() {
                t.roots += 1;
            } else if right {
                t.correct += 1;
            } else {
                t.wrong += 1;
                if t.wrong_examples.len() < 5 {
                    t.wrong_examples
                        .push(format!("  server: {srv}\n  client: {cli}\n"));
                }
            }
        }
        t.overlap = max_overlap(&servers);
        Ok(t)
    }

    /// Correct share, in percent.
    pub fn correct_pct(&self) -> f64 {
        self.pct(self.correct)
    }

    /// Share of right parents, sure or inferred, in percent.
    pub fn right_pct(&self) -> f64 {
        self.pct(self.correct + self.inferred)
    }

    fn pct(&self, n: usize) -> f64 {
        100.0 * n as f64 / self.requests.max(1) as f64
    }

    /// The checks every runtime must pass: requests overlapped (else the
    /// test proved nothing), no call is confidently misparented, and at
    /// least `min_correct_pct` are exactly right.
    pub fn ensure(&self, min_correct_pct: f64) -> Result<()> {
        ensure!(
            self.overlap >= 8,
            "{self}: requests hardly overlapped, the test did not exercise concurrency"
        );
        ensure!(
            self.downstream_broken == 0,
            "{self}: downstream SERVER spans not under their CLIENT span"
        );
        ensure!(
            self.wrong == 0,
            "{self}: {} CLIENT spans confidently under a wrong parent, e.g.:\n{}",
            self.wrong,
            self.wrong_examples.concat()
        );
        ensure!(
            self.correct_pct() >= min_correct_pct,
            "{self}: fewer than {min_correct_pct}% correctly nested"
        );
        Ok(())
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} requests (up to {} in flight): {} correctly nested ({:.1}%), {} marked ambiguous, {} marked inferred ({} of them wrongly), {} unmarked roots, {} confidently wrong; {} downstream spans not under their call",
            self.requests,
            self.overlap,
            self.correct,
            self.correct_pct(),
            self.ambiguous,
            self.inferred + self.inferred_wrong,
            self.inferred_wrong,
            self.roots,
            self.wrong,
            self.downstream_broken
        )
    }
}
