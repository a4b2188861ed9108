//! Which traced processes have their requests counted per process rather
//! than per thread: Go executables, whose goroutines move between threads
//! (a request read on one thread is answered, and its calls written, from
//! others, and `net/http` writes requests from its transport's goroutines).

use std::collections::HashMap;

use memmap2::Mmap;
use object::Object;

/// Processes remembered at most; forgotten wholesale beyond (they are then
/// looked at again).
const MAX_PROCESSES: usize = 65536;

#[derive(Default)]
pub struct Runtimes {
    /// Whether each process seen nests per process.
    by_process: HashMap<u32, bool>,
}

impl Runtimes {
    /// Whether process `tgid` nests per process, when it was not known
    /// yet (`None` once known: the answer was already acted on).
    pub fn learn(&mut self, tgid: u32) -> Option<bool> {
        if self.by_process.contains_key(&tgid) {
            return None;
        }
        if self.by_process.len() >= MAX_PROCESSES {
            self.by_process.clear();
        }
        let go = is_go(tgid);
        self.by_process.insert(tgid, go);
        Some(go)
    }

    /// The process exited or exec'd: whether it nested per process.
    pub fn forget(&mut self, tgid: u32) -> bool {
        self.by_process.remove(&tgid).unwrap_or(false)
    }
}

/// Whether `/proc/PID/exe` was built by Go: its runtime's sections are
/// there even in stripped executables.
fn is_go(pid: u32) -> bool {
    let Ok(file) = std::fs::File::open(format!("/proc/{pid}/exe")) else {
        return false;
    };
    // SAFETY: read-only mapping of an executable; a file changed under us
    // gives a wrong answer, not unsoundness the parser would act on.
    let Ok(data) = (unsafe { Mmap::map(&file) }) else {
        return false;
    };
    object::File::parse(&*data).is_ok_and(|elf| {
        elf.section_by_name(".go.buildinfo").is_some()
            || elf.section_by_name(".gopclntab").is_some()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_is_not_go() {
        let mut r = Runtimes::default();
        assert_eq!(r.learn(std::process::id()), Some(false));
        assert_eq!(r.learn(std::process::id()), None);
        assert!(!r.forget(std::process::id()));
    }
}
