//! Fuzzes what the agent reads about other processes' containers and pods:
//! `/proc/PID/cgroup` text (any bytes as lossy UTF-8) and Kubernetes watch
//! lines down to the cached pod. Neither may panic; an identity found must
//! hold well-formed ids.
#![no_main]

use clew::cgroup::identity;
use clew::k8s::{client, pod::Pod};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let text = String::from_utf8_lossy(input);
    let id = identity::from_proc_cgroup(&text);
    if let Some(c) = &id.container_id {
        assert!(c.len() == 64 && c.bytes().all(|b| b.is_ascii_hexdigit()));
    }
    if let Some(uid) = &id.pod_uid {
        assert!(uid.len() == 32 || uid.len() == 36, "{uid}");
    }
    if let Ok(Some(client::Event::Upsert(w) | client::Event::Delete(w))) = client::decode_event(input) {
        let pod = Pod::from_wire(*w);
        let _ = pod.service_name();
        let _ = pod.container_name(id.container_id.as_deref());
    }
});
