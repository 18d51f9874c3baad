//! Word-sized copies for the hot path. LLVM lowers some struct and array
//! copies to calls to a `memcpy` that moves one byte per iteration, about
//! eight instructions a byte; these move eight bytes per load and store.

use core::{
    ffi::c_void,
    mem::size_of,
    ptr::{read_volatile, write_volatile},
};

use aya_ebpf::helpers::generated::bpf_get_current_comm;

use imds_monitor_common::{
    event::Owner,
    http::{PATH_CAP, RequestParser},
};

use crate::scan::Origin;

/// Copies a `T` eight bytes at a time. Volatile, so that LLVM cannot merge
/// the words back into a call to `memcpy`.
///
/// # Safety
/// `dst` and `src` point to valid `T`s, both 8-byte aligned.
#[inline(always)]
unsafe fn copy_words<T>(dst: *mut T, src: *const T) {
    const { assert!(size_of::<T>() % 8 == 0) };
    let (dst, src) = (dst.cast::<u64>(), src.cast::<u64>());
    let mut i = 0;
    while i < size_of::<T>() / 8 {
        unsafe { write_volatile(dst.add(i), read_volatile(src.add(i))) };
        i += 1;
    }
}

#[inline(always)]
pub fn owner(dst: &mut Owner, src: &Owner) {
    // Owner holds u64 fields: references to it are 8-byte aligned.
    unsafe { copy_words(dst, src) }
}

#[inline(always)]
pub fn origin(dst: &mut Origin, src: &Origin) {
    // Origin starts with an 8-byte aligned key.
    unsafe { copy_words(dst, src) }
}

#[inline(always)]
pub fn parser(dst: &mut RequestParser, src: &RequestParser) {
    // RequestParser holds u64 fields.
    unsafe { copy_words(dst, src) }
}

/// Copies an IPv4/IPv6 address field.
///
/// # Safety
/// Both arrays start at 8-byte aligned addresses (the address fields of
/// `FlowKey`, `RequestEvent` and `ResponseEvent` do).
#[inline(always)]
pub unsafe fn addr(dst: &mut [u8; 16], src: &[u8; 16]) {
    unsafe { copy_words(dst, src) }
}

/// Bytes of a path copied per step.
const PATH_CHUNK: usize = 64;

/// Copies the first `len` bytes of a path buffer, rounded up to 64 bytes:
/// readers stop at the path length, and most IMDS paths fit in one or two
/// chunks, so most of the 256-byte buffer is never touched.
#[inline(always)]
pub fn path(dst: &mut [u8; PATH_CAP], src: &[u8; PATH_CAP], len: u16) {
    const { assert!(PATH_CAP % PATH_CHUNK == 0) };
    type Chunk = [u64; PATH_CHUNK / 8];
    let (dst, src) = (
        dst.as_mut_ptr().cast::<Chunk>(),
        src.as_ptr().cast::<Chunk>(),
    );
    let mut i = 0;
    while i < PATH_CAP / PATH_CHUNK {
        if i * PATH_CHUNK >= len as usize {
            break;
        }
        // The path fields of `RequestParser` and `RequestEvent` are 8-byte
        // aligned (both structs start with or follow u64 fields).
        unsafe { copy_words(dst.add(i), src.add(i)) };
        i += 1;
    }
}

/// Zeroes a byte array eight bytes at a time.
///
/// # Safety
/// `dst` starts at an 8-byte aligned address.
#[inline(always)]
pub unsafe fn zero<const N: usize>(dst: &mut [u8; N]) {
    const { assert!(N % 8 == 0) };
    let words = dst.as_mut_ptr().cast::<u64>();
    let mut i = 0;
    while i < N / 8 {
        unsafe { write_volatile(words.add(i), 0) };
        i += 1;
    }
}

/// The current task's comm, written straight into `dst` (zeroes if the
/// helper fails): copying the array aya's wrapper returns is a byte loop.
#[inline(always)]
pub fn current_comm(dst: &mut [u8; 16]) {
    unsafe { bpf_get_current_comm(dst.as_mut_ptr().cast::<c_void>(), 16) };
}
