//! The host's allocator settings. The binary (and the benchmarks, which measure what it
//! runs) use mimalloc as the global allocator and call this first thing.

/// mimalloc's defaults keep freed memory committed for a while and commit arenas eagerly,
/// in transparent huge pages: idle RSS 107 MB against glibc's 51. Without huge pages (the
/// `no_thp` feature) and returning memory at once, 45 MB. The indices are `mi_option_e` of
/// the pinned mimalloc 3.
pub fn return_freed_memory_at_once() {
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: plain setters of two options; called first thing, before any other thread.
    unsafe {
        libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
    }
}
