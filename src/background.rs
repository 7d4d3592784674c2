//! A pool of its own for work nobody waits on (walk-ahead, parsers' metadata
//! warm-ups), so a request never queues behind it.
//!
//! Requests decode blocks on rayon's global pool. When background jobs shared that
//! pool, a directory listing that needed two index blocks waited for a warm-up's
//! whole batch of decompression first (up to 100 ms in a cold `find`). Here they
//! run apart, at a lower CPU priority: on a small machine the reader and the server's
//! request threads come first, and the warm-up takes what CPU is left over. (Image
//! readahead stays on the global pool at normal priority: its reader waits for it.)

use std::sync::{Condvar, Mutex, OnceLock};

/// Niceness of the background threads: below requests, not starved.
const NICE: libc::c_int = 10;

fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("disksafe-bg-{i}"))
            .start_handler(|_| {
                // Per thread on Linux (the nice value belongs to the task). A failure
                // leaves the thread at normal priority, which is still correct.
                // SAFETY: plain syscalls with no pointers.
                unsafe {
                    let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                    libc::setpriority(libc::PRIO_PROCESS, tid, NICE);
                }
            })
            .build()
            .map_err(|e| {
                tracing::warn!("no background pool ({e}); background work runs on the shared pool")
            })
            .ok()
    })
    .as_ref()
}

/// Jobs spawned and not yet finished, and a signal for when that reaches zero (see
/// [`wait_idle`]).
static PENDING: Mutex<usize> = Mutex::new(0);
static IDLE: Condvar = Condvar::new();

/// Runs `job` on the background pool. Parallel iterators inside it stay on that pool.
pub fn spawn(job: impl FnOnce() + Send + 'static) {
    *PENDING.lock().unwrap() += 1;
    let job = move || {
        job();
        let mut n = PENDING.lock().unwrap();
        *n -= 1;
        if *n == 0 {
            IDLE.notify_all();
        }
    };
    match pool() {
        Some(p) => p.spawn(job),
        None => rayon::spawn(job),
    }
}

/// Waits until every background job spawned so far, and every job those spawned, has
/// finished: tests and fuzzing check that warm-ups survive hostile volumes too.
pub fn wait_idle() {
    let mut n = PENDING.lock().unwrap();
    while *n > 0 {
        n = IDLE.wait(n).unwrap();
    }
}
