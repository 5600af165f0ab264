//! The C allocator's settings for a process that trains (called once by the worker, and the
//! benchmarks, before any tensor exists), and the peak resident memory it reaches.

/// Every training step allocates and frees the same activation and gradient buffers (a few MB
/// each). With glibc's defaults, each free at the top of the heap returned the memory to the
/// kernel and the next step faulted it back in, page by page: 1.5 million page faults, a sixth
/// of the seed job's CPU time. Freed memory is kept for reuse instead (up to 512 MiB at the top
/// of the heap); buffers of 32 MiB and more still come from mmap and go back at once, so a big
/// checkpoint's tensors do not stay resident after use.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's thresholds; it is called before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
        libc::mallopt(libc::M_TOP_PAD, 16 << 20);
    }
}

/// Returns the heap's free memory to the kernel now (glibc's `malloc_trim`), which
/// [`keep_freed_memory`] otherwise keeps for reuse: for a phase that allocates differently from
/// the one before it (the language-model pass's perplexity head after its layers).
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only hands free pages back; glibc locks its arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// This process's peak resident memory so far (`VmHWM` of /proc/self/status), where /proc says.
pub fn peak_resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
}
