//! Electricity tariffs: a currency, a price per kWh for each period of a time-of-use schedule
//! (peak, flat, valley, …), the windows of the day each period holds, and the site's PUE (power
//! usage effectiveness: facility energy ÷ IT energy, so a kWh drawn by the machine is billed as
//! `pue` kWh).
//!
//! ```toml
//! currency = "CNY"
//! pue = 1.3
//! utc_offset = "+08:00"   # the windows' clock (default +00:00)
//!
//! [price]                 # per kWh
//! peak = 1.05
//! flat = 0.65
//! valley = 0.28
//!
//! [[window]]
//! period = "valley"
//! start = "23:00"         # a window may wrap past midnight
//! end = "07:00"
//! ```
//!
//! The windows must cover the day exactly once; every error names the file's line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use toml::Spanned;

use crate::energy::line_of;

/// Minutes in a day.
const DAY_MINUTES: usize = 24 * 60;

/// Joules in a kWh.
pub const JOULES_PER_KWH: f64 = 3.6e6;

/// An ISO 4217 currency code, checked against the active codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency([u8; 3]);

/// Active ISO 4217 codes (the list of the ISO 4217 maintenance agency, 2024).
const ISO_4217: &str = "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND \
BOB BRL BSD BTN BWP BYN BZD CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB \
EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY \
KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR \
MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF \
SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS \
UAH UGX USD UYU UZS VES VND VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG";

impl Currency {
    /// Chinese yuan, the default.
    pub const CNY: Currency = Currency(*b"CNY");

    /// The currency with this ISO 4217 code (upper case), if it is an active one.
    pub fn from_code(code: &str) -> Option<Currency> {
        let b: [u8; 3] = code.as_bytes().try_into().ok()?;
        ISO_4217
            .split_ascii_whitespace()
            .any(|c| c == code)
            .then_some(Currency(b))
    }

    /// The three-letter code.
    pub fn code(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl Default for Currency {
    fn default() -> Self {
        Currency::CNY
    }
}

impl std::fmt::Display for Currency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// One window of the day at one period's price.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub period: String,
    /// Minutes after midnight, local time; `end` < `start` wraps past midnight.
    pub start: usize,
    pub end: usize,
    /// Per kWh, before PUE.
    pub price: f64,
}

/// A site's electricity price over the day.
#[derive(Debug, Clone, PartialEq)]
pub struct Tariff {
    pub currency: Currency,
    /// Facility kWh billed per kWh the machine draws (≥ 1).
    pub pue: f64,
    /// The windows' clock, in minutes east of UTC.
    pub utc_offset_minutes: i32,
    pub windows: Vec<Window>,
}

/// Why a tariff file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TariffError {
    #[error("cannot read tariff file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}, line {line}: {message}")]
    Invalid {
        path: String,
        line: usize,
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTariff {
    currency: Spanned<String>,
    #[serde(default)]
    pue: Option<Spanned<f64>>,
    #[serde(default)]
    utc_offset: Option<Spanned<String>>,
    price: Spanned<BTreeMap<String, Spanned<f64>>>,
    #[serde(default)]
    window: Vec<Spanned<RawWindow>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    period: Spanned<String>,
    start: Spanned<String>,
    end: Spanned<String>,
}

impl Tariff {
    /// One price all day, in `currency` per kWh.
    pub fn flat(currency: Currency, price: f64, pue: f64) -> Tariff {
        Tariff {
            currency,
            pue,
            utc_offset_minutes: 0,
            windows: vec![Window {
                period: "flat".into(),
                start: 0,
                end: DAY_MINUTES,
                price,
            }],
        }
    }

    /// Reads and checks a tariff file.
    ///
    /// # Errors
    /// The file cannot be read or is invalid (see [`Tariff::parse`]); the error names the line.
    pub fn from_file(path: &Path) -> Result<Tariff, TariffError> {
        let text = std::fs::read_to_string(path).map_err(|source| TariffError::Read {
            path: path.to_owned(),
            source,
        })?;
        Tariff::parse(&text, &path.display().to_string())
    }

    /// Parses a tariff file's text (`name` is used in errors).
    ///
    /// # Errors
    /// Not TOML or unknown keys; an unknown currency code; a negative or non-finite price; a
    /// PUE below 1; a malformed time or UTC offset; a window whose period has no price; windows
    /// that overlap or leave part of the day uncovered. Each names the line.
    pub fn parse(text: &str, name: &str) -> Result<Tariff, TariffError> {
        let err = |at: usize, message: String| TariffError::Invalid {
            path: name.to_string(),
            line: line_of(text, at),
            message,
        };
        let raw: RawTariff = toml::from_str(text)
            .map_err(|e| err(e.span().map_or(0, |s| s.start), e.message().trim().into()))?;
        let currency = Currency::from_code(raw.currency.get_ref()).ok_or_else(|| {
            err(
                raw.currency.span().start,
                format!(
                    "unknown currency code {:?} (ISO 4217, e.g. \"CNY\", \"USD\")",
                    raw.currency.get_ref()
                ),
            )
        })?;
        let pue = match &raw.pue {
            Some(p) if !(p.get_ref().is_finite() && *p.get_ref() >= 1.0) => {
                return Err(err(
                    p.span().start,
                    format!("pue = {} must be at least 1", p.get_ref()),
                ))
            }
            Some(p) => *p.get_ref(),
            None => 1.0,
        };
        let utc_offset_minutes = match &raw.utc_offset {
            Some(o) => parse_offset(o.get_ref()).ok_or_else(|| {
                err(
                    o.span().start,
                    format!("utc_offset {:?} is not ±HH:MM", o.get_ref()),
                )
            })?,
            None => 0,
        };
        for (period, p) in raw.price.get_ref() {
            let v = *p.get_ref();
            if !(v.is_finite() && v >= 0.0) {
                return Err(err(
                    p.span().start,
                    format!("price of {period} is {v}; prices must be ≥ 0"),
                ));
            }
        }
        if raw.window.is_empty() {
            return Err(err(
                raw.price.span().start,
                "no [[window]]: the day's 24 hours must be covered".into(),
            ));
        }
        let mut windows = Vec::with_capacity(raw.window.len());
        // Which window (index into raw.window) holds each minute of the day.
        let mut owner: Vec<Option<usize>> = vec![None; DAY_MINUTES];
        for (i, w) in raw.window.iter().enumerate() {
            let at = w.span().start;
            let w = w.get_ref();
            let time = |t: &Spanned<String>, end: bool| {
                parse_time(t.get_ref(), end).ok_or_else(|| {
                    err(
                        t.span().start,
                        format!("time {:?} is not HH:MM (00:00 to 24:00)", t.get_ref()),
                    )
                })
            };
            let (start, end) = (time(&w.start, false)?, time(&w.end, true)?);
            let price = raw.price.get_ref().get(w.period.get_ref()).ok_or_else(|| {
                err(
                    w.period.span().start,
                    format!("period {:?} has no price in [price]", w.period.get_ref()),
                )
            })?;
            if start == end {
                return Err(err(at, "a window must not be empty (start = end)".into()));
            }
            for m in minutes(start, end) {
                if let Some(j) = owner[m] {
                    return Err(err(
                        at,
                        format!(
                            "window {}–{} overlaps the window at line {} at {}",
                            w.start.get_ref(),
                            w.end.get_ref(),
                            line_of(text, raw.window[j].span().start),
                            clock(m)
                        ),
                    ));
                }
                owner[m] = Some(i);
            }
            windows.push(Window {
                period: w.period.get_ref().clone(),
                start,
                end,
                price: *price.get_ref(),
            });
        }
        if let Some(gap) = owner.iter().position(Option::is_none) {
            let gap_end = (gap..DAY_MINUTES)
                .find(|&m| owner[m].is_some())
                .unwrap_or(DAY_MINUTES);
            // The window that ends where the gap begins, or the last one.
            let before = owner[(gap + DAY_MINUTES - 1) % DAY_MINUTES].unwrap_or(windows.len() - 1);
            return Err(err(
                raw.window[before].span().start,
                format!(
                    "no window covers {}–{}: the windows must cover all 24 hours",
                    clock(gap),
                    clock(gap_end)
                ),
            ));
        }
        Ok(Tariff {
            currency,
            pue,
            utc_offset_minutes,
            windows,
        })
    }

    /// The window in force at minute `m` of the local day.
    fn window_at_minute(&self, m: usize) -> &Window {
        self.windows
            .iter()
            .find(|w| minutes(w.start, w.end).any(|x| x == m))
            .unwrap_or(&self.windows[0])
    }

    /// The window in force at `t`.
    pub fn window_at(&self, t: SystemTime) -> &Window {
        let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
        let local = secs + self.utc_offset_minutes as i64 * 60;
        let m = local.rem_euclid(86_400) as usize / 60;
        self.window_at_minute(m)
    }

    /// Price per kWh drawn by the machine at `t`, PUE included.
    pub fn price_at(&self, t: SystemTime) -> f64 {
        self.window_at(t).price * self.pue
    }

    /// Cost of `joules` drawn by the machine at `t`, PUE included.
    pub fn energy_cost(&self, joules: f64, t: SystemTime) -> f64 {
        joules / JOULES_PER_KWH * self.price_at(t)
    }

    /// The day's time-weighted mean price per kWh, PUE included (load spread evenly over the
    /// day pays this).
    pub fn mean_price(&self) -> f64 {
        let sum: f64 = self
            .windows
            .iter()
            .map(|w| w.price * minutes(w.start, w.end).count() as f64)
            .sum();
        sum / DAY_MINUTES as f64 * self.pue
    }
}

/// The minutes of a window, wrapping past midnight when `end` < `start`.
fn minutes(
    start: usize,
    end: usize,
) -> std::iter::Chain<std::ops::Range<usize>, std::ops::Range<usize>> {
    if end > start {
        (start..end).chain(0..0)
    } else {
        (start..DAY_MINUTES).chain(0..end)
    }
}

/// `HH:MM` → minutes after midnight; `24:00` only as an end.
fn parse_time(s: &str, end: bool) -> Option<usize> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (usize, usize) = (h.parse().ok()?, m.parse().ok()?);
    let t = h * 60 + m;
    (m < 60 && (t < DAY_MINUTES || (end && t == DAY_MINUTES))).then_some(t)
}

/// `+08:00` / `-05:30` → minutes east of UTC.
fn parse_offset(s: &str) -> Option<i32> {
    let sign = match s.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let t = parse_time(&s[1..], false)? as i32;
    (t <= 14 * 60).then_some(sign * t)
}

fn clock(m: usize) -> String {
    format!("{:02}:{:02}", m / 60, m % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"currency = "CNY"
pue = 1.25
utc_offset = "+08:00"

[price]
peak = 1.2
flat = 0.6
valley = 0.2

[[window]]
period = "valley"
start = "23:00"
end = "07:00"

[[window]]
period = "flat"
start = "07:00"
end = "10:00"

[[window]]
period = "peak"
start = "10:00"
end = "15:00"

[[window]]
period = "flat"
start = "15:00"
end = "18:00"

[[window]]
period = "peak"
start = "18:00"
end = "23:00"
"#;

    fn at_utc(h: u64, m: u64) -> SystemTime {
        // 2026-01-01 00:00 UTC plus h:m.
        UNIX_EPOCH + std::time::Duration::from_secs(1_767_225_600 + h * 3600 + m * 60)
    }

    fn invalid(text: &str) -> (usize, String) {
        match Tariff::parse(text, "t.toml") {
            Err(TariffError::Invalid { line, message, .. }) => (line, message),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn time_of_use_tariff_prices_by_local_hour_with_pue() {
        let t = Tariff::parse(GOOD, "t.toml").unwrap();
        assert_eq!(t.currency.code(), "CNY");
        assert_eq!(t.windows.len(), 5);
        // 16:30 UTC = 00:30 in +08:00: valley (wrapped window).
        assert_eq!(t.window_at(at_utc(16, 30)).period, "valley");
        assert!((t.price_at(at_utc(16, 30)) - 0.25).abs() < 1e-12);
        // 03:00 UTC = 11:00 local: peak.
        assert_eq!(t.window_at(at_utc(3, 0)).period, "peak");
        // 1 kWh at peak: 1.2 × 1.25.
        assert!((t.energy_cost(3.6e6, at_utc(3, 0)) - 1.5).abs() < 1e-12);
        // 8 h valley, 6 h flat, 10 h peak.
        let mean = (8.0 * 0.2 + 6.0 * 0.6 + 10.0 * 1.2) / 24.0 * 1.25;
        assert!((t.mean_price() - mean).abs() < 1e-12);
    }

    #[test]
    fn one_window_for_the_whole_day_and_flat_tariffs() {
        let t = Tariff::parse(
            "currency = \"USD\"\n[price]\nflat = 0.1\n[[window]]\nperiod = \"flat\"\nstart = \"00:00\"\nend = \"24:00\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(t.pue, 1.0);
        assert!((t.mean_price() - 0.1).abs() < 1e-12);
        let f = Tariff::flat(Currency::CNY, 0.2, 1.0);
        assert!((f.price_at(at_utc(5, 0)) - 0.2).abs() < 1e-12);
        assert!((f.mean_price() - 0.2).abs() < 1e-12);
    }

    #[test]
    fn overlapping_windows_name_both_lines() {
        let text = GOOD.replace("start = \"10:00\"", "start = \"09:00\"");
        let (line, msg) = invalid(&text);
        assert_eq!(line, 20, "{msg}");
        assert!(msg.contains("line 15") && msg.contains("09:00"), "{msg}");
    }

    #[test]
    fn missing_hours_are_named_with_the_window_before_the_gap() {
        let text = GOOD.replace("end = \"15:00\"", "end = \"14:00\"");
        let (line, msg) = invalid(&text);
        assert_eq!(line, 20, "{msg}");
        assert!(msg.contains("14:00–15:00"), "{msg}");
    }

    #[test]
    fn negative_price_names_its_line() {
        let (line, msg) = invalid(&GOOD.replace("flat = 0.6", "flat = -0.6"));
        assert_eq!(line, 7, "{msg}");
        assert!(msg.contains("flat"), "{msg}");
    }

    #[test]
    fn unknown_currency_names_its_line() {
        let (line, msg) = invalid(&GOOD.replace("\"CNY\"", "\"XYZ\""));
        assert_eq!(line, 1, "{msg}");
        assert!(msg.contains("XYZ"), "{msg}");
        assert!(Currency::from_code("usd").is_none());
        assert_eq!(Currency::from_code("EUR").unwrap().to_string(), "EUR");
    }

    #[test]
    fn other_mistakes_name_their_lines() {
        let (line, msg) = invalid(&GOOD.replace("end = \"07:00\"", "end = \"7am\""));
        assert_eq!((line, msg.contains("7am")), (13, true), "{msg}");
        let (line, msg) = invalid(&GOOD.replace(
            "period = \"flat\"\nstart = \"15",
            "period = \"shoulder\"\nstart = \"15",
        ));
        assert_eq!((line, msg.contains("shoulder")), (26, true), "{msg}");
        let (line, msg) = invalid(&GOOD.replace("pue = 1.25", "pue = 0.9"));
        assert_eq!(line, 2, "{msg}");
        let (line, msg) = invalid(&GOOD.replace("utc_offset = \"+08:00\"", "utc_offset = \"8\""));
        assert_eq!(line, 3, "{msg}");
        // Not TOML / unknown key: the parser's own span.
        let (line, msg) = invalid(&GOOD.replace("valley = 0.2", "valley = = 0.2"));
        assert_eq!(line, 8, "{msg}");
        let (line, msg) = invalid(&GOOD.replace("pue = 1.25", "pue = 1.25\nvoltage = 220"));
        assert_eq!(line, 3, "{msg}");
        let (_, msg) = invalid("currency = \"CNY\"\n[price]\nflat = 1\n");
        assert!(msg.contains("window"), "{msg}");
    }
}
