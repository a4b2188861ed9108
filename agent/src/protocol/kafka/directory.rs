//! Facts one Kafka connection learns that spans on another need: a
//! client asks for metadata (topic ids) and joins its group on the
//! bootstrap or coordinator connection, then produces and fetches on the
//! partition leaders' connections.

use std::collections::HashMap;

use super::wire::Topic;

/// Topic ids remembered at most; past this the map starts over (a fetch
/// by id then names no topic until the client's next metadata refresh).
const MAX_TOPICS: usize = 65536;
const MAX_PROCESSES: usize = 16384;

#[derive(Default)]
pub struct Directory {
    topics: HashMap<[u8; 16], String>,
    /// The consumer group of each client process; `None` once a process
    /// used two (its fetches could be for either).
    groups: HashMap<u32, Option<String>>,
}

impl Directory {
    pub fn note_topic(&mut self, id: [u8; 16], name: String) {
        if self.topics.len() >= MAX_TOPICS && !self.topics.contains_key(&id) {
            self.topics.clear();
        }
        self.topics.insert(id, name);
    }

    pub fn topic_name(&self, t: &Topic) -> Option<String> {
        match t {
            Topic::Name(n) => Some(n.clone()),
            Topic::Id(id) => self.topics.get(id).cloned(),
        }
    }

    pub fn note_group(&mut self, tgid: u32, group: String) {
        if self.groups.len() >= MAX_PROCESSES && !self.groups.contains_key(&tgid) {
            self.groups.clear();
        }
        let known = self
            .groups
            .entry(tgid)
            .or_insert_with(|| Some(group.clone()));
        if known.as_deref().is_some_and(|g| g != group) {
            *known = None;
        }
    }

    pub fn group(&self, tgid: u32) -> Option<String> {
        self.groups.get(&tgid).cloned().flatten()
    }

    /// A process exited: its group goes with it.
    pub fn forget_process(&mut self, tgid: u32) {
        self.groups.remove(&tgid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_with_two_groups_names_none() {
        let mut d = Directory::default();
        d.note_group(1, "a".into());
        d.note_group(1, "a".into());
        assert_eq!(d.group(1).as_deref(), Some("a"));
        d.note_group(1, "b".into());
        assert_eq!(d.group(1), None);
        d.note_group(1, "a".into());
        assert_eq!(d.group(1), None);
    }

    #[test]
    fn topic_ids_resolve_once_named() {
        let mut d = Directory::default();
        let id = Topic::Id([1; 16]);
        assert_eq!(d.topic_name(&id), None);
        d.note_topic([1; 16], "orders".into());
        assert_eq!(d.topic_name(&id).as_deref(), Some("orders"));
        assert_eq!(d.topic_name(&Topic::Name("x".into())).as_deref(), Some("x"));
    }
}
