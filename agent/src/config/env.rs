//! The agent's own environment, read once at start-up. `OTEL_*` variables
//! follow the OpenTelemetry specification: an invalid value is logged as a
//! warning naming the variable and ignored, so the next source (the file,
//! then the default) decides; a typo in a fleet-wide variable must not stop
//! every node's agent. Clew's own `CLEW_*` variables are errors, like flags.

use std::collections::HashMap;

use anyhow::{Context, Result};
use serde::de::{DeserializeOwned, IntoDeserializer};

pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    /// Variables that are not UTF-8 are left out: none of ours can be.
    pub fn from_process() -> Env {
        let vars = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        Env { vars }
    }

    pub fn from_pairs(pairs: &[(&str, &str)]) -> Env {
        let vars = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env { vars }
    }

    /// The value, unless unset or blank (the specification treats an empty
    /// variable as unset).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    /// An `OTEL_*` variable, parsed; `None` with a warning when invalid.
    pub fn otel<T>(&self, key: &str, parse: impl FnOnce(&str) -> Result<T>) -> Option<T> {
        let value = self.get(key)?;
        parse(value)
            .map_err(|e| tracing::warn!(variable = key, "ignoring invalid value: {e:#}"))
            .ok()
    }

    /// A `CLEW_*` variable, parsed; an error naming it when invalid.
    pub fn clew<T>(&self, key: &str, parse: impl FnOnce(&str) -> Result<T>) -> Result<Option<T>> {
        self.get(key)
            .map(|v| parse(v).with_context(|| format!("environment variable {key}={v:?}")))
            .transpose()
    }
}

/// A value of a type the file names by string (an enum such as
/// `grpc`), read from a variable with the same spelling.
pub fn named<T: DeserializeOwned>(value: &str) -> Result<T> {
    let de: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
        value.trim().into_deserializer();
    Ok(T::deserialize(de)?)
}

/// A comma-separated list; blanks between commas are skipped.
pub fn list<T>(value: &str, item: impl Fn(&str) -> Result<T>) -> Result<Vec<T>> {
    value
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(item)
        .collect()
}

/// The specification's boolean: `true` or `false`, any case.
pub fn boolean(value: &str) -> Result<bool> {
    match value.trim() {
        v if v.eq_ignore_ascii_case("true") => Ok(true),
        v if v.eq_ignore_ascii_case("false") => Ok(false),
        v => anyhow::bail!("{v:?} is not true or false"),
    }
}

pub fn millis(value: &str) -> Result<std::time::Duration> {
    let ms = value
        .trim()
        .parse()
        .with_context(|| format!("{value:?} is not a number of milliseconds"))?;
    Ok(std::time::Duration::from_millis(ms))
}

/// A number of at least 1.
pub fn count(value: &str) -> Result<std::num::NonZeroUsize> {
    value
        .trim()
        .parse()
        .with_context(|| format!("{value:?} is not a count of at least 1"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::QueryMode;

    #[test]
    fn blank_is_unset_and_bad_otel_values_are_ignored() {
        let env = Env::from_pairs(&[("A", " "), ("OTEL_X", "ten"), ("CLEW_X", "ten")]);
        assert_eq!(env.get("A"), None);
        assert_eq!(env.otel("OTEL_X", millis), None);
        let err = env.clew("CLEW_X", millis).unwrap_err();
        assert!(format!("{err:#}").contains("CLEW_X=\"ten\""), "{err:#}");
    }

    #[test]
    fn named_values_and_lists() {
        assert_eq!(named::<QueryMode>(" full").unwrap(), QueryMode::Full);
        assert!(named::<QueryMode>("all").is_err());
        assert_eq!(
            list("a, ,b,", |s| Ok(s.to_owned())).unwrap(),
            vec!["a", "b"]
        );
        assert!(boolean("TRUE").unwrap());
        assert!(boolean("yes").is_err());
    }
}
