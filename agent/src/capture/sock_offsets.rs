//! The offsets `exit_accept` follows from the current task to an accepted
//! socket's endpoints (ebpf/src/sock.rs), and log capture from a file to
//! its inode (ebpf/src/logs.rs), from the running kernel's BTF. Each
//! field's size is checked too: a field that changed type must not be
//! read as the old one.

use std::path::Path;

use clew_common::{logs::FileOffsets, SockOffsets};

use super::btf::{Btf, BtfError};

const PTR: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error("{field} is {got} bytes, expected {want}")]
    Size { field: String, got: u32, want: u32 },
}

/// Reads the kernel's BTF at `path` (normally [`super::btf::VMLINUX`]).
pub fn from_btf_file(path: &Path) -> Result<SockOffsets, OffsetError> {
    compute(&Btf::from_file(path)?)
}

/// Where `path` of `strukt` sits, checked to be `want` bytes wide.
fn sized(btf: &Btf, strukt: &str, path: &[&str], want: u32) -> Result<u32, OffsetError> {
    let f = btf.field(strukt, path)?;
    if f.size != want {
        return Err(OffsetError::Size {
            field: format!("{strukt}.{}", path.join(".")),
            got: f.size,
            want,
        });
    }
    Ok(f.offset)
}

/// The file-to-inode offsets, from the kernel's BTF at `path`.
pub fn files_from_btf_file(path: &Path) -> Result<FileOffsets, OffsetError> {
    let btf = Btf::from_file(path)?;
    let at = |strukt: &str, path: &[&str], want: u32| sized(&btf, strukt, path, want);
    Ok(FileOffsets {
        valid: 1,
        file_inode: at("file", &["f_inode"], PTR)?,
        inode_mode: at("inode", &["i_mode"], 2)?,
        inode_ino: at("inode", &["i_ino"], 8)?,
        inode_sb: at("inode", &["i_sb"], PTR)?,
        sb_dev: at("super_block", &["s_dev"], 4)?,
    })
}

pub fn compute(btf: &Btf) -> Result<SockOffsets, OffsetError> {
    let at = |strukt: &str, path: &[&str], want: u32| sized(btf, strukt, path, want);
    let common = |field: &str, want: u32| at("sock", &["__sk_common", field], want);
    Ok(SockOffsets {
        valid: 1,
        task_files: at("task_struct", &["files"], PTR)?,
        files_fdt: at("files_struct", &["fdt"], PTR)?,
        fdt_max_fds: at("fdtable", &["max_fds"], 4)?,
        fdt_fd: at("fdtable", &["fd"], PTR)?,
        file_private_data: at("file", &["private_data"], PTR)?,
        socket_type: at("socket", &["type"], 2)?,
        socket_file: at("socket", &["file"], PTR)?,
        socket_sk: at("socket", &["sk"], PTR)?,
        sk_socket: at("sock", &["sk_socket"], PTR)?,
        sk_protocol: at("sock", &["sk_protocol"], 2)?,
        skc_family: common("skc_family", 2)?,
        skc_daddr: common("skc_daddr", 4)?,
        skc_rcv_saddr: common("skc_rcv_saddr", 4)?,
        skc_dport: common("skc_dport", 2)?,
        skc_num: common("skc_num", 2)?,
        skc_v6_daddr: common("skc_v6_daddr", 16)?,
        skc_v6_rcv_saddr: common("skc_v6_rcv_saddr", 16)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_kernel_gives_every_offset() {
        let o = from_btf_file(Path::new(super::super::btf::VMLINUX)).unwrap();
        assert_eq!(o.valid, 1);
        // Layouts that have not moved in many kernel releases (and that
        // tools without BTF hard-code): a wrong walk through the nested
        // anonymous members of sock_common would not land on them.
        assert_eq!(
            (
                o.skc_daddr,
                o.skc_rcv_saddr,
                o.skc_dport,
                o.skc_num,
                o.skc_family
            ),
            (0, 4, 12, 14, 16)
        );
        assert_eq!((o.fdt_max_fds, o.fdt_fd), (0, 8));
        assert_eq!(o.socket_type, 4);
        assert!(o.skc_v6_rcv_saddr == o.skc_v6_daddr + 16);
        // The rest only exist once each, at distinct places of their struct.
        for off in [
            o.task_files,
            o.file_private_data,
            o.sk_socket,
            o.sk_protocol,
        ] {
            assert!(off > 0 && off % 2 == 0, "{o:?}");
        }
        assert!(o.socket_file != o.socket_sk);
    }

    #[test]
    fn running_kernel_gives_the_file_offsets() {
        let o = files_from_btf_file(Path::new(super::super::btf::VMLINUX)).unwrap();
        assert_eq!(o.valid, 1);
        // `i_mode` opens struct inode; the rest are somewhere past it.
        assert_eq!(o.inode_mode, 0);
        assert!(o.inode_ino > 0 && o.inode_sb > 0 && o.file_inode > 0 && o.sb_dev > 0);
        assert_ne!(o.inode_ino, o.inode_sb);
    }

    #[test]
    fn missing_btf_is_an_error_not_a_guess() {
        let err = from_btf_file(Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/vmlinux"), "{err}");
    }
}
