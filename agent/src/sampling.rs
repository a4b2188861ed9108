//! Head sampling as configured by `OTEL_TRACES_SAMPLER(_ARG)`. The decision
//! for a new trace is a pure function of its trace id, so every Clew in a
//! fleet (and any OpenTelemetry SDK with the same ratio) agrees on it.

use anyhow::{bail, Result};

use crate::span::TraceId;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
    /// Follows a remote parent's sampled flag; roots use the inner rule.
    ParentBased(Root),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Root {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
}

impl Sampler {
    /// Reads the standard variables; unset means `parentbased_always_on`.
    pub fn from_env(name: Option<&str>, arg: Option<&str>) -> Result<Self> {
        let ratio = || -> Result<f64> {
            let Some(a) = arg else { return Ok(1.0) };
            match a.trim().parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => bail!("OTEL_TRACES_SAMPLER_ARG={a:?} is not a ratio between 0 and 1"),
            }
        };
        Ok(
            match name.map(str::trim).unwrap_or("parentbased_always_on") {
                "always_on" => Sampler::AlwaysOn,
                "always_off" => Sampler::AlwaysOff,
                "traceidratio" => Sampler::TraceIdRatio(ratio()?),
                "parentbased_always_on" => Sampler::ParentBased(Root::AlwaysOn),
                "parentbased_always_off" => Sampler::ParentBased(Root::AlwaysOff),
                "parentbased_traceidratio" => Sampler::ParentBased(Root::TraceIdRatio(ratio()?)),
                other => bail!("unsupported OTEL_TRACES_SAMPLER={other:?}"),
            },
        )
    }

    /// `parent_sampled` is the sampled flag of an incoming context, if any.
    pub fn sample(&self, trace_id: &TraceId, parent_sampled: Option<bool>) -> bool {
        match (self, parent_sampled) {
            (Sampler::AlwaysOn, _) => true,
            (Sampler::AlwaysOff, _) => false,
            (Sampler::TraceIdRatio(r), _) => ratio(trace_id, *r),
            (Sampler::ParentBased(_), Some(p)) => p,
            (Sampler::ParentBased(Root::AlwaysOn), None) => true,
            (Sampler::ParentBased(Root::AlwaysOff), None) => false,
            (Sampler::ParentBased(Root::TraceIdRatio(r)), None) => ratio(trace_id, *r),
        }
    }
}

/// The sampler as the kernel programs apply it when they decide the ids of
/// a new span (globals `SAMPLE_*` in ebpf/src/context.rs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelSampling {
    /// 1: every new trace is sampled.
    pub always: u32,
    /// Otherwise sampled when the trace id's low 8 bytes are below this.
    pub threshold: u64,
    /// 1: an incoming sampled flag decides.
    pub parent_based: u32,
}

impl Sampler {
    pub fn kernel(&self) -> KernelSampling {
        let (root_ratio, parent_based) = match *self {
            Sampler::AlwaysOn => (1.0, 0),
            Sampler::AlwaysOff => (0.0, 0),
            Sampler::TraceIdRatio(r) => (r, 0),
            Sampler::ParentBased(Root::AlwaysOn) => (1.0, 1),
            Sampler::ParentBased(Root::AlwaysOff) => (0.0, 1),
            Sampler::ParentBased(Root::TraceIdRatio(r)) => (r, 1),
        };
        KernelSampling {
            always: (root_ratio >= 1.0) as u32,
            threshold: (root_ratio * u64::MAX as f64) as u64,
            parent_based,
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

    fn id(low: u64) -> TraceId {
        let mut t = [0xaa; 16];
        t[8..].copy_from_slice(&low.to_be_bytes());
        t
    }

    #[test]
    fn default_is_parent_based_always_on() {
        let s = Sampler::from_env(None, None).unwrap();
        assert_eq!(s, Sampler::ParentBased(Root::AlwaysOn));
        assert!(s.sample(&id(1), None));
        assert!(!s.sample(&id(1), Some(false)));
    }

    #[test]
    fn ratio_is_a_function_of_the_trace_id() {
        let s = Sampler::from_env(Some("traceidratio"), Some("0.25")).unwrap();
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
        let s = Sampler::from_env(Some("parentbased_traceidratio"), Some("0")).unwrap();
        assert!(s.sample(&id(0), Some(true)));
        assert!(!s.sample(&id(0), None));
    }

    #[test]
    fn kernel_parameters_match_the_userspace_rule() {
        let k = Sampler::from_env(Some("parentbased_traceidratio"), Some("0.5"))
            .unwrap()
            .kernel();
        assert_eq!((k.always, k.parent_based), (0, 1));
        assert_eq!(k.threshold, u64::MAX / 2 + 1);
        assert_eq!(Sampler::AlwaysOn.kernel().always, 1);
        assert_eq!(
            Sampler::AlwaysOff.kernel(),
            KernelSampling {
                always: 0,
                threshold: 0,
                parent_based: 0
            }
        );
    }

    #[test]
    fn rejects_bad_configuration() {
        assert!(Sampler::from_env(Some("jaeger_remote"), None).is_err());
        assert!(Sampler::from_env(Some("traceidratio"), Some("2")).is_err());
        assert_eq!(
            Sampler::from_env(Some("always_off"), None).unwrap(),
            Sampler::AlwaysOff
        );
    }
}
