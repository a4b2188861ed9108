//! A metric series' key: the attributes every measurement is looked up by.

use std::{
    hash::{Hash, Hasher},
    ops::Deref,
};

use crate::span::Attributes;

/// The attributes of one series. Their keys are the conventions' names,
/// in an order fixed per instrument, so a series is told apart by its
/// values: only values are hashed, and keys, nearly always the same
/// `&'static str`, are compared by address before their text. Hashing and
/// comparing every key's text was most of a measurement's lookup.
#[derive(Debug, Clone)]
pub struct SeriesKey(pub Attributes);

impl Hash for SeriesKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_usize(self.0.len());
        for (_, value) in &self.0 {
            value.hash(h);
        }
    }
}

impl PartialEq for SeriesKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self.0.iter().zip(&other.0).all(|((ka, va), (kb, vb))| {
                va == vb && (std::ptr::eq(*ka as *const str, *kb as *const str) || ka == kb)
            })
    }
}

impl Eq for SeriesKey {}

impl Deref for SeriesKey {
    type Target = Attributes;

    fn deref(&self) -> &Attributes {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    fn key(attrs: &[(&'static str, i64)]) -> SeriesKey {
        SeriesKey(attrs.iter().map(|&(k, v)| (k, v.into())).collect())
    }

    #[test]
    fn keys_are_equal_by_text_wherever_it_lives() {
        let copy = String::from("http.response.status_code").leak();
        let a = key(&[("http.response.status_code", 200)]);
        let b = key(&[(copy, 200)]);
        assert_eq!(a, b);
        let state = foldhash::fast::FixedState::default();
        assert_eq!(state.hash_one(&a), state.hash_one(&b));
    }

    #[test]
    fn keys_and_values_both_tell_series_apart() {
        let a = key(&[("a", 1)]);
        assert_ne!(a, key(&[("b", 1)]));
        assert_ne!(a, key(&[("a", 2)]));
        assert_ne!(a, key(&[("a", 1), ("b", 1)]));
    }
}
