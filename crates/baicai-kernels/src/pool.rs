//! A spinning work pool for matmul: helper threads wait for the next job by spinning for a short
//! while before they park, so the ~100 parallel regions of a decode step start in well under a
//! microsecond instead of paying a futex wake-up each (rayon's idle workers go to sleep within
//! microseconds, and waking one costs tens of microseconds on a virtual machine, several
//! milliseconds per token in all). llama.cpp's thread pool spins between graph nodes for the
//! same reason.
//!
//! One job at a time: [`run`] returns `false` when the pool is busy (a nested or concurrent call),
//! and the caller then does the work some other way. Which thread computes what never changes a
//! result: a job is a list of independent tasks handed out through an atomic counter.

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle helper spins before it parks: longer than the gaps between the matmuls of a
/// decode step (norms, RoPE, attention), short enough not to steal a core for long from other
/// work.
const SPIN: Duration = Duration::from_micros(300);

/// A job: called as `f(worker)` once on every participating thread.
type Job<'a> = &'a (dyn Fn(usize) + Sync);

/// What a helper needs of the current job, published under one lock.
struct State {
    /// The epoch this job was published as.
    epoch: usize,
    /// The job, lifetime erased (see `run`); `None` once it is finished.
    job: Option<Job<'static>>,
    /// Helpers that take part (those with a smaller index).
    workers: usize,
}

struct Pool {
    /// Held (true) while a job runs; `run` takes it with a compare-exchange.
    busy: AtomicBool,
    /// Bumped to publish a job; helpers spin on it.
    epoch: AtomicUsize,
    /// The current job, read by a helper once it sees a new epoch.
    state: Mutex<State>,
    /// Helpers of the current job still running it.
    pending: AtomicUsize,
    /// A helper's panic, re-raised by `run`.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    /// Number of helper threads started.
    started: Mutex<usize>,
    /// Parked helpers wait here for a new epoch.
    wake: Condvar,
    wake_lock: Mutex<()>,
    /// Helpers parked or about to park (counted under `wake_lock`), so that publishing a job to
    /// spinning helpers costs no futex call (one per parallel region, ~230 per decoded token).
    parked: AtomicUsize,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        busy: AtomicBool::new(false),
        epoch: AtomicUsize::new(0),
        state: Mutex::new(State {
            epoch: 0,
            job: None,
            workers: 0,
        }),
        pending: AtomicUsize::new(0),
        panic: Mutex::new(None),
        started: Mutex::new(0),
        wake: Condvar::new(),
        wake_lock: Mutex::new(()),
        parked: AtomicUsize::new(0),
    })
}

/// Runs `f(i)` on `threads` threads at once, `i` in `0..threads`, the calling thread being
/// `i == 0`; returns once all have returned. Returns `false` without calling `f` when the pool is
/// running another job.
///
/// # Panics
/// Re-raises a panic of any `f(i)`, after every thread is done with `f`.
pub fn run(threads: usize, f: &(dyn Fn(usize) + Sync)) -> bool {
    let p = pool();
    let helpers = threads.saturating_sub(1);
    if helpers == 0 {
        f(0);
        return true;
    }
    if p.busy
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        return false;
    }
    start_helpers(p, helpers);
    // SAFETY: the `'static` is a lie told only to the helpers, which call `f` solely between the
    // epoch bump below and their `pending` decrement; `Finish` (also on unwind) waits for
    // `pending` to reach zero and clears the job before this function returns, so no helper
    // touches `f` after its borrow ends.
    let job: Job<'static> = unsafe { std::mem::transmute::<Job<'_>, Job<'static>>(f) };
    p.pending.store(helpers, Ordering::Relaxed);
    {
        let mut state = p.state.lock().unwrap();
        state.epoch += 1;
        state.job = Some(job);
        state.workers = helpers;
        // SeqCst, with the load of `parked` below and the helper's increment of `parked`
        // before its last look at the epoch (`wait_epoch`): either this load sees the helper
        // counted, or the helper sees the new epoch and does not park.
        p.epoch.store(state.epoch, Ordering::SeqCst);
    }
    if p.parked.load(Ordering::SeqCst) > 0 {
        let _g = p.wake_lock.lock().unwrap();
        p.wake.notify_all();
    }
    let finish = Finish(p);
    f(0);
    if let Some(e) = finish.done() {
        resume_unwind(e);
    }
    true
}

/// `f(i, chunk)` for every `chunk`-long piece of `data` (the last may be shorter), `i` its index,
/// on the current rayon pool's number of threads: through the spinning pool, so a region that
/// follows a matmul starts at once, or rayon when the pool is busy.
pub fn for_each_chunk_mut<T: Send>(
    data: &mut [T],
    chunk: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    assert!(chunk > 0, "chunks must not be empty");
    let (len, n) = (data.len(), data.len().div_ceil(chunk));
    let ptr = SendPtr(data.as_mut_ptr());
    let next = AtomicUsize::new(0);
    let work = |_: usize| loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            break;
        }
        let start = i * chunk;
        // SAFETY: `start..start + chunk` (clipped to `len`) lies inside `data`, which is borrowed
        // mutably until every thread is done; each index `i` is handed out once, so the chunks
        // of different calls never overlap.
        let piece =
            unsafe { std::slice::from_raw_parts_mut(ptr.get().add(start), chunk.min(len - start)) };
        f(i, piece);
    };
    if !run(rayon::current_num_threads().min(n), &work) {
        use rayon::prelude::*;
        data.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
    }
}

/// A raw pointer shared by threads that touch disjoint elements.
struct SendPtr<T>(*mut T);
// SAFETY: only used to reach disjoint elements from different threads (`for_each_chunk_mut`).
unsafe impl<T: Send> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// A method (not field access) so closures capture the `Sync` wrapper.
    fn get(&self) -> *mut T {
        self.0
    }
}

/// Waits for the helpers and releases the pool, also when the caller's part panics.
struct Finish(&'static Pool);

impl Finish {
    /// Waits for the helpers, releases the pool and returns a helper's panic.
    fn done(self) -> Option<Box<dyn Any + Send>> {
        let p = self.0;
        std::mem::forget(self);
        finish(p)
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        // Unwinding from the caller's own panic: a helper's is dropped.
        drop(finish(self.0));
    }
}

fn finish(p: &Pool) -> Option<Box<dyn Any + Send>> {
    // The helpers are mid-task: their last task is short. Yield now and then in case one was
    // preempted (a busy machine), so it can finish on this core.
    let mut spins = 0u32;
    while p.pending.load(Ordering::Acquire) != 0 {
        std::hint::spin_loop();
        spins += 1;
        if spins.is_multiple_of(1024) {
            std::thread::yield_now();
        }
    }
    p.state.lock().unwrap().job = None;
    let panic = p.panic.lock().unwrap().take();
    p.busy.store(false, Ordering::Release);
    panic
}

fn start_helpers(p: &'static Pool, helpers: usize) {
    let mut started = p.started.lock().unwrap();
    while *started < helpers {
        let index = *started;
        // Before this call publishes its job, so a new helper takes part in it.
        let seen = p.epoch.load(Ordering::Acquire);
        std::thread::Builder::new()
            .name(format!("baicai-matmul-{}", index + 1))
            .spawn(move || helper(p, index, seen))
            .expect("spawning a matmul helper thread");
        *started += 1;
    }
}

/// A helper thread: waits for each new epoch (spinning, then parked) and runs its part of the job.
/// `seen` is the last epoch it need not run.
fn helper(p: &'static Pool, index: usize, mut seen: usize) {
    loop {
        wait_epoch(p, seen);
        let (job, workers) = {
            let state = p.state.lock().unwrap();
            seen = state.epoch;
            (state.job, state.workers)
        };
        // A helper counted in `pending` always finds its job: it is cleared only after
        // `pending` reaches zero, and the next one is published only after that.
        let Some(job) = job.filter(|_| index < workers) else {
            continue;
        };
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| job(index + 1))) {
            *p.panic.lock().unwrap() = Some(e);
        }
        p.pending.fetch_sub(1, Ordering::Release);
    }
}

/// Returns once the epoch is past `seen`.
fn wait_epoch(p: &Pool, seen: usize) {
    let start = Instant::now();
    let mut spins = 0u32;
    loop {
        let e = p.epoch.load(Ordering::Acquire);
        if e != seen {
            return;
        }
        std::hint::spin_loop();
        spins += 1;
        if !spins.is_multiple_of(256) {
            continue;
        }
        // Let other runnable threads have this core now and then (a busy machine).
        std::thread::yield_now();
        if start.elapsed() > SPIN {
            let g = p.wake_lock.lock().unwrap();
            // Counted before the last look at the epoch (see `run`); `run` notifies under
            // `wake_lock`, which this thread holds until `wait` releases it, so the notification
            // cannot fall between the look and the wait.
            p.parked.fetch_add(1, Ordering::SeqCst);
            let e = p.epoch.load(Ordering::SeqCst);
            if e == seen {
                drop(p.wake.wait(g).unwrap());
            }
            p.parked.fetch_sub(1, Ordering::SeqCst);
            if e != seen {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn for_each_chunk_mut_visits_every_chunk_once() {
        let mut data = vec![0usize; 1000];
        for_each_chunk_mut(&mut data, 7, |i, c| c.iter_mut().for_each(|v| *v += i + 1));
        for (k, &v) in data.iter().enumerate() {
            assert_eq!(v, k / 7 + 1, "element {k}");
        }
    }

    #[test]
    fn every_thread_runs_the_job_once() {
        let calls: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
        for _ in 0..100 {
            run(3, &|i| {
                calls[i].fetch_add(1, Ordering::Relaxed);
            });
        }
        // Other tests may hold the pool (then `run` declines), so only bound the counts.
        let counts: Vec<usize> = calls.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        assert!(counts.iter().all(|&c| c == counts[0]), "{counts:?}");
    }

    #[test]
    fn parked_helpers_wake_for_the_next_job() {
        // Longer pauses than `SPIN` park the helpers; each job must still run on every thread
        // (a lost wake-up would hang here).
        for _ in 0..20 {
            std::thread::sleep(SPIN * 3);
            let ran = AtomicUsize::new(0);
            while !run(3, &|_| {
                ran.fetch_add(1, Ordering::Relaxed);
            }) {}
            assert_eq!(ran.load(Ordering::Relaxed), 3);
        }
    }

    #[test]
    fn a_helper_panic_reaches_the_caller_and_the_pool_recovers() {
        let mut panicked = false;
        while !panicked {
            let r = catch_unwind(|| run(2, &|i| assert!(i != 1, "helper fails")));
            panicked = r.is_err();
        }
        let ran = AtomicUsize::new(0);
        while !run(2, &|_| {
            ran.fetch_add(1, Ordering::Relaxed);
        }) {}
        assert_eq!(ran.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_nested_call_is_declined() {
        let inner = AtomicBool::new(true);
        while !run(2, &|i| {
            if i == 0 {
                inner.store(run(2, &|_| {}), Ordering::Relaxed);
            }
        }) {}
        assert!(!inner.load(Ordering::Relaxed));
    }
}
