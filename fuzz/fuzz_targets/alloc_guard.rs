//! A counting global allocator that fails a fuzz input for the memory it takes, not only for
//! a panic: "memory follows the PDU size, never the input" is the property under test, and a
//! deflate bomb or a million repeated elements are found only this way.
//!
//! libFuzzer's own `-malloc_limit_mb` works through a sanitizer's malloc hooks, which the
//! plain build (`-s none`) does not have, and `-rss_limit_mb` sees the whole process only
//! after the fact. So every target counts live heap bytes itself: [`start`] takes the level
//! at the start of an input, and an allocation that takes the input more than the limit
//! above it aborts the process with the figures, which libFuzzer reports as a crash and
//! saves the input for.
//!
//! The limit is 256 MiB (the appliance must stay under 200 MB resident as a whole, and an
//! input must not come near that), or `OUTPOST_FUZZ_ALLOC_LIMIT_MB`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

pub struct Guard;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static BASELINE: AtomicUsize = AtomicUsize::new(0);
static LIMIT: AtomicUsize = AtomicUsize::new(256 << 20);
static ARMED: AtomicBool = AtomicBool::new(false);

/// Starts counting one input: what is live now is the baseline.
pub fn start() {
    if !ARMED.load(Ordering::Relaxed) {
        // Read once, here: the allocator itself must not allocate.
        if let Some(mb) = std::env::var("OUTPOST_FUZZ_ALLOC_LIMIT_MB")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
        {
            LIMIT.store(mb << 20, Ordering::Relaxed);
        }
        ARMED.store(true, Ordering::Relaxed);
    }
    let live = LIVE.load(Ordering::Relaxed);
    BASELINE.store(live, Ordering::Relaxed);
}

fn grew(size: usize) {
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    let used = live.saturating_sub(BASELINE.load(Ordering::Relaxed));
    let limit = LIMIT.load(Ordering::Relaxed);
    if ARMED.load(Ordering::Relaxed) && used > limit {
        ARMED.store(false, Ordering::Relaxed);
        let mut msg = [0u8; 160];
        let mut cursor = std::io::Cursor::new(&mut msg[..]);
        let _ = write!(
            cursor,
            "\n==alloc-guard== one input took {} MiB of heap, over the {} MiB limit\n",
            used >> 20,
            limit >> 20
        );
        let n = cursor.position() as usize;
        let _ = std::io::stderr().write_all(&msg[..n]);
        std::process::abort();
    }
}

unsafe impl GlobalAlloc for Guard {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}
