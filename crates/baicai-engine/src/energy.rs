//! Energy of engine steps: measured from Linux powercap/RAPL counters where the machine exposes
//! them and this process may read them, estimated from the process's CPU time and a power model
//! otherwise. Every figure carries its [`EnergySource`]; an estimate never passes for a
//! measurement (DESIGN.md, "Cost").
//!
//! RAPL (`/sys/class/powercap/intel-rapl:N/energy_uj`, also used by AMD since Zen) counts the
//! energy of a whole package and, where present, its DRAM: on a machine shared with other
//! processes, a measured step is charged for everything the package did meanwhile. The counters
//! are root-only on kernels since 5.10 (CVE-2020-8694) and wrap at `max_energy_range_uj` — on AMD
//! within minutes at high power — so a reading lower than the previous one has wrapped once.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// Where the powercap zones live.
pub const POWERCAP_ROOT: &str = "/sys/class/powercap";

/// How an energy figure was obtained.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum EnergySource {
    /// Read from RAPL energy counters (package and DRAM domains).
    Rapl,
    /// CPU time × power model.
    #[default]
    Estimate,
}

impl EnergySource {
    /// `rapl` or `estimate`, as the figures are labelled everywhere.
    pub fn as_str(self) -> &'static str {
        match self {
            EnergySource::Rapl => "rapl",
            EnergySource::Estimate => "estimate",
        }
    }
}

impl std::fmt::Display for EnergySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The power model behind estimates: what the machine draws idle, what each busy core adds,
/// and what streaming from DRAM adds. Values come from a machine file (TOML, these keys) or the
/// defaults, which describe a typical 32-core server CPU with DDR5.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PowerModel {
    /// Whole-machine draw at idle, in watts (CPU packages, DRAM refresh, board, fans).
    pub idle_watts: f64,
    /// Cores of the machine; the engine is charged `idle_watts × threads / cores`.
    pub cores: usize,
    /// What one fully busy core adds to the idle draw, in watts.
    pub watts_per_busy_core: f64,
    /// What streaming 1 GB/s from DRAM adds, in watts (= joules per GB read).
    pub dram_watts_per_gbps: f64,
}

impl Default for PowerModel {
    /// A 32-core server CPU (e.g. AMD EPYC 9354, 280 W TDP): ~90 W idle for the whole box,
    /// ~6 W per core under vector load (TDP less uncore, over 32 cores), and DDR5 at about
    /// 20 pJ/bit, 0.16 W per GB/s.
    fn default() -> Self {
        PowerModel {
            idle_watts: 90.0,
            cores: 32,
            watts_per_busy_core: 6.0,
            dram_watts_per_gbps: 0.16,
        }
    }
}

/// Why a machine file was refused.
#[derive(Debug, thiserror::Error)]
pub enum MachineFileError {
    #[error("cannot read machine file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("machine file {path}, line {line}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

impl PowerModel {
    /// Reads a machine file: a TOML table with any of `idle_watts`, `cores`,
    /// `watts_per_busy_core`, `dram_watts_per_gbps` (the rest keep their defaults).
    ///
    /// # Errors
    /// The file cannot be read, is not valid TOML, has unknown keys, or a value is negative
    /// (or `cores` is 0); the error names the line.
    pub fn from_file(path: &Path) -> Result<PowerModel, MachineFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| MachineFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        PowerModel::parse(&text).map_err(|(line, message)| MachineFileError::Invalid {
            path: path.to_owned(),
            line,
            message,
        })
    }

    /// Parses a machine file's text; errors are (line, message).
    pub fn parse(text: &str) -> Result<PowerModel, (usize, String)> {
        let m: PowerModel = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |s| line_of(text, s.start));
            (line, e.message().to_string())
        })?;
        let checks = [
            ("idle_watts", m.idle_watts),
            ("watts_per_busy_core", m.watts_per_busy_core),
            ("dram_watts_per_gbps", m.dram_watts_per_gbps),
        ];
        for (key, v) in checks {
            if !(v.is_finite() && v >= 0.0) {
                return Err((key_line(text, key), format!("{key} = {v} must be ≥ 0")));
            }
        }
        if m.cores == 0 {
            return Err((key_line(text, "cores"), "cores must be at least 1".into()));
        }
        Ok(m)
    }

    /// Estimated joules of `wall` seconds during which the process used `cpu` seconds of CPU
    /// time on `threads` threads and read `bytes` from memory.
    pub fn joules(&self, wall: f64, cpu: f64, threads: usize, bytes: u64) -> f64 {
        let share = threads.min(self.cores) as f64 / self.cores as f64;
        self.idle_watts * share * wall
            + self.watts_per_busy_core * cpu
            + self.dram_watts_per_gbps * bytes as f64 / 1e9
    }
}

/// The 1-based line of byte offset `at` in `text`.
pub(crate) fn line_of(text: &str, at: usize) -> usize {
    1 + text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

/// The line where `key` is set in a flat TOML file (1 when not found).
fn key_line(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|r| r.trim_start().starts_with('='))
        })
        .map_or(1, |i| i + 1)
}

/// One RAPL energy counter.
#[derive(Debug, Clone)]
struct RaplDomain {
    /// The zone's `name`: `package-0`, `dram`, …
    name: String,
    energy_file: PathBuf,
    /// Where the counter wraps to 0 (`max_energy_range_uj`).
    max_range_uj: u64,
}

/// The readable package and DRAM counters of a powercap tree.
#[derive(Debug, Clone)]
pub struct Rapl {
    domains: Vec<RaplDomain>,
}

/// Why RAPL cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RaplUnavailable {
    #[error("no powercap package domain under {0}")]
    Absent(String),
    #[error("{0} is not readable (root-only on Linux since 5.10)")]
    NotReadable(String),
}

impl Rapl {
    /// Finds the package and DRAM domains under `root` (normally [`POWERCAP_ROOT`]): zones whose
    /// `name` starts with `package` or is `dram`, at any depth (DRAM is a sub-zone of its
    /// package), skipping the `intel-rapl-mmio` mirror of the same counters.
    ///
    /// # Errors
    /// No package domain exists, or its counter cannot be read (not root).
    pub fn discover(root: &Path) -> Result<Rapl, RaplUnavailable> {
        let mut domains = Vec::new();
        let mut unreadable = None;
        let mut zones: Vec<PathBuf> = std::fs::read_dir(root)
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        zones.sort();
        for zone in zones {
            let base = zone.file_name().map(|n| n.to_string_lossy().into_owned());
            if base.as_deref().is_none_or(|b| b.contains("mmio")) {
                continue;
            }
            let Ok(name) = std::fs::read_to_string(zone.join("name")) else {
                continue;
            };
            let name = name.trim().to_string();
            if !(name.starts_with("package") || name == "dram") {
                continue;
            }
            let energy_file = zone.join("energy_uj");
            let max = read_u64(&zone.join("max_energy_range_uj"));
            match (read_u64(&energy_file), max) {
                (Some(_), Some(max_range_uj)) => domains.push(RaplDomain {
                    name,
                    energy_file,
                    max_range_uj,
                }),
                _ => unreadable = Some(energy_file.display().to_string()),
            }
        }
        if !domains.iter().any(|d| d.name.starts_with("package")) {
            return Err(match unreadable {
                Some(f) => RaplUnavailable::NotReadable(f),
                None => RaplUnavailable::Absent(root.display().to_string()),
            });
        }
        Ok(Rapl { domains })
    }

    /// The domains' names, in reading order.
    pub fn domain_names(&self) -> Vec<&str> {
        self.domains.iter().map(|d| d.name.as_str()).collect()
    }

    /// Current counter of each domain, in µJ; `None` if any read fails.
    pub fn read(&self) -> Option<Vec<u64>> {
        self.domains
            .iter()
            .map(|d| read_u64(&d.energy_file))
            .collect()
    }

    /// Joules between two [`Rapl::read`]s, summed over domains, each counter allowed to have
    /// wrapped once.
    pub fn joules_between(&self, before: &[u64], after: &[u64]) -> f64 {
        self.domains
            .iter()
            .zip(before.iter().zip(after))
            .map(|(d, (&b, &a))| wrapped_delta(b, a, d.max_range_uj) as f64 * 1e-6)
            .sum()
    }
}

/// `after - before` of a counter that wraps to 0 past `max_range`.
fn wrapped_delta(before: u64, after: u64, max_range: u64) -> u64 {
    if after >= before {
        after - before
    } else {
        max_range.saturating_sub(before) + after
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// CPU time used by this process so far (all threads), from
/// `clock_gettime(CLOCK_PROCESS_CPUTIME_ID)`.
pub fn process_cpu_time() -> Option<Duration> {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; the call only writes it.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
        (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Settings of an [`EnergyMeter`].
#[derive(Debug, Clone, PartialEq)]
pub struct EnergyConfig {
    /// The model estimates use.
    pub power: PowerModel,
    /// Where to look for RAPL counters; `None` always estimates.
    pub powercap_root: Option<PathBuf>,
    /// Threads the engine computes with (charged idle share, see [`PowerModel::joules`]);
    /// 0 = the current rayon pool's size.
    pub threads: usize,
}

impl Default for EnergyConfig {
    fn default() -> Self {
        EnergyConfig {
            power: PowerModel::default(),
            powercap_root: Some(PathBuf::from(POWERCAP_ROOT)),
            threads: 0,
        }
    }
}

/// Energy of an interval.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Energy {
    pub joules: f64,
    pub source: EnergySource,
    /// Wall-clock seconds of the interval.
    pub seconds: f64,
}

/// The state at the start of an interval (see [`EnergyMeter::start`]).
#[derive(Debug, Clone)]
pub struct Mark {
    wall: Instant,
    cpu: Option<Duration>,
    rapl: Option<Vec<u64>>,
}

/// Measures or estimates the energy of intervals of this process's work.
#[derive(Debug, Clone)]
pub struct EnergyMeter {
    rapl: Option<Rapl>,
    cfg: EnergyConfig,
    /// Why RAPL is not used, when it is not.
    pub rapl_unavailable: Option<RaplUnavailable>,
}

impl EnergyMeter {
    /// Uses RAPL when `cfg.powercap_root` holds readable package counters, estimates otherwise.
    pub fn new(mut cfg: EnergyConfig) -> EnergyMeter {
        if cfg.threads == 0 {
            cfg.threads = rayon::current_num_threads();
        }
        let (rapl, why) = match &cfg.powercap_root {
            Some(root) => match Rapl::discover(root) {
                Ok(r) => (Some(r), None),
                Err(e) => (None, Some(e)),
            },
            None => (None, None),
        };
        EnergyMeter {
            rapl,
            cfg,
            rapl_unavailable: why,
        }
    }

    /// Where this meter's figures come from.
    pub fn source(&self) -> EnergySource {
        if self.rapl.is_some() {
            EnergySource::Rapl
        } else {
            EnergySource::Estimate
        }
    }

    /// The power model estimates use.
    pub fn power_model(&self) -> &PowerModel {
        &self.cfg.power
    }

    /// Starts an interval.
    pub fn start(&self) -> Mark {
        Mark {
            rapl: self.rapl.as_ref().and_then(Rapl::read),
            cpu: process_cpu_time(),
            wall: Instant::now(),
        }
    }

    /// Ends the interval begun at `mark`, during which `bytes` were read from memory (used by
    /// estimates only): RAPL's joules when both readings succeeded, the estimate otherwise.
    pub fn finish(&self, mark: &Mark, bytes: u64) -> Energy {
        let seconds = mark.wall.elapsed().as_secs_f64();
        if let (Some(rapl), Some(before)) = (&self.rapl, &mark.rapl) {
            if let Some(after) = rapl.read() {
                return Energy {
                    joules: rapl.joules_between(before, &after),
                    source: EnergySource::Rapl,
                    seconds,
                };
            }
        }
        // Without a CPU clock, every thread is taken as busy throughout.
        let cpu = match (mark.cpu, process_cpu_time()) {
            (Some(a), Some(b)) => b.saturating_sub(a).as_secs_f64(),
            _ => seconds * self.cfg.threads as f64,
        };
        Energy {
            joules: self.cfg.power.joules(seconds, cpu, self.cfg.threads, bytes),
            source: EnergySource::Estimate,
            seconds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake powercap tree: `(dir, name, energy_uj, max_energy_range_uj)`.
    fn fake_powercap(zones: &[(&str, &str, u64, u64)]) -> PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "baicai-powercap-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        for &(dir, name, e, max) in zones {
            let z = root.join(dir);
            std::fs::create_dir_all(&z).unwrap();
            std::fs::write(z.join("name"), format!("{name}\n")).unwrap();
            std::fs::write(z.join("energy_uj"), format!("{e}\n")).unwrap();
            std::fs::write(z.join("max_energy_range_uj"), format!("{max}\n")).unwrap();
        }
        root
    }

    fn set_energy(root: &Path, dir: &str, uj: u64) {
        std::fs::write(root.join(dir).join("energy_uj"), format!("{uj}\n")).unwrap();
    }

    #[test]
    fn rapl_finds_package_and_dram_and_skips_core_and_mmio() {
        let root = fake_powercap(&[
            ("intel-rapl:0", "package-0", 1_000, 1 << 32),
            ("intel-rapl:0/intel-rapl:0:0", "core", 5, 1 << 32),
            ("intel-rapl:0:1", "dram", 2_000, 1 << 32),
            ("intel-rapl-mmio:0", "package-0", 7, 1 << 32),
        ]);
        let r = Rapl::discover(&root).unwrap();
        assert_eq!(r.domain_names(), ["package-0", "dram"]);
        assert_eq!(r.read().unwrap(), [1_000, 2_000]);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn rapl_delta_survives_a_wrap_of_one_counter() {
        let max = 262_143_328_850; // a real AMD max_energy_range_uj
        let root = fake_powercap(&[
            ("intel-rapl:0", "package-0", max - 3_000_000, max),
            ("intel-rapl:1", "dram", 10_000_000, 1 << 32),
        ]);
        let meter = EnergyMeter::new(EnergyConfig {
            powercap_root: Some(root.clone()),
            ..EnergyConfig::default()
        });
        assert_eq!(meter.source(), EnergySource::Rapl);
        let mark = meter.start();
        // Package: 3 J to the wrap point and 2 J past it; DRAM: 0.5 J without wrapping.
        set_energy(&root, "intel-rapl:0", 2_000_000);
        set_energy(&root, "intel-rapl:1", 10_500_000);
        let e = meter.finish(&mark, 0);
        assert_eq!(e.source, EnergySource::Rapl);
        assert!((e.joules - 5.5).abs() < 1e-9, "{} J", e.joules);
        std::fs::remove_dir_all(root).unwrap();
        assert_eq!(wrapped_delta(10, 4, 16), 10);
        assert_eq!(wrapped_delta(4, 10, 16), 6);
    }

    #[test]
    fn unreadable_or_absent_rapl_falls_back_to_the_estimate() {
        let missing = std::env::temp_dir().join("baicai-no-such-powercap");
        assert!(matches!(
            Rapl::discover(&missing),
            Err(RaplUnavailable::Absent(_))
        ));
        // A package zone whose counter cannot be read (what non-root sees: the file is 0400).
        let root = fake_powercap(&[("intel-rapl:0", "package-0", 1, 100)]);
        std::fs::remove_file(root.join("intel-rapl:0/energy_uj")).unwrap();
        assert!(matches!(
            Rapl::discover(&root),
            Err(RaplUnavailable::NotReadable(f)) if f.ends_with("energy_uj")
        ));
        let meter = EnergyMeter::new(EnergyConfig {
            powercap_root: Some(root.clone()),
            ..EnergyConfig::default()
        });
        assert_eq!(meter.source(), EnergySource::Estimate);
        assert!(meter.rapl_unavailable.is_some());
        assert_eq!(
            meter.finish(&meter.start(), 0).source,
            EnergySource::Estimate
        );
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn power_model_estimate_adds_idle_share_cores_and_dram() {
        let m = PowerModel {
            idle_watts: 100.0,
            cores: 10,
            watts_per_busy_core: 5.0,
            dram_watts_per_gbps: 0.2,
        };
        // 2 s on 2 of 10 cores: idle share 20 W × 2 s = 40 J; 3 CPU-seconds × 5 W = 15 J;
        // 10 GB × 0.2 J/GB = 2 J.
        let j = m.joules(2.0, 3.0, 2, 10_000_000_000);
        assert!((j - 57.0).abs() < 1e-9, "{j}");
        // More threads than cores are charged the whole machine's idle draw.
        assert!((m.joules(1.0, 0.0, 64, 0) - 100.0).abs() < 1e-9);
    }

    #[test]
    fn estimate_uses_process_cpu_time() {
        let meter = EnergyMeter::new(EnergyConfig {
            power: PowerModel {
                idle_watts: 0.0,
                cores: 1,
                watts_per_busy_core: 10.0,
                dram_watts_per_gbps: 0.0,
            },
            powercap_root: None,
            threads: 1,
        });
        let mark = meter.start();
        let cpu0 = process_cpu_time().unwrap();
        let mut x = 0u64;
        // Spin until the process has used 50 ms of CPU (on a busy machine that takes longer).
        while process_cpu_time().unwrap() - cpu0 < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let e = meter.finish(&mark, 0);
        assert_eq!(e.source, EnergySource::Estimate);
        // ≥ 50 ms of CPU at 10 W (other test threads may add to the process's time).
        assert!(e.joules >= 0.5, "{} J", e.joules);
    }

    #[test]
    fn machine_file_overrides_defaults_and_names_bad_lines() {
        let m = PowerModel::parse("idle_watts = 40\ncores = 8\n").unwrap();
        assert_eq!(m.idle_watts, 40.0);
        assert_eq!(m.cores, 8);
        assert_eq!(
            m.watts_per_busy_core,
            PowerModel::default().watts_per_busy_core
        );
        let (line, msg) = PowerModel::parse("cores = 8\nwatts_per_busy_core = -1.0\n").unwrap_err();
        assert_eq!(line, 2, "{msg}");
        let (line, msg) = PowerModel::parse("cores = 8\n\nturbo = true\n").unwrap_err();
        assert_eq!(line, 3, "{msg}");
        assert!(msg.contains("turbo"), "{msg}");
        let (line, _) = PowerModel::parse("idle_watts = 1\ncores = 0\n").unwrap_err();
        assert_eq!(line, 2);
    }
}
