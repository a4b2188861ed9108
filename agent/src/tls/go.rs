//! Go's crypto/tls in an executable: where `(*tls.Conn).Read` and `Write`
//! start and every RET inside them, for the probes in `ebpf/src/go_tls.rs`.
//!
//! Only amd64 executables of Go ≥ 1.17 (the register ABI the probes read)
//! that keep their symbol table qualify; the RETs are found by decoding
//! the functions' machine code, since a 0xC3 byte also occurs inside
//! other instructions.

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic};
use object::{Architecture, Object, ObjectSection, ObjectSymbol};

use crate::capture::{GoFn, GoTlsOffsets};

const READ: &str = "crypto/tls.(*Conn).Read";
const WRITE: &str = "crypto/tls.(*Conn).Write";

/// Go 1.17 moved amd64 to the register-based calling convention.
const MIN_VERSION: (u32, u32) = (1, 17);

/// A function with more RETs than this is not the small one we expect
/// (Write has 8 in Go 1.19); refusing beats attaching hundreds of probes.
const MAX_RETS: usize = 64;

/// What a Go executable's crypto/tls allows.
#[derive(Debug, PartialEq, Eq)]
pub enum GoTls {
    Hookable(GoTlsOffsets),
    /// Why not, for the log and `clew probe`.
    NotHookable(&'static str),
}

/// `None` when the executable does not use crypto/tls.
pub fn inspect(elf: &object::File<'_>) -> Option<GoTls> {
    let read = find(elf, READ);
    let write = find(elf, WRITE);
    if read.is_none() && write.is_none() {
        // Stripped executables keep function names in .gopclntab.
        return uses_tls_stripped(elf).then_some(GoTls::NotHookable(
            "Go crypto/tls (no symbol table: stripped)",
        ));
    }
    if elf.architecture() != Architecture::X86_64 {
        return Some(GoTls::NotHookable("Go crypto/tls (not amd64)"));
    }
    match version(elf) {
        Some(v) if v >= MIN_VERSION => {}
        Some(_) => return Some(GoTls::NotHookable("Go crypto/tls (Go < 1.17: stack ABI)")),
        None => return Some(GoTls::NotHookable("Go crypto/tls (unknown Go version)")),
    }
    let offsets = read.zip(write).and_then(|(r, w)| {
        Some(GoTlsOffsets {
            read: code(elf, &r)?,
            write: code(elf, &w)?,
        })
    });
    Some(match offsets {
        Some(o) => GoTls::Hookable(o),
        None => GoTls::NotHookable("Go crypto/tls (Read/Write code not decodable)"),
    })
}

/// Whether the executable passes arguments in registers (Go ≥ 1.17 on
/// amd64), as Clew's Go uprobes read them.
pub(crate) fn register_abi(elf: &object::File<'_>) -> bool {
    elf.architecture() == Architecture::X86_64 && version(elf).is_some_and(|v| v >= MIN_VERSION)
}

pub(crate) fn find<'d, 'f>(
    elf: &'f object::File<'d>,
    name: &str,
) -> Option<object::Symbol<'d, 'f>> {
    elf.symbols()
        .find(|s| s.is_definition() && s.name() == Ok(name))
}

/// The function's entry and RETs as file offsets.
fn code(elf: &object::File<'_>, sym: &object::Symbol<'_, '_>) -> Option<GoFn> {
    let (entry, rets) = instructions(elf, sym, |ins| ins.mnemonic() == Mnemonic::Ret)?;
    (!rets.is_empty() && rets.len() <= MAX_RETS).then_some(GoFn { entry, rets })
}

/// File offsets of the CALL instructions in function `caller` that call
/// function `callee` directly; `None` when either is missing or the code
/// does not decode.
pub(crate) fn calls(elf: &object::File<'_>, caller: &str, callee: &str) -> Option<Vec<u64>> {
    let target = find(elf, callee)?.address();
    let (_, calls) = instructions(elf, &find(elf, caller)?, |ins| {
        ins.mnemonic() == Mnemonic::Call && ins.near_branch_target() == target
    })?;
    Some(calls)
}

/// The file offsets of function `sym` and of its instructions that `keep`
/// selects; `None` when its machine code does not decode.
fn instructions(
    elf: &object::File<'_>,
    sym: &object::Symbol<'_, '_>,
    keep: impl Fn(&Instruction) -> bool,
) -> Option<(u64, Vec<u64>)> {
    let section = elf.section_by_index(sym.section_index()?).ok()?;
    let (file_off, _) = section.file_range()?;
    let start = sym.address().checked_sub(section.address())?;
    let from = usize::try_from(start).ok()?;
    let bytes = section
        .data()
        .ok()?
        .get(from..from.checked_add(usize::try_from(sym.size()).ok()?)?)?;
    let to_file = |addr: u64| addr - section.address() + file_off;
    let mut out = Vec::new();
    for ins in Decoder::with_ip(64, bytes, sym.address(), DecoderOptions::NONE) {
        if ins.is_invalid() {
            return None;
        }
        if keep(&ins) {
            out.push(to_file(ins.ip()));
        }
    }
    Some((to_file(sym.address()), out))
}

fn uses_tls_stripped(elf: &object::File<'_>) -> bool {
    let Some(data) = elf
        .section_by_name(".gopclntab")
        .and_then(|s| s.data().ok())
    else {
        return false;
    };
    let needle = b"crypto/tls.(*Conn).";
    data.windows(needle.len()).any(|w| w == needle)
}

/// The Go release that built the executable, from `.go.buildinfo`:
/// Go ≥ 1.18 inlines the version string after a 32-byte header; older
/// releases point at a string header (pointer, length) instead.
fn version(elf: &object::File<'_>) -> Option<(u32, u32)> {
    let data = elf.section_by_name(".go.buildinfo")?.data().ok()?;
    if data.len() < 32 || !data.starts_with(b"\xff Go buildinf:") {
        return None;
    }
    let (ptr_size, flags) = (data[14], data[15]);
    const BIG_ENDIAN: u8 = 1;
    const INLINE: u8 = 2;
    let text: &[u8] = if flags & INLINE != 0 {
        let (len, n) = uvarint(&data[32..])?;
        data.get(32 + n..32 + n + usize::try_from(len).ok()?)?
    } else {
        if ptr_size != 8 || flags & BIG_ENDIAN != 0 {
            return None;
        }
        let header = read_at(elf, le64(data.get(16..24)?), 16)?;
        read_at(elf, le64(&header[..8]), le64(&header[8..]))?
    };
    parse_version(std::str::from_utf8(text).ok()?)
}

/// `go1.19.8` → (1, 19).
fn parse_version(s: &str) -> Option<(u32, u32)> {
    let mut parts = s.strip_prefix("go")?.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn uvarint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// `len` bytes at virtual address `addr`.
fn read_at<'d>(elf: &object::File<'d>, addr: u64, len: u64) -> Option<&'d [u8]> {
    elf.sections().find_map(|s| {
        let off = addr.checked_sub(s.address())?;
        let end = off.checked_add(len)?;
        (end <= s.size()).then_some(())?;
        s.data()
            .ok()?
            .get(usize::try_from(off).ok()?..usize::try_from(end).ok()?)
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::tls::Library;
    use std::{
        collections::HashMap,
        path::{Path, PathBuf},
        process::Command,
        sync::OnceLock,
    };

    /// The e2e tests' Go peer (`tests/peers/go_tls`), built once with
    /// uncompressed DWARF, and again stripped.
    pub(crate) fn peers() -> &'static (PathBuf, PathBuf) {
        static BUILT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
        BUILT.get_or_init(|| {
            // Under target/, reused (go build is incremental) and cleaned
            // with the rest of the build.
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/go-peers/unit");
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/peers/go_tls");
            let build = |name: &str, ldflags: &str| {
                let out = dir.join(name);
                let ok = Command::new("go")
                    .args(["build", "-ldflags", ldflags, "-o"])
                    .arg(&out)
                    .arg(".")
                    .current_dir(&src)
                    .env("GOCACHE", dir.join("cache"))
                    .env("GOPATH", dir.join("gopath"))
                    .env("GOFLAGS", "-mod=mod")
                    .status()
                    .expect("running go (apt-get install golang-go)")
                    .success();
                assert!(ok, "go build failed");
                out
            };
            (
                build("go_tls", "-compressdwarf=false"),
                build("go_tls_stripped", "-s -w"),
            )
        })
    }

    fn offsets(path: &Path) -> GoTlsOffsets {
        match crate::tls::library::inspect(path, "go_tls").unwrap() {
            Some(Library::GoTls(o)) => o,
            other => panic!("not hookable Go crypto/tls: {other:?}"),
        }
    }

    #[test]
    fn finds_read_and_write_with_every_ret() {
        let path = &peers().0;
        let o = offsets(path);
        let file = std::fs::read(path).unwrap();
        for (name, f) in [(READ, &o.read), (WRITE, &o.write)] {
            // Go's stack-growth check, `CMPQ 0x10(R14), SP` (or R12 after
            // a LEAQ for big frames), opens every function with a frame:
            // the entry offset is right and R14 holds g.
            let entry = usize::try_from(f.entry).unwrap();
            let prologue = &file[entry..entry + 12];
            assert!(
                prologue.windows(3).any(|w| w == [0x3b, 0x66, 0x10]),
                "{name} starts {prologue:02x?}"
            );
            for &r in &f.rets {
                assert_eq!(
                    file[usize::try_from(r).unwrap()],
                    0xc3,
                    "{name} RET at {r:#x}"
                );
            }
            // As many RETs as Go's own disassembler lists.
            let listing = Command::new("go")
                .args(["tool", "objdump", "-s"])
                .arg(format!("^{}$", regex_quote(name)))
                .arg(path)
                .output()
                .unwrap();
            let text = String::from_utf8(listing.stdout).unwrap();
            let want = text
                .lines()
                .filter(|l| l.trim_end().ends_with("RET"))
                .count();
            assert!(want > 0, "objdump listed nothing for {name}");
            assert_eq!(f.rets.len(), want, "{name}:\n{text}");
        }
    }

    fn regex_quote(s: &str) -> String {
        s.chars()
            .flat_map(|c| {
                let q = "().*".contains(c).then_some('\\');
                q.into_iter().chain([c])
            })
            .collect()
    }

    #[test]
    fn stripped_executables_are_reported_not_hooked() {
        let lib = crate::tls::library::inspect(&peers().1, "go_tls_stripped").unwrap();
        assert_eq!(
            lib,
            Some(Library::Unsupported(
                "Go crypto/tls (no symbol table: stripped)"
            ))
        );
    }

    #[test]
    fn conn_offsets_match_dwarf() {
        use clew_common::gotls::{CONN_IFACE_DATA, NETFD_SYSFD, TCPCONN_FD};
        let m = struct_members(&peers().0);
        let at = |s: &str, f: &str| {
            *m.get(&(s.to_string(), f.to_string()))
                .unwrap_or_else(|| panic!("{s}.{f} not in the DWARF"))
        };
        assert_eq!(
            CONN_IFACE_DATA,
            at("crypto/tls.Conn", "conn") + at("runtime.iface", "data")
        );
        assert_eq!(TCPCONN_FD, at("net.TCPConn", "conn") + at("net.conn", "fd"));
        assert_eq!(
            NETFD_SYSFD,
            at("net.netFD", "pfd") + at("internal/poll.FD", "Sysfd")
        );
    }

    /// (struct, field) → offset, for every struct in the DWARF.
    pub(crate) fn struct_members(path: &Path) -> HashMap<(String, String), u64> {
        use std::borrow::Cow;
        let data = std::fs::read(path).unwrap();
        let elf = object::File::parse(&*data).unwrap();
        let load = |id: gimli::SectionId| -> Result<Cow<'_, [u8]>, gimli::Error> {
            Ok(elf
                .section_by_name(id.name())
                .and_then(|s| s.data().ok())
                .map_or(Cow::Borrowed(&[][..]), Cow::Borrowed))
        };
        let sections = gimli::DwarfSections::load(load).unwrap();
        let dwarf = sections.borrow(|s| gimli::EndianSlice::new(s, gimli::LittleEndian));
        let mut out = HashMap::new();
        let mut units = dwarf.units();
        while let Some(header) = units.next().unwrap() {
            let unit = dwarf.unit(header).unwrap();
            let mut entries = unit.entries();
            let (mut depth, mut current) = (0isize, None::<(isize, String)>);
            while let Some((delta, e)) = entries.next_dfs().unwrap() {
                depth += delta;
                let name = || {
                    let v = e.attr_value(gimli::DW_AT_name).unwrap()?;
                    let s = dwarf.attr_string(&unit, v).ok()?;
                    Some(s.to_string_lossy().into_owned())
                };
                if current.as_ref().is_some_and(|(d, _)| depth <= *d) {
                    current = None;
                }
                if e.tag() == gimli::DW_TAG_structure_type {
                    current = name().map(|n| (depth, n));
                } else if e.tag() == gimli::DW_TAG_member {
                    let (Some((_, s)), Some(f)) = (&current, name()) else {
                        continue;
                    };
                    let off = e
                        .attr_value(gimli::DW_AT_data_member_location)
                        .unwrap()
                        .and_then(|v| v.udata_value());
                    if let Some(off) = off {
                        out.insert((s.clone(), f), off);
                    }
                }
            }
        }
        out
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("go1.19.8"), Some((1, 19)));
        assert_eq!(parse_version("go1.17"), Some((1, 17)));
        assert_eq!(parse_version("go1.22rc1"), Some((1, 22)));
        assert_eq!(parse_version("devel +abc"), None);
    }

    #[test]
    fn varints() {
        assert_eq!(uvarint(&[8]), Some((8, 1)));
        assert_eq!(uvarint(&[0x96, 0x01]), Some((150, 2)));
        assert_eq!(uvarint(&[0x80]), None);
    }
}
