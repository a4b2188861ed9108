//! Head sampling as configured by `OTEL_TRACES_SAMPLER(_ARG)`. The decision
//! for a new trace is a pure function of its trace id, so every Clew in a
//! fleet (and any OpenTelemetry SDK with the same rule and ratio) agrees on
//! it. Two rules:
//!
//! - `traceidratio`: the classic SDK rule, the trace id's low 8 bytes
//!   below `ratio * 2^64`.
//! - `probability`: the specification's `ProbabilitySampler` (consistent
//!   probability sampling, W3C Trace Context Level 2 randomness): the trace
//!   id's low 7 bytes at or above the rejection threshold
//!   `(1 - ratio) * 2^56`, rounded to 4 hexadecimal digits as the
//!   specification recommends; sampled spans carry it as `th` in the `ot`
//!   member of their `tracestate`.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::{
    processor::Processor,
    span::{Span, TraceId},
};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
    Probability(Threshold),
    /// Follows a remote parent's sampled flag; roots use the inner rule.
    ParentBased(Root),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Root {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
    Probability(Threshold),
}

/// A consistent-probability rejection threshold: a trace is kept when its
/// 56-bit randomness is at or above it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Threshold(u64);

/// 2^56: no randomness reaches it (probability 0).
const NEVER: u64 = 1 << 56;
/// Hexadecimal digits of precision, the specification's recommended default.
const PRECISION: i32 = 4;

impl Threshold {
    /// Per the specification's `ProbabilityToThresholdWithPrecision`: the
    /// rejection probability written as a float in [1, 2), whose 13
    /// mantissa digits are the threshold's, rounded to [`PRECISION`]
    /// significant digits (more for probabilities near zero).
    pub fn from_probability(p: f64) -> Threshold {
        if p >= 1.0 {
            return Threshold(0);
        }
        if p <= 0.0 {
            return Threshold(NEVER);
        }
        let (_, exp) = frexp(p);
        // Python's `exp // -4` (floor division) in the reference code.
        let precision = (PRECISION + (f64::from(exp) / -4.0).floor() as i32).clamp(1, 12);
        let rejection = 2.0 - p + 0.5 * 2f64.powi(-4 * precision);
        let mantissa = if rejection >= 2.0 {
            (1u64 << 52) - 1
        } else {
            rejection.to_bits() & ((1u64 << 52) - 1)
        };
        // Keep `precision` hex digits of the 13, then widen 52 bits to 56.
        let dropped = 4 * (13 - precision as u32);
        Threshold((mantissa >> dropped << dropped) << 4)
    }

    /// Whether a trace with this randomness is kept.
    pub fn keeps(self, trace_id: &TraceId) -> bool {
        randomness(trace_id) >= self.0
    }

    pub fn value(self) -> u64 {
        self.0
    }

    /// The `tracestate` of a new trace this threshold kept: its `ot` member.
    pub fn member(self) -> String {
        format!("ot=th:{}", self.th())
    }

    /// The `th` sub-key: 14 hex digits less trailing zeros (`0` for 100%).
    pub fn th(self) -> String {
        if self.0 == 0 {
            return "0".into();
        }
        let digits = format!("{:014x}", self.0.min(NEVER - 1));
        digits.trim_end_matches('0').to_owned()
    }
}

/// The trace id's low 7 bytes (W3C Trace Context Level 2's random part).
fn randomness(trace_id: &TraceId) -> u64 {
    let mut low = [0u8; 8];
    low[1..].copy_from_slice(&trace_id[9..]);
    u64::from_be_bytes(low)
}

/// `p = m * 2^exp` with `m` in [0.5, 1), for finite positive `p`.
fn frexp(p: f64) -> (f64, i32) {
    let exp = p.log2().floor() as i32 + 1;
    (p / 2f64.powi(exp), exp)
}

/// A sampler's name in `OTEL_TRACES_SAMPLER` and in the file's
/// `sampling.sampler`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplerName {
    AlwaysOn,
    AlwaysOff,
    #[serde(rename = "traceidratio")]
    TraceIdRatio,
    Probability,
    #[default]
    ParentbasedAlwaysOn,
    ParentbasedAlwaysOff,
    #[serde(rename = "parentbased_traceidratio")]
    ParentbasedTraceIdRatio,
    ParentbasedProbability,
}

/// A sampling ratio, between 0 and 1 (`OTEL_TRACES_SAMPLER_ARG`).
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Ratio(f64);

impl Ratio {
    pub const ONE: Ratio = Ratio(1.0);

    pub fn parse(text: &str) -> Result<Ratio> {
        let r: f64 = text
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("{text:?} is not a number"))?;
        Ratio::try_from(r)
    }
}

impl TryFrom<f64> for Ratio {
    type Error = anyhow::Error;

    fn try_from(r: f64) -> Result<Ratio> {
        if !(0.0..=1.0).contains(&r) {
            bail!("{r} is not a ratio between 0 and 1");
        }
        Ok(Ratio(r))
    }
}

impl From<Ratio> for f64 {
    fn from(r: Ratio) -> f64 {
        r.0
    }
}

impl Sampler {
    /// The sampler a name and ratio describe; the ratio only matters to the
    /// ratio and probability samplers.
    pub fn new(name: SamplerName, ratio: Ratio) -> Self {
        let (r, threshold) = (ratio.0, Threshold::from_probability(ratio.0));
        match name {
            SamplerName::AlwaysOn => Sampler::AlwaysOn,
            SamplerName::AlwaysOff => Sampler::AlwaysOff,
            SamplerName::TraceIdRatio => Sampler::TraceIdRatio(r),
            SamplerName::Probability => Sampler::Probability(threshold),
            SamplerName::ParentbasedAlwaysOn => Sampler::ParentBased(Root::AlwaysOn),
            SamplerName::ParentbasedAlwaysOff => Sampler::ParentBased(Root::AlwaysOff),
            SamplerName::ParentbasedTraceIdRatio => Sampler::ParentBased(Root::TraceIdRatio(r)),
            SamplerName::ParentbasedProbability => {
                Sampler::ParentBased(Root::Probability(threshold))
            }
        }
    }

    /// `parent_sampled` is the sampled flag of an incoming context, if any.
    pub fn sample(&self, trace_id: &TraceId, parent_sampled: Option<bool>) -> bool {
        match (self, parent_sampled) {
            (Sampler::AlwaysOn, _) => true,
            (Sampler::AlwaysOff, _) => false,
            (Sampler::TraceIdRatio(r), _) => ratio(trace_id, *r),
            (Sampler::Probability(t), _) => t.keeps(trace_id),
            (Sampler::ParentBased(_), Some(p)) => p,
            (Sampler::ParentBased(Root::AlwaysOn), None) => true,
            (Sampler::ParentBased(Root::AlwaysOff), None) => false,
            (Sampler::ParentBased(Root::TraceIdRatio(r)), None) => ratio(trace_id, *r),
            (Sampler::ParentBased(Root::Probability(t)), None) => t.keeps(trace_id),
        }
    }

    /// The threshold of the `probability` rule that decides new traces.
    pub fn root_threshold(&self) -> Option<Threshold> {
        match self {
            Sampler::Probability(t) | Sampler::ParentBased(Root::Probability(t)) => Some(*t),
            _ => None,
        }
    }

    /// The `th` a span sampled by this sampler carries, when Clew's own
    /// rule decided it: every span for `probability`, roots for
    /// `parentbased_probability` (a child follows its parent's decision,
    /// and its parent's `tracestate`).
    pub fn threshold_for(&self, has_parent: bool) -> Option<Threshold> {
        match self {
            Sampler::Probability(t) => Some(*t),
            Sampler::ParentBased(Root::Probability(t)) if !has_parent => Some(*t),
            _ => None,
        }
    }
}

/// Writes the `probability` sampler's threshold into the `tracestate` of
/// the spans its rule keeps, so that backends can weigh them (adjusted
/// count) and later samplers stay consistent with it. A span whose context
/// an application made itself (its SDK's `traceparent` on a request) was
/// kept by the application: it gets the threshold only if the rule keeps
/// its trace too, which is what a consistent sampler downstream checks.
pub struct RecordThreshold {
    pub sampler: Sampler,
}

impl Processor for RecordThreshold {
    fn process(&mut self, span: &mut Span) -> bool {
        let threshold = self
            .sampler
            .threshold_for(span.parent_span_id.is_some())
            .filter(|t| t.keeps(&span.trace_id));
        if let Some(t) = threshold {
            span.trace_state = with_threshold(&span.trace_state, &t.th());
        }
        true
    }
}

/// `tracestate` with `th:{th}` in its `ot` member, which moves to the
/// front (W3C: an updated member goes first); other members stay as they were.
fn with_threshold(tracestate: &str, th: &str) -> String {
    let mut ot = format!("ot=th:{th}");
    let mut others = Vec::new();
    for member in tracestate
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        match member.strip_prefix("ot=") {
            Some(subkeys) => {
                for sub in subkeys
                    .split(';')
                    .filter(|k| !k.starts_with("th:") && !k.is_empty())
                {
                    ot.push(';');
                    ot.push_str(sub);
                }
            }
            None => others.push(member),
        }
    }
    // W3C allows 32 members: the oldest (rightmost) gives way.
    others.truncate(31);
    std::iter::once(ot.as_str())
        .chain(others)
        .collect::<Vec<_>>()
        .join(",")
}

/// The sampler as the kernel programs apply it when they decide the ids of
/// a new span (globals `SAMPLE_*` in ebpf/src/context.rs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelSampling {
    /// 1: every new trace is sampled.
    pub always: u32,
    /// Otherwise sampled when the trace id's low 8 bytes are below this
    /// (`traceidratio`), or its low 7 bytes at or above it (`probability`).
    pub threshold: u64,
    /// 1: an incoming sampled flag decides.
    pub parent_based: u32,
    /// 1: the `probability` rule.
    pub consistent: u32,
    /// `ot=th:…`, the `tracestate` of the new traces that rule keeps, and
    /// its length (0 for other rules).
    pub th_state: [u8; 24],
    pub th_len: u32,
}

impl Sampler {
    pub fn kernel(&self) -> KernelSampling {
        let (root, parent_based) = match *self {
            Sampler::AlwaysOn => (Root::AlwaysOn, 0),
            Sampler::AlwaysOff => (Root::AlwaysOff, 0),
            Sampler::TraceIdRatio(r) => (Root::TraceIdRatio(r), 0),
            Sampler::Probability(t) => (Root::Probability(t), 0),
            Sampler::ParentBased(root) => (root, 1),
        };
        let (always, threshold, consistent) = match root {
            Root::AlwaysOn => (1, u64::MAX, 0),
            Root::AlwaysOff => (0, 0, 0),
            Root::TraceIdRatio(r) => ((r >= 1.0) as u32, (r * u64::MAX as f64) as u64, 0),
            Root::Probability(t) => ((t.value() == 0) as u32, t.value(), 1),
        };
        let mut th_state = [0; 24];
        let member = self
            .root_threshold()
            .map(Threshold::member)
            .unwrap_or_default();
        th_state[..member.len()].copy_from_slice(member.as_bytes());
        KernelSampling {
            always,
            threshold,
            parent_based,
            consistent,
            th_state,
            th_len: member.len() as u32,
        }
    }
}

/// Same rule as the OpenTelemetry SDKs: the trace id's low 8 bytes, read
/// big-endian, below `ratio * 2^64`.
fn ratio(trace_id: &TraceId, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let low = u64::from_be_bytes(trace_id[8..].try_into().expect("8 bytes"));
    let bound = (ratio * u64::MAX as f64) as u64;
    low < bound
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sampler `OTEL_TRACES_SAMPLER=name` and `_ARG=ratio` configure.
    fn named(name: &str, ratio: f64) -> Sampler {
        let name = crate::config::env::named(name).unwrap();
        Sampler::new(name, Ratio::try_from(ratio).unwrap())
    }

    fn id(low: u64) -> TraceId {
        let mut t = [0xaa; 16];
        t[8..].copy_from_slice(&low.to_be_bytes());
        t
    }

    #[test]
    fn default_is_parent_based_always_on() {
        let s = Sampler::new(SamplerName::default(), Ratio::ONE);
        assert_eq!(s, Sampler::ParentBased(Root::AlwaysOn));
        assert!(s.sample(&id(1), None));
        assert!(!s.sample(&id(1), Some(false)));
    }

    #[test]
    fn ratio_is_a_function_of_the_trace_id() {
        let s = named("traceidratio", 0.25);
        assert!(s.sample(&id(u64::MAX / 8), None));
        assert!(!s.sample(&id(u64::MAX / 2), None));
        // Ignores the parent: only parentbased_* honour it.
        assert!(!s.sample(&id(u64::MAX / 2), Some(true)));
        let kept = (0..10_000u64)
            .filter(|i| s.sample(&id(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)), None))
            .count();
        assert!((2_000..3_000).contains(&kept), "{kept}");
    }

    #[test]
    fn parent_based_ratio_honours_the_parent() {
        let s = named("parentbased_traceidratio", 0.0);
        assert!(s.sample(&id(0), Some(true)));
        assert!(!s.sample(&id(0), None));
    }

    #[test]
    fn kernel_parameters_match_the_userspace_rule() {
        let k = named("parentbased_traceidratio", 0.5).kernel();
        assert_eq!((k.always, k.parent_based), (0, 1));
        assert_eq!(k.threshold, u64::MAX / 2 + 1);
        assert_eq!(Sampler::AlwaysOn.kernel().always, 1);
        assert_eq!(
            Sampler::AlwaysOff.kernel(),
            KernelSampling {
                always: 0,
                threshold: 0,
                parent_based: 0,
                consistent: 0,
                th_state: [0; 24],
                th_len: 0,
            }
        );
        let k = named("probability", 0.25).kernel();
        assert_eq!(
            (k.always, k.threshold, k.consistent),
            (0, 0xc0_0000_0000_0000, 1)
        );
        assert_eq!(&k.th_state[..k.th_len as usize], b"ot=th:c");
        // The longest th (14 digits) fits.
        let k = named("parentbased_probability", 0.0000001).kernel();
        assert!(k.th_len > 12 && k.th_len <= 20, "{}", k.th_len);
    }

    /// The specification's table (precision 4): 1-in-N and its `th`.
    #[test]
    fn thresholds_match_the_specification() {
        for (p, th) in [
            (1.0, "0"),
            (0.5, "8"),
            (0.25, "c"),
            (0.1, "e666"),
            (0.01, "fd70a"),
            (1.0 / 3.0, "aaab"),
            (0.001, "ffbe77"),
            (0.0001, "fff9724"),
            (0.000001, "ffffef39"),
        ] {
            assert_eq!(Threshold::from_probability(p).th(), th, "{p}");
        }
        assert!(!Threshold::from_probability(0.0).keeps(&[0xff; 16]));
    }

    #[test]
    fn probability_keeps_randomness_at_or_above_the_threshold() {
        let s = named("probability", 0.25);
        let with_randomness = |r: u64| {
            let mut t = [0x11; 16];
            t[9..].copy_from_slice(&r.to_be_bytes()[1..]);
            t
        };
        assert!(s.sample(&with_randomness(0xc0_0000_0000_0000), None));
        assert!(!s.sample(&with_randomness(0xbf_ffff_ffff_ffff), None));
        // Byte 8 is not part of the randomness.
        let mut t = with_randomness(0xc0_0000_0000_0000);
        t[8] = 0;
        assert!(s.sample(&t, None));
        assert_eq!(s.threshold_for(true).unwrap().th(), "c");
        let pb = named("parentbased_probability", 0.25);
        assert!(pb.sample(&with_randomness(0), Some(true)));
        assert_eq!(pb.threshold_for(true), None);
        assert_eq!(pb.threshold_for(false).unwrap().th(), "c");
        assert_eq!(Sampler::AlwaysOn.threshold_for(false), None);
    }

    #[test]
    fn the_threshold_goes_into_the_ot_member() {
        assert_eq!(with_threshold("", "c"), "ot=th:c");
        assert_eq!(with_threshold("vendor=x", "c"), "ot=th:c,vendor=x");
        assert_eq!(
            with_threshold("vendor=x,ot=rv:6e6d1a75832a2f;th:8", "c"),
            "ot=th:c;rv:6e6d1a75832a2f,vendor=x"
        );
        let mut span = crate::export::test_support::span(
            &crate::export::test_support::resource(1, "svc"),
            1,
            1,
            None,
        );
        span.trace_id[9..].copy_from_slice(&[0xff; 7]);
        let sampler = named("parentbased_probability", 0.01);
        assert!(RecordThreshold { sampler }.process(&mut span));
        assert_eq!(span.trace_state, "ot=th:fd70a");
        // Kept by an application, not by the rule: no threshold.
        span.trace_state.clear();
        span.trace_id[9..].copy_from_slice(&[0; 7]);
        assert!(RecordThreshold { sampler }.process(&mut span));
        assert_eq!(span.trace_state, "");
    }

    #[test]
    fn rejects_bad_configuration() {
        assert!(crate::config::env::named::<SamplerName>("jaeger_remote").is_err());
        assert!(Ratio::parse("2").is_err());
        assert!(Ratio::parse("half").is_err());
        assert_eq!(named("always_off", 1.0), Sampler::AlwaysOff);
    }
}
