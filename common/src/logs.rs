//! What the kernel hands userspace of the writes a traced thread makes to
//! its standard output, standard error and log files while it serves a
//! request (see ebpf/src/logs.rs).

/// Which writes the kernel captures (global `LOGS`, set by the agent):
/// none when 0, so that logs left off cost the write path nothing.
pub mod source {
    pub const STDOUT: u32 = 1;
    pub const STDERR: u32 = 2;
    /// Regular files, of which userspace keeps those a pattern matches.
    pub const FILES: u32 = 4;
}

/// Marks an `Inflight` entry as a captured write (see [`crate::IO_MARK`]).
pub const LOG_MARK: u8 = 0xfe;
/// Bytes of one write copied into its record at most (a power of two):
/// more than the 4 KiB a block-buffered stdio flushes at once, and small
/// enough for the per-CPU buffer (twice this) to fit a per-CPU map value.
pub const MAX_LOG_CAPTURE: usize = 8192;
/// (process, fd) pairs whose file userspace has judged.
pub const MAX_LOG_FDS: u32 = 16384;
/// Threads in a captured write at once.
pub const MAX_LOG_WRITES: u32 = 4096;

/// Bits of [`LogHeader::flags`].
pub mod logflag {
    /// The span the thread serves is sampled.
    pub const SAMPLED: u32 = 1;
    /// The fd's file is one userspace judged worth capturing (its entry in
    /// `LOG_FDS` names this very file): userspace need not look it up.
    pub const VERIFIED: u32 = 2;
}

/// `kind::LOG`: one write by a thread serving a request; `captured` bytes
/// of it follow.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LogHeader {
    pub kind: u32,
    /// [`logflag`] bits.
    pub flags: u32,
    pub pid_tgid: u64,
    /// CLOCK_MONOTONIC nanoseconds at the write's exit.
    pub ts_ns: u64,
    /// The span the thread serves (the kernel's ids).
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The file's inode number and device (the kernel's `dev_t`), which
    /// userspace compares with `/proc/PID/fdinfo` before it trusts the
    /// path it reads for the fd; 0 for standard output and error.
    pub ino: u64,
    pub dev: u32,
    pub fd: u32,
    /// Bytes the write moved.
    pub total: u32,
    /// Bytes of them that follow.
    pub captured: u32,
}

/// Key of `LOG_FDS`: a process's fd (the same as [`crate::ConnKey`]).
pub type LogFdKey = crate::ConnKey;

/// Value of `LOG_FDS`: userspace's verdict on the file an fd held when it
/// judged it, valid while the fd still holds that file.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogFd {
    pub ino: u64,
    pub dev: u32,
    /// 1: capture its writes; 0: never.
    pub capture: u32,
}

/// Where a file's inode, its mode, number and device sit in this kernel's
/// structs (byte offsets from the kernel's BTF, as [`crate::SockOffsets`]);
/// `valid == 0`: unknown, and only standard output and error are captured.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileOffsets {
    pub valid: u32,
    /// `file.f_inode`
    pub file_inode: u32,
    /// `inode.i_mode` (2 bytes)
    pub inode_mode: u32,
    /// `inode.i_ino` (8 bytes)
    pub inode_ino: u32,
    /// `inode.i_sb`
    pub inode_sb: u32,
    /// `super_block.s_dev` (4 bytes)
    pub sb_dev: u32,
}

/// `S_IFMT` and `S_IFREG` of `i_mode`.
pub const S_IFMT: u16 = 0o170000;
pub const S_IFREG: u16 = 0o100000;
