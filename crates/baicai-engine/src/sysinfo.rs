//! Machine facts for `bench` and usage reports: resident memory, total memory, CPU model, and the
//! measured memory read bandwidth that bounds decode speed (DESIGN.md: decode is memory-bound).
//!
//! Everything is read from Linux's `/proc` and `/sys`; on other systems, or when a file is
//! missing, the functions return `None` rather than guessing.

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// Largest buffer [`measure_read_bandwidth`] uses.
const BANDWIDTH_BUFFER_BYTES: u64 = baicai_kernels::roofline::BANDWIDTH_BUFFER_BYTES;
/// Timed passes over the buffer; the best one is reported.
const BANDWIDTH_PASSES: usize = 5;

/// Peak resident set size of this process (`VmHWM` in `/proc/self/status`), in bytes.
///
/// The high-water mark never goes down: read it before [`measure_read_bandwidth`], whose buffer
/// would otherwise be part of it.
pub fn peak_rss_bytes() -> Option<u64> {
    proc_kib_field("/proc/self/status", "VmHWM")
}

/// Current resident set size of this process (`VmRSS` in `/proc/self/status`), in bytes.
pub fn current_rss_bytes() -> Option<u64> {
    proc_kib_field("/proc/self/status", "VmRSS")
}

/// Physical memory of the machine (`MemTotal` in `/proc/meminfo`), in bytes.
pub fn total_memory_bytes() -> Option<u64> {
    proc_kib_field("/proc/meminfo", "MemTotal")
}

/// Memory the kernel estimates is available without swapping (`MemAvailable`), in bytes.
pub fn available_memory_bytes() -> Option<u64> {
    proc_kib_field("/proc/meminfo", "MemAvailable")
}

/// Memory this process has mapped through 2 MiB pages, anonymous (`AnonHugePages`) and file
/// (`FilePmdMapped`) together, from `/proc/self/smaps_rollup`, in bytes.
pub fn huge_page_mapped_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/smaps_rollup").ok()?;
    match (
        kib_field(&text, "AnonHugePages"),
        kib_field(&text, "FilePmdMapped"),
    ) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    }
}

/// The memory limit of this process's cgroup (v2 `memory.max`, v1 `memory.limit_in_bytes`);
/// `None` when there is none, or it is "unlimited".
pub fn cgroup_memory_limit_bytes() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    cgroup_limit_files(&cgroups)
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .filter_map(|v| v.trim().parse::<u64>().ok())
        // "max" does not parse; v1 writes "unlimited" as a huge page-rounded number.
        .filter(|&v| v < 1 << 60)
        .min()
}

/// The files that may hold a memory limit of the cgroups listed in `/proc/self/cgroup`
/// (`proc_self_cgroup`): v2 `memory.max` (under `/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on
/// hybrid hosts) and v1 `memory.limit_in_bytes` of the memory controller.
fn cgroup_limit_files(proc_self_cgroup: &str) -> Vec<String> {
    let mut files = Vec::new();
    for line in proc_self_cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let path = path.trim_start_matches('/');
        let sep = if path.is_empty() { "" } else { "/" };
        if controllers.is_empty() {
            for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
                files.push(format!("{root}/{path}{sep}memory.max"));
            }
        } else if controllers.split(',').any(|c| c == "memory") {
            files.push(format!(
                "/sys/fs/cgroup/memory/{path}{sep}memory.limit_in_bytes"
            ));
        }
    }
    files
}

/// Memory this process can expect to use: the kernel's `MemAvailable`, capped by the cgroup
/// limit when there is one.
pub fn memory_budget_bytes() -> Option<u64> {
    match (available_memory_bytes(), cgroup_memory_limit_bytes()) {
        (Some(a), Some(l)) => Some(a.min(l)),
        (a, l) => a.or(l),
    }
}

/// The CPU's marketing name (`model name` in `/proc/cpuinfo`), e.g. `AMD EPYC`.
pub fn cpu_model_name() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim() == "model name")
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Size of the last-level (L3) cache seen by CPU 0, from `/sys/devices/system/cpu/cpu0/cache`.
pub fn l3_cache_bytes() -> Option<u64> {
    let dir = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache").ok()?;
    dir.filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("index"))
        .find(|e| std::fs::read_to_string(e.path().join("level")).is_ok_and(|l| l.trim() == "3"))
        .and_then(|e| std::fs::read_to_string(e.path().join("size")).ok())
        .and_then(|s| parse_size(s.trim()))
}

/// Measures memory read bandwidth in bytes per second with `threads` threads (0 = the current
/// rayon pool's size).
///
/// Allocates a buffer far above the L3 size (256 MiB, less if available memory is short), writes
/// it so every page is really backed, then times `BANDWIDTH_PASSES` passes of summing it in
/// parallel and reports the best pass. The buffer is freed before returning, so current RSS falls
/// back — but the peak RSS (`VmHWM`) keeps it: call [`peak_rss_bytes`] first when both are wanted.
///
/// Runs in the current rayon pool when its size is `threads`, otherwise in a pool built for the
/// call. Takes a few tenths of a second.
pub fn measure_read_bandwidth(threads: usize) -> f64 {
    measure_read_bandwidth_with(threads, bandwidth_buffer_bytes(), BANDWIDTH_PASSES)
}

/// [`measure_read_bandwidth`] with an explicit buffer size (rounded down to whole 4 MiB chunks, at
/// least one) and number of timed passes (at least one).
pub fn measure_read_bandwidth_with(threads: usize, buffer_bytes: u64, passes: usize) -> f64 {
    let run = || baicai_kernels::roofline::read_bandwidth(buffer_bytes, passes);
    if threads == 0 || threads == rayon::current_num_threads() {
        return run();
    }
    match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
        Ok(pool) => pool.install(run),
        // Cannot spawn threads: measure with what there is rather than fail a benchmark.
        Err(_) => run(),
    }
}

/// 256 MiB, or a quarter of available memory if that is less (never under 16 MiB).
fn bandwidth_buffer_bytes() -> u64 {
    let quarter = available_memory_bytes().map_or(u64::MAX, |a| a / 4);
    BANDWIDTH_BUFFER_BYTES.min(quarter).max(16 * MIB)
}

/// Value of a `Key:   1234 kB` line of the file at `path`, in bytes.
fn proc_kib_field(path: &str, key: &str) -> Option<u64> {
    kib_field(&std::fs::read_to_string(path).ok()?, key)
}

/// The `key: value` field of a `/proc` file's `text`, as bytes.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| parse_size(v.trim()))
}

/// Parses `1234 kB`, `32768K`, `1M`, or a plain byte count.
fn parse_size(s: &str) -> Option<u64> {
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..digits].parse().ok()?;
    let unit = match s[digits..].trim() {
        "" | "B" => 1,
        "k" | "K" | "kB" | "KB" | "KiB" => KIB,
        "M" | "MB" | "MiB" => MIB,
        "G" | "GB" | "GiB" => 1024 * MIB,
        _ => return None,
    };
    n.checked_mul(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_and_sysfs_sizes() {
        assert_eq!(parse_size("2168 kB"), Some(2168 * 1024));
        assert_eq!(parse_size("32768K"), Some(32 * MIB));
        assert_eq!(parse_size("1M"), Some(MIB));
        assert_eq!(parse_size("17"), Some(17));
        assert_eq!(parse_size("kB"), None);
        assert_eq!(parse_size("12 parsecs"), None);
    }

    #[test]
    fn cgroup_limit_files_follow_v1_and_v2_layouts() {
        let hybrid = "9:name=systemd:/\n4:memory:/process_api/f69\n3:cpuset:/\n0::/\n";
        assert_eq!(
            cgroup_limit_files(hybrid),
            [
                "/sys/fs/cgroup/memory/process_api/f69/memory.limit_in_bytes",
                "/sys/fs/cgroup/memory.max",
                "/sys/fs/cgroup/unified/memory.max",
            ]
        );
        assert_eq!(
            cgroup_limit_files("0::/user.slice/run.scope\n"),
            [
                "/sys/fs/cgroup/user.slice/run.scope/memory.max",
                "/sys/fs/cgroup/unified/user.slice/run.scope/memory.max",
            ]
        );
        assert_eq!(
            cgroup_limit_files("5:cpu,memory:/a\ngarbage\n"),
            ["/sys/fs/cgroup/memory/a/memory.limit_in_bytes"]
        );
        assert!(cgroup_limit_files("").is_empty());
    }

    #[test]
    fn memory_figures_are_plausible() {
        let rss = current_rss_bytes().expect("VmRSS");
        let peak = peak_rss_bytes().expect("VmHWM");
        let total = total_memory_bytes().expect("MemTotal");
        assert!(rss > MIB, "rss {rss}");
        assert!(peak >= rss, "peak {peak} < rss {rss}");
        assert!(total > 64 * MIB && total > peak, "total {total}");
        assert!(available_memory_bytes().is_some_and(|a| a <= total));
        assert!(memory_budget_bytes().is_some_and(|b| b <= total));
        if let Some(limit) = cgroup_memory_limit_bytes() {
            assert!(limit > 0 && limit < 1 << 60, "cgroup limit {limit}");
        }
    }

    #[test]
    fn cpu_facts_are_plausible() {
        if let Some(name) = cpu_model_name() {
            assert!(!name.is_empty() && !name.contains('\n'));
        }
        if let Some(l3) = l3_cache_bytes() {
            assert!((256 * KIB..=4096 * MIB).contains(&l3), "l3 {l3}");
        }
    }

    #[test]
    fn bandwidth_is_plausible_and_its_buffer_is_freed() {
        let before = current_rss_bytes().unwrap();
        let bw = measure_read_bandwidth_with(2, 128 * MIB, 2);
        let after = current_rss_bytes().unwrap();
        // Anything from a slow VM to a many-channel server.
        assert!(
            bw.is_finite() && (5e8..1e13).contains(&bw),
            "bandwidth {bw}"
        );
        assert!(peak_rss_bytes().unwrap() >= 128 * MIB);
        assert!(
            after < before + 64 * MIB,
            "rss {before} -> {after}: buffer not freed"
        );
        // Degenerate sizes still work.
        assert!(measure_read_bandwidth_with(1, 0, 0) > 0.0);
    }
}
