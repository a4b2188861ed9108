//! Zero values the compiler cannot see as zero. bpf-linker has LLVM expand
//! `memcpy` in order (loads and stores stay paired), which also leaves every
//! zeroed field or struct to a `memset` call; aya-ebpf's `memset` goes a
//! byte at a time: a zeroed address cost 24 loop rounds on every traced
//! call, and as many verifier steps at each call site. A copy of zeros
//! from read-only data is expanded inline like any other copy.

static ZEROS: [u64; 8] = [0; 8];

/// All-zero `T` (at most 64 bytes; every type it is used for is valid all-zero).
#[inline(always)]
pub fn zeroed<T: Copy>() -> T {
    const { assert!(size_of::<T>() <= size_of::<[u64; 8]>()) };
    // SAFETY: ZEROS is 8-aligned, larger than T, and T is plain data.
    unsafe { core::ptr::read_volatile(ZEROS.as_ptr() as *const T) }
}
