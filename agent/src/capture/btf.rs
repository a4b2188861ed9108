//! Just enough of a BTF reader to find where a kernel struct's field sits:
//! Rust eBPF has no CO-RE relocations, so the agent reads the running
//! kernel's type information (/sys/kernel/btf/vmlinux) and hands the
//! offsets its programs follow over at load time. (aya parses BTF too, but
//! keeps type and member lookups private.)

use std::path::Path;

/// The running kernel's BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;

mod kind {
    pub const INT: u8 = 1;
    pub const PTR: u8 = 2;
    pub const ARRAY: u8 = 3;
    pub const STRUCT: u8 = 4;
    pub const UNION: u8 = 5;
    pub const ENUM: u8 = 6;
    pub const FUNC_PROTO: u8 = 13;
    pub const VAR: u8 = 14;
    pub const DATASEC: u8 = 15;
    pub const DECL_TAG: u8 = 17;
    pub const ENUM64: u8 = 19;
    /// Qualifiers and aliases, seen through when sizing a field.
    pub const SEE_THROUGH: [u8; 5] = [8, 9, 10, 11, 18]; // typedef volatile const restrict type_tag
}

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {0}: {1}")]
    Io(String, std::io::Error),
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("no struct {0} in the kernel's BTF")]
    NoStruct(String),
    #[error("no field {0} in the kernel's BTF")]
    NoField(String),
    #[error("field {0} is a bitfield or not byte-aligned")]
    Unaligned(String),
}

#[derive(Clone, Copy)]
struct Type {
    kind: u8,
    /// Struct/union members are bitfield-encoded.
    kind_flag: bool,
    name: u32,
    /// Size (int, struct, union, enum) or the referenced type id.
    size_or_type: u32,
    /// Struct/union: its members are `members[first..first + vlen]`;
    /// array: its element type is `first`, `vlen` elements (u32, see `arrays`).
    first: u32,
    vlen: u32,
}

#[derive(Clone, Copy)]
struct Member {
    name: u32,
    ty: u32,
    /// Raw BTF member offset (bits, or bitfield-encoded).
    offset: u32,
}

/// Where a field sits and how large it is, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

pub struct Btf {
    /// Index = type id; id 0 is `void`.
    types: Vec<Type>,
    members: Vec<Member>,
    strings: Vec<u8>,
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, BtfError> {
    let s = b.get(at..at + 2).ok_or(BtfError::Malformed("truncated"))?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, BtfError> {
    let s = b.get(at..at + 4).ok_or(BtfError::Malformed("truncated"))?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

impl Btf {
    pub fn from_file(path: &Path) -> Result<Btf, BtfError> {
        let bytes = std::fs::read(path).map_err(|e| BtfError::Io(path.display().to_string(), e))?;
        Btf::parse(&bytes)
    }

    /// Parses little-endian BTF (the kernel's own, on the machines Clew runs on).
    pub fn parse(b: &[u8]) -> Result<Btf, BtfError> {
        if u16_at(b, 0)? != MAGIC {
            return Err(BtfError::Malformed("bad magic (or big-endian)"));
        }
        let hdr_len = u32_at(b, 4)? as usize;
        let section = |off: usize, len: usize| -> Result<&[u8], BtfError> {
            let start = hdr_len.max(HEADER_LEN) + u32_at(b, off)? as usize;
            let len = u32_at(b, len)? as usize;
            b.get(start..start + len)
                .ok_or(BtfError::Malformed("section past the end"))
        };
        let type_sec = section(8, 12)?;
        let strings = section(16, 20)?.to_vec();
        let mut types = vec![Type {
            kind: 0,
            kind_flag: false,
            name: 0,
            size_or_type: 0,
            first: 0,
            vlen: 0,
        }];
        let mut members = Vec::new();
        let mut at = 0;
        while at < type_sec.len() {
            let info = u32_at(type_sec, at + 4)?;
            let mut t = Type {
                kind: ((info >> 24) & 0x1f) as u8,
                kind_flag: info >> 31 == 1,
                name: u32_at(type_sec, at)?,
                size_or_type: u32_at(type_sec, at + 8)?,
                first: 0,
                vlen: info & 0xffff,
            };
            at += 12;
            let extra = match t.kind {
                kind::INT | kind::VAR | kind::DECL_TAG => 4,
                kind::ARRAY => {
                    t.first = u32_at(type_sec, at)?;
                    t.vlen = u32_at(type_sec, at + 8)?;
                    12
                }
                kind::STRUCT | kind::UNION => {
                    t.first = members.len() as u32;
                    for i in 0..t.vlen as usize {
                        let m = at + 12 * i;
                        members.push(Member {
                            name: u32_at(type_sec, m)?,
                            ty: u32_at(type_sec, m + 4)?,
                            offset: u32_at(type_sec, m + 8)?,
                        });
                    }
                    12 * t.vlen as usize
                }
                kind::ENUM | kind::FUNC_PROTO => 8 * t.vlen as usize,
                kind::DATASEC | kind::ENUM64 => 12 * t.vlen as usize,
                _ => 0,
            };
            at += extra;
            types.push(t);
        }
        Ok(Btf {
            types,
            members,
            strings,
        })
    }

    fn name(&self, off: u32) -> &[u8] {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    fn ty(&self, id: u32) -> Result<Type, BtfError> {
        self.types
            .get(id as usize)
            .copied()
            .ok_or(BtfError::Malformed("type id out of range"))
    }

    /// `id` with typedefs and qualifiers seen through.
    fn resolve(&self, mut id: u32) -> Result<Type, BtfError> {
        // Bounded: a malformed chain must not loop forever.
        for _ in 0..32 {
            let t = self.ty(id)?;
            if !kind::SEE_THROUGH.contains(&t.kind) {
                return Ok(t);
            }
            id = t.size_or_type;
        }
        Err(BtfError::Malformed("typedef chain too long"))
    }

    fn size(&self, id: u32) -> Result<u32, BtfError> {
        let t = self.resolve(id)?;
        Ok(match t.kind {
            kind::PTR => 8,
            kind::ARRAY => self.size(t.first)? * t.vlen,
            _ => t.size_or_type,
        })
    }

    /// Member `name` of struct/union `t`, also inside its anonymous
    /// members: (bit offset, bitfield size, type id).
    fn member(&self, t: Type, name: &str, depth: u32) -> Result<Option<(u32, u32, u32)>, BtfError> {
        if !matches!(t.kind, kind::STRUCT | kind::UNION) || depth > 8 {
            return Ok(None);
        }
        let list = self
            .members
            .get(t.first as usize..(t.first + t.vlen) as usize)
            .ok_or(BtfError::Malformed("members out of range"))?;
        for m in list {
            let (bits, bitfield) = if t.kind_flag {
                (m.offset & 0xff_ffff, m.offset >> 24)
            } else {
                (m.offset, 0)
            };
            if self.name(m.name) == name.as_bytes() {
                return Ok(Some((bits, bitfield, m.ty)));
            }
            if m.name == 0 {
                if let Some((b, f, ty)) = self.member(self.resolve(m.ty)?, name, depth + 1)? {
                    return Ok(Some((bits + b, f, ty)));
                }
            }
        }
        Ok(None)
    }

    /// Where `strukt.path[0].path[1]...` sits from the start of `strukt`.
    pub fn field(&self, strukt: &str, path: &[&str]) -> Result<Field, BtfError> {
        let what = || format!("{strukt}.{}", path.join("."));
        let mut t = self
            .types
            .iter()
            .find(|t| {
                t.kind == kind::STRUCT && t.vlen > 0 && self.name(t.name) == strukt.as_bytes()
            })
            .copied()
            .ok_or_else(|| BtfError::NoStruct(strukt.into()))?;
        let (mut bits, mut ty) = (0, 0);
        for name in path {
            let (b, bitfield, id) = self
                .member(t, name, 0)?
                .ok_or_else(|| BtfError::NoField(what()))?;
            if bitfield != 0 {
                return Err(BtfError::Unaligned(what()));
            }
            bits += b;
            ty = id;
            t = self.resolve(id)?;
        }
        if bits % 8 != 0 {
            return Err(BtfError::Unaligned(what()));
        }
        Ok(Field {
            offset: bits / 8,
            size: self.size(ty)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel() -> Btf {
        Btf::from_file(Path::new(VMLINUX)).expect("the running kernel's BTF")
    }

    #[test]
    fn finds_fields_inside_anonymous_members() {
        let btf = kernel();
        // skc_dport sits in an anonymous struct inside an anonymous union of
        // `struct sock_common`, whose members are bitfield-encoded: its place
        // has been the same since Linux 2.6 (the port pair after addrs and hash).
        let f = btf.field("sock_common", &["skc_dport"]).unwrap();
        assert_eq!(
            f,
            Field {
                offset: 12,
                size: 2
            }
        );
        let f = btf.field("sock", &["__sk_common", "skc_num"]).unwrap();
        assert_eq!(
            f,
            Field {
                offset: 14,
                size: 2
            }
        );
        let f = btf.field("sock_common", &["skc_v6_daddr"]).unwrap();
        assert_eq!(f.size, 16);
    }

    #[test]
    fn refuses_bitfields_and_unknown_names() {
        let btf = kernel();
        assert!(matches!(
            btf.field("sock_common", &["skc_reuse"]),
            Err(BtfError::Unaligned(_))
        ));
        assert!(matches!(
            btf.field("socket", &["no_such_field"]),
            Err(BtfError::NoField(_))
        ));
        assert!(matches!(
            btf.field("no_such_struct", &["x"]),
            Err(BtfError::NoStruct(_))
        ));
    }

    #[test]
    fn refuses_what_is_not_btf() {
        assert!(matches!(
            Btf::parse(b"\x7fELF and more bytes than a header"),
            Err(BtfError::Malformed(_))
        ));
        let mut truncated = std::fs::read(VMLINUX).unwrap();
        truncated.truncate(4096);
        assert!(Btf::parse(&truncated).is_err());
    }
}
