//! Where OpenSSL's `SSL_read`/`SSL_write` pairs do their work: the internal
//! function both the int and the `_ex` form call (`ssl_read_internal`,
//! `ssl_write_internal`), found in their machine code.
//!
//! Why: a uprobe whose first instruction the kernel cannot emulate
//! single-steps it out of line, a second trap; on the VMs Clew runs on
//! (Firecracker, Linux 6.18) that cost 25–50 µs a call, against about 1 µs
//! for an emulated `push`. Debian's OpenSSL 3.0 `SSL_read` starts with
//! `sub $0x18,%rsp` (stepped); its internal function with `push %r13`
//! (emulated by 6.18; on a kernel that steps it too, nothing is lost).
//! Hooking the internal function also covers both public forms with one
//! probe.
//!
//! Only an exact shape qualifies, else the public functions are hooked as
//! before: the `_ex` form is `sub $n,%rsp; call F` (so `F` gets its four
//! arguments unchanged: ssl, buf, num, size_t *out), the int form's first
//! call is to `F` too, and `F` starts with `push reg`.

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};
use object::{Object, ObjectSection};

/// Instructions searched for the int form's first call.
const MAX_PROLOGUE: usize = 16;

/// The file offset of the function the int form at `int_addr` and the
/// `_ex` form at `ex_addr` (virtual addresses) both call, if it has the
/// shape above.
pub fn shared_callee(elf: &object::File<'_>, int_addr: u64, ex_addr: u64) -> Option<u64> {
    let mut ex = decode(elf, ex_addr)?;
    let first = ex.next()?;
    let is_frame = first.mnemonic() == Mnemonic::Sub
        && first.op0_register() == Register::RSP
        && matches!(
            first.op1_kind(),
            OpKind::Immediate8to64 | OpKind::Immediate32to64
        );
    let call = ex.next()?;
    if !is_frame || call.code() != Code::Call_rel32_64 {
        return None;
    }
    let target = call.near_branch_target();
    let first_call = decode(elf, int_addr)?
        .take(MAX_PROLOGUE)
        .find(|i| i.is_invalid() || i.mnemonic() == Mnemonic::Call)?;
    if first_call.code() != Code::Call_rel32_64 || first_call.near_branch_target() != target {
        return None;
    }
    let entry = decode(elf, target)?.next()?;
    let emulated = entry.mnemonic() == Mnemonic::Push && entry.op0_kind() == OpKind::Register;
    emulated.then(|| file_offset(elf, target)).flatten()
}

/// Instructions from virtual address `addr` to the end of its section.
fn decode<'a>(
    elf: &'a object::File<'_>,
    addr: u64,
) -> Option<impl Iterator<Item = Instruction> + 'a> {
    let section = elf.sections().find(|s| {
        addr.checked_sub(s.address())
            .is_some_and(|off| off < s.size())
    })?;
    let data = section.data().ok()?;
    let start = usize::try_from(addr - section.address()).ok()?;
    let bytes = data.get(start..)?;
    Some(Decoder::with_ip(64, bytes, addr, DecoderOptions::NONE).into_iter())
}

fn file_offset(elf: &object::File<'_>, addr: u64) -> Option<u64> {
    elf.sections().find_map(|s| {
        let off = addr.checked_sub(s.address())?;
        let (file_off, size) = s.file_range()?;
        (off < size).then_some(file_off + off)
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::tls::{library, Library};

    #[test]
    fn debian_libssl3_is_hooked_inside() {
        let path = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        let Some(Library::OpenSsl(o)) = library::inspect(path, "libssl.so.3").unwrap() else {
            panic!("libssl.so.3 not recognised as OpenSSL");
        };
        let (read, write) = (o.read_core.unwrap(), o.write_core.unwrap());
        assert!(![o.read, o.write, write].contains(&read));
        let data = std::fs::read(path).unwrap();
        // push %r13 / push %r14 (OpenSSL 3.0 as Debian builds it); any
        // `push reg` would do.
        for off in [read, write] {
            let b = &data[off as usize..off as usize + 2];
            assert!(
                b[0] == 0x41 && (0x50..0x58).contains(&b[1]) || (0x50..0x58).contains(&b[0]),
                "{b:x?}"
            );
        }
    }
}
