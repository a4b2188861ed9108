//! What TLS implementation a mapped file is, and where OpenSSL's entry
//! points sit in it. Decided from the file name and its ELF symbols only;
//! nothing is executed.

use std::path::Path;

use anyhow::{Context, Result};
use object::{Object, ObjectSection, ObjectSymbol};

use super::{
    go::{self, GoTls},
    internal,
};
use crate::capture::{GoTlsOffsets, Plan, SslOffsets};

/// A TLS implementation found in a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Library {
    /// OpenSSL (libssl, or an executable that exports its API, like `node`).
    OpenSsl(SslOffsets),
    /// Go's crypto/tls in an executable with its symbol table.
    GoTls(GoTlsOffsets),
    /// A TLS stack Clew cannot hook; its name, for the log and `clew probe`.
    Unsupported(&'static str),
}

impl Library {
    /// The probes that hook it, if Clew can.
    pub fn plan(&self) -> Option<Plan> {
        match self {
            Library::OpenSsl(o) => Some(o.plan()),
            Library::GoTls(o) => Some(o.plan()),
            Library::Unsupported(_) => None,
        }
    }

    /// Its name in the log and `clew probe`.
    pub fn name(&self) -> &'static str {
        match self {
            Library::OpenSsl(_) => "OpenSSL",
            Library::GoTls(_) => "Go crypto/tls",
            Library::Unsupported(what) => what,
        }
    }
}

/// Libraries known by name only, so that their processes are reported
/// rather than silently missed.
fn by_name(file_name: &str) -> Option<&'static str> {
    let rules: &[(&str, &str)] = &[
        ("libgnutls.so", "GnuTLS"),
        // NSS's libssl3.so, not OpenSSL's libssl.so.3.
        ("libssl3.so", "NSS"),
        ("libjvm.so", "Java JSSE"),
        ("libwolfssl.so", "wolfSSL"),
        ("libmbedtls.so", "Mbed TLS"),
        // grpcio's wheels link BoringSSL statically, without symbols.
        ("cygrpc.", "BoringSSL inside grpcio"),
    ];
    rules
        .iter()
        .find(|(prefix, _)| file_name.starts_with(prefix))
        .map(|&(_, what)| what)
}

/// Whether a mapped file is worth opening: TLS libraries by name, and the
/// process's executable (static OpenSSL, Go, rustls).
pub fn interesting(file_name: &str, is_exe: bool) -> bool {
    is_exe || file_name.starts_with("libssl.so") || by_name(file_name).is_some()
}

/// Inspects one file (`path` as the agent can open it).
pub fn inspect(path: &Path, file_name: &str) -> Result<Option<Library>> {
    if let Some(what) = by_name(file_name) {
        return Ok(Some(Library::Unsupported(what)));
    }
    // Mapped, not read: executables with OpenSSL inside (node) run to
    // 100 MB, and only their symbol tables are looked at.
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: read-only view; a file changed under us yields wrong offsets
    // (the attach then fails and is reported), not undefined behaviour in
    // safe code, since `object` only reads bytes.
    let data = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("mapping {}", path.display()))?;
    let elf = object::File::parse(&*data).with_context(|| format!("parsing {}", path.display()))?;
    Ok(classify(&elf, file_name.starts_with("libssl.so")))
}

fn classify(elf: &object::File<'_>, is_libssl: bool) -> Option<Library> {
    if let Some(offsets) = openssl_offsets(elf) {
        return Some(Library::OpenSsl(offsets));
    }
    if is_libssl {
        return Some(Library::Unsupported("libssl without symbols (BoringSSL?)"));
    }
    if elf.section_by_name(".go.buildinfo").is_some() {
        return go::inspect(elf).map(|g| match g {
            GoTls::Hookable(o) => Library::GoTls(o),
            GoTls::NotHookable(why) => Library::Unsupported(why),
        });
    }
    let rustls = elf
        .symbols()
        .chain(elf.dynamic_symbols())
        .any(|s| s.name().is_ok_and(|n| n.contains("6rustls")));
    rustls.then_some(Library::Unsupported("rustls"))
}

/// OpenSSL's entry points, from the dynamic symbols (they survive
/// stripping), else the full symbol table; one pass over each.
fn openssl_offsets(elf: &object::File<'_>) -> Option<SslOffsets> {
    const NAMES: [&str; 5] = [
        "SSL_read",
        "SSL_write",
        "SSL_read_ex",
        "SSL_write_ex",
        "SSL_free",
    ];
    // (file offset, virtual address) of each.
    let mut found: [Option<(u64, u64)>; 5] = [None; 5];
    for table in [elf.dynamic_symbols(), elf.symbols()] {
        for sym in table.filter(|s| s.is_definition()) {
            let Ok(name) = sym.name() else { continue };
            if let Some(i) = NAMES.iter().position(|n| *n == name) {
                found[i] = found[i].or_else(|| Some((file_offset(elf, &sym)?, sym.address())));
            }
        }
        if found[0].is_some() && found[1].is_some() {
            break;
        }
    }
    let core = |int: Option<(u64, u64)>, ex: Option<(u64, u64)>| {
        internal::shared_callee(elf, int?.1, ex?.1)
    };
    Some(SslOffsets {
        read: found[0]?.0,
        write: found[1]?.0,
        read_ex: found[2].map(|f| f.0),
        write_ex: found[3].map(|f| f.0),
        free: found[4].map(|f| f.0),
        read_core: core(found[0], found[2]),
        write_core: core(found[1], found[3]),
    })
}

/// Where a symbol's code sits in the file (uprobes take file offsets).
pub(crate) fn file_offset(elf: &object::File<'_>, sym: &object::Symbol<'_, '_>) -> Option<u64> {
    let section = elf.section_by_index(sym.section_index()?).ok()?;
    let (file_off, _) = section.file_range()?;
    Some(sym.address() - section.address() + file_off)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_pick_what_to_open() {
        assert!(interesting("libssl.so.3", false));
        assert!(interesting("libssl.so.1.1", false));
        assert!(interesting("cygrpc.cpython-311-x86_64-linux-gnu.so", false));
        assert!(interesting("libgnutls.so.30", false));
        assert!(interesting("anything", true));
        assert!(!interesting("libc.so.6", false));
        assert!(!interesting("libcrypto.so.3", false));
    }

    #[test]
    fn nss_is_not_openssl() {
        let lib = inspect(Path::new("/nonexistent"), "libssl3.so").unwrap();
        assert_eq!(lib, Some(Library::Unsupported("NSS")));
    }

    #[test]
    fn an_executable_without_tls_is_nothing() {
        let lib = inspect(Path::new("/bin/true"), "true").unwrap();
        assert_eq!(lib, None);
    }

    #[test]
    fn rustls_is_named_as_unsupported() {
        // This test binary links rustls (the exporter's TLS).
        let me = std::env::current_exe().unwrap();
        let lib = inspect(&me, "test-binary").unwrap();
        assert_eq!(lib, Some(Library::Unsupported("rustls")));
    }

    #[test]
    fn node_exports_openssl() {
        // Node.js links OpenSSL statically and exports its API.
        let node = std::fs::canonicalize("/usr/bin/node").expect("Node.js is installed");
        let lib = inspect(&node, "node").unwrap();
        assert!(matches!(lib, Some(Library::OpenSsl(_))), "{lib:?}");
    }

    #[test]
    fn openssl_offsets_point_at_the_functions() {
        // Debian's libssl3 (curl, Python and nginx use it); offsets must be
        // distinct and inside the file.
        let path = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        let meta = std::fs::metadata(path).expect("libssl3 is installed (apt-get install libssl3)");
        let Some(Library::OpenSsl(o)) = inspect(path, "libssl.so.3").unwrap() else {
            panic!("libssl.so.3 not recognised as OpenSSL");
        };
        let all = [
            o.read,
            o.write,
            o.read_ex.unwrap(),
            o.write_ex.unwrap(),
            o.free.unwrap(),
        ];
        for (i, a) in all.iter().enumerate() {
            assert!(*a > 0 && *a < meta.len(), "offset {a:#x} outside the file");
            assert!(!all[i + 1..].contains(a), "duplicate offset {a:#x}");
        }
    }
}
