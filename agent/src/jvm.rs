//! How the kernel tells a running JVM's Java threads apart (see
//! `ebpf/src/java.rs`): from the JVM's own `gHotSpotVMStructs`, the table of
//! field offsets HotSpot exports for its serviceability agent, and from
//! libjvm's symbol table, read once the JVM runs (at the process's first
//! connection). Java before 21 has no virtual threads: its OS threads own
//! their requests, as any thread's.

use std::{collections::HashMap, fs::File, os::unix::fs::FileExt, path::PathBuf};

use anyhow::{bail, ensure, Context, Result};
use clew_common::JavaThreadLayout;
use memmap2::Mmap;
use object::{Object, ObjectSymbol};

/// How a process's requests are to be counted.
#[derive(Debug, PartialEq, Eq)]
pub enum Jvm {
    /// Per Java thread, the kernel reading which runs where as `layout` says.
    JavaThreads(JavaThreadLayout),
    /// Per process: virtual threads may run, but which one runs where
    /// cannot be read (no symbol table in libjvm, not x86-64, a layout not
    /// understood), and a carrier thread serves many.
    Process,
}

/// Entries read from `gHotSpotVMStructs` at most (Java 25 has about 1,000).
const MAX_ENTRIES: usize = 20_000;
/// Entries read in one call.
const ENTRIES_READ: usize = 64;

/// `java_lang_Thread::_tid_offset`, a local in libjvm's `.symtab`.
const TID_OFFSET: &str = "_ZN16java_lang_Thread11_tid_offsetE";

/// `None` when `pid` runs no JVM, or one without virtual threads.
pub fn inspect(pid: u32) -> Option<Jvm> {
    let (base, path) = libjvm(pid)?;
    match layout(pid, base, &path) {
        Ok(None) => None,
        Ok(Some(l)) if cfg!(target_arch = "x86_64") => Some(Jvm::JavaThreads(l)),
        Ok(Some(_)) => Some(Jvm::Process),
        Err(e) => {
            tracing::info!(
                pid,
                "JVM's threads not readable, its requests count per process: {e:#}"
            );
            Some(Jvm::Process)
        }
    }
}

/// Where libjvm.so is loaded in `pid` (the mapping of its first bytes),
/// and its path as seen from here.
fn libjvm(pid: u32) -> Option<(u64, PathBuf)> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let line = maps.lines().find(|l| {
        let mut f = l.split_whitespace();
        let offset = f.nth(2);
        let path = f.nth(2);
        offset.is_some_and(|o| o.bytes().all(|b| b == b'0'))
            && path.is_some_and(|p| p.ends_with("/libjvm.so"))
    })?;
    let start = u64::from_str_radix(line.split('-').next()?, 16).ok()?;
    let path = line.split_whitespace().nth(5)?.trim_start_matches('/');
    Some((start, PathBuf::from(format!("/proc/{pid}/root")).join(path)))
}

/// The layout, `None` for a JVM without `JavaThread::_vthread` (before 21).
fn layout(pid: u32, base: u64, path: &PathBuf) -> Result<Option<JavaThreadLayout>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: read-only mapping; a file changed under us gives wrong
    // offsets, which the kernel's check of every read rejects.
    let data = unsafe { Mmap::map(&file) }?;
    let elf = object::File::parse(&*data)?;
    let mem = Memory {
        file: File::open(format!("/proc/{pid}/mem")).context("opening the JVM's memory")?,
    };
    let symbol = |name: &str| {
        elf.dynamic_symbols()
            .chain(elf.symbols())
            .find(|s| s.name() == Ok(name))
            .map(|s| base + s.address())
    };
    let global = |name: &str| -> Result<u64> {
        mem.u64(symbol(name).with_context(|| format!("no symbol {name}"))?)
    };
    let table = VmStructs {
        first: global("gHotSpotVMStructs")?,
        stride: global("gHotSpotVMStructEntryArrayStride")?,
        type_name: global("gHotSpotVMStructEntryTypeNameOffset")?,
        field_name: global("gHotSpotVMStructEntryFieldNameOffset")?,
        offset: global("gHotSpotVMStructEntryOffsetOffset")?,
    };
    let fields = table.read(&mem, &["Thread", "JavaThread", "OSThread"])?;
    let find = |types: &[&str], field: &str| {
        fields
            .iter()
            .find(|(t, f, _)| types.contains(&t.as_str()) && f == field)
            .map(|(_, _, o)| *o)
    };
    let Some(vthread) = find(&["JavaThread"], "_vthread") else {
        return Ok(None);
    };
    let osthread = find(&["Thread", "JavaThread"], "_osthread").context("no Thread::_osthread")?;
    let os_tid = find(&["OSThread"], "_thread_id").context("no OSThread::_thread_id")?;
    let tid_at = symbol(TID_OFFSET).context("no java_lang_Thread::_tid_offset in libjvm")?;
    let java_tid = mem.u32(tid_at)?;
    // Filled in as the JVM starts: 0 before.
    ensure!(java_tid != 0, "java_lang_Thread::_tid_offset not set yet");
    let small = |v: u64| u32::try_from(v).ok().filter(|v| *v < 1 << 16);
    match (small(osthread), small(os_tid), small(vthread)) {
        (Some(osthread), Some(os_tid), Some(vthread)) => Ok(Some(JavaThreadLayout {
            osthread,
            os_tid,
            vthread,
            java_tid,
        })),
        _ => bail!("implausible offsets {osthread} {os_tid} {vthread}"),
    }
}

/// A process's memory.
struct Memory {
    file: File,
}

impl Memory {
    fn bytes<const N: usize>(&self, at: u64) -> Result<[u8; N]> {
        let mut b = [0; N];
        self.file
            .read_exact_at(&mut b, at)
            .with_context(|| format!("reading the JVM's memory at {at:#x}"))?;
        Ok(b)
    }

    /// Up to `n` bytes at `at`: fewer where the mapping ends.
    fn read(&self, at: u64, n: usize) -> Result<Vec<u8>> {
        let mut b = vec![0; n];
        let got = self
            .file
            .read_at(&mut b, at)
            .with_context(|| format!("reading the JVM's memory at {at:#x}"))?;
        b.truncate(got);
        Ok(b)
    }

    fn u64(&self, at: u64) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes(at)?))
    }

    fn u32(&self, at: u64) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes(at)?))
    }

    /// The NUL-terminated name at `at` (names in vmStructs are short).
    fn name(&self, at: u64) -> Result<String> {
        let mut b = [0; 64];
        let n = self
            .file
            .read_at(&mut b, at)
            .with_context(|| format!("reading the JVM's memory at {at:#x}"))?;
        let end = b[..n].iter().position(|c| *c == 0).unwrap_or(n);
        Ok(String::from_utf8_lossy(&b[..end]).into_owned())
    }
}

/// Where `gHotSpotVMStructs`' entries and their fields are.
struct VmStructs {
    first: u64,
    stride: u64,
    type_name: u64,
    field_name: u64,
    offset: u64,
}

impl VmStructs {
    /// (type, field, offset) of the entries of `types`, up to the entry
    /// with no type: entries read 64 at a time, each type's name once per
    /// address (the compiler pools them), field names only for `types`.
    fn read(&self, mem: &Memory, types: &[&str]) -> Result<Vec<(String, String, u64)>> {
        let stride = usize::try_from(self.stride)?;
        let fits = |at: u64| usize::try_from(at).is_ok_and(|at| at + 8 <= stride);
        ensure!(
            stride <= 1024
                && [self.type_name, self.field_name, self.offset]
                    .iter()
                    .all(|a| fits(*a)),
            "implausible vmStructs entries ({} bytes)",
            self.stride
        );
        let word = |entry: &[u8], at: u64| {
            let at = at as usize;
            u64::from_le_bytes(entry[at..at + 8].try_into().expect("8 bytes"))
        };
        let mut type_names: HashMap<u64, String> = HashMap::new();
        let mut out = Vec::new();
        for first in (0..MAX_ENTRIES).step_by(ENTRIES_READ) {
            let chunk = mem.read(self.first + (first * stride) as u64, ENTRIES_READ * stride)?;
            ensure!(chunk.len() >= stride, "vmStructs ends unterminated");
            for entry in chunk.chunks_exact(stride) {
                let at = word(entry, self.type_name);
                if at == 0 {
                    return Ok(out);
                }
                let type_name = match type_names.get(&at) {
                    Some(t) => t,
                    None => type_names.entry(at).or_insert(mem.name(at)?),
                };
                if types.contains(&type_name.as_str()) {
                    out.push((
                        type_name.clone(),
                        mem.name(word(entry, self.field_name))?,
                        word(entry, self.offset),
                    ));
                }
            }
        }
        bail!("vmStructs has no end within {MAX_ENTRIES} entries")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        io::{BufRead, BufReader},
        process::{Command, Stdio},
    };

    /// Debian's Java 17 (the e2e tests' `java`): its vmStructs are read to
    /// the end, and lack `JavaThread::_vthread`, so its threads keep their
    /// requests as any thread's.
    #[test]
    fn java_17_is_nested_per_thread() {
        let dir = std::env::temp_dir().join(format!("clew-jvm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let source = dir.join("Wait.java");
        std::fs::write(
            &source,
            "class Wait { public static void main(String[] a) throws Exception \
             { System.out.println(\"up\"); Thread.sleep(60000); } }",
        )
        .unwrap();
        let mut java = Command::new("java")
            .arg(&source)
            .stdout(Stdio::piped())
            .spawn()
            .expect("java (apt-get install openjdk-17-jdk-headless)");
        let mut line = String::new();
        BufReader::new(java.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let found = libjvm(java.id());
        let read = found
            .as_ref()
            .map(|(base, path)| layout(java.id(), *base, path));
        let inspected = inspect(java.id());
        let _ = java.kill();
        let _ = java.wait();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(line.trim(), "up");
        assert!(found.is_some(), "libjvm.so not found in the JVM's maps");
        assert_eq!(read.unwrap().unwrap(), None);
        assert_eq!(inspected, None);
    }
}
