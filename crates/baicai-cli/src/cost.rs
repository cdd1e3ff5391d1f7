//! The cost flags shared by `bench`, `inspect` and `serve`: electricity price or tariff file,
//! hardware cost per hour, and the machine file behind energy estimates.

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::Result;
use baicai_engine::cost::{Accounting, CostModel, DEFAULT_PRICE_PER_KWH};
use baicai_engine::energy::{EnergyConfig, EnergyMeter, EnergySource, PowerModel};
use baicai_engine::tariff::{Currency, Tariff};
use clap::Args;

/// Flags that say what energy and hardware cost.
#[derive(Args, Debug, Clone)]
pub struct CostArgs {
    /// Electricity price per kWh, in CNY, all day (PUE 1); see --tariff for time-of-use prices.
    #[arg(long = "electricity-price", value_name = "CNY_PER_KWH", default_value_t = DEFAULT_PRICE_PER_KWH, conflicts_with = "tariff")]
    pub electricity_price: f64,
    /// Tariff file (TOML: currency, prices of periods, time-of-use windows, the site's PUE).
    #[arg(long, value_name = "FILE")]
    pub tariff: Option<PathBuf>,
    /// The machine's amortised hardware cost per hour, in the tariff's currency.
    #[arg(
        long = "hardware-cost-per-hour",
        value_name = "COST",
        default_value_t = 0.0
    )]
    pub hardware_cost_per_hour: f64,
    /// Machine file (TOML) for energy estimates: idle_watts, cores, watts_per_busy_core,
    /// dram_watts_per_gbps (default: a typical 32-core server CPU).
    #[arg(long, value_name = "FILE")]
    pub machine: Option<PathBuf>,
}

impl CostArgs {
    /// The tariff and hardware cost these flags give.
    ///
    /// # Errors
    /// An invalid tariff file (the error names the line) or a negative price or hardware cost.
    pub fn cost_model(&self) -> Result<CostModel> {
        if !(self.electricity_price.is_finite() && self.electricity_price >= 0.0) {
            anyhow::bail!("--electricity-price {} must be ≥ 0", self.electricity_price);
        }
        if !(self.hardware_cost_per_hour.is_finite() && self.hardware_cost_per_hour >= 0.0) {
            anyhow::bail!(
                "--hardware-cost-per-hour {} must be ≥ 0",
                self.hardware_cost_per_hour
            );
        }
        let tariff = match &self.tariff {
            Some(path) => Tariff::from_file(path)?,
            None => Tariff::flat(Currency::CNY, self.electricity_price, 1.0),
        };
        Ok(CostModel {
            tariff,
            hardware_cost_per_hour: self.hardware_cost_per_hour,
        })
    }

    /// The power model: the machine file's, or the defaults.
    ///
    /// # Errors
    /// The machine file cannot be read or is invalid (the error names the line).
    pub fn power_model(&self) -> Result<PowerModel> {
        Ok(match &self.machine {
            Some(path) => PowerModel::from_file(path)?,
            None => PowerModel::default(),
        })
    }

    /// An energy meter for `threads` threads (RAPL when readable, else the power model).
    ///
    /// # Errors
    /// See [`CostArgs::power_model`].
    pub fn meter(&self, threads: usize) -> Result<EnergyMeter> {
        Ok(EnergyMeter::new(self.energy_config(threads)?))
    }

    /// Energy settings for `threads` threads: RAPL when readable, else the power model.
    ///
    /// # Errors
    /// See [`CostArgs::power_model`].
    pub fn energy_config(&self, threads: usize) -> Result<EnergyConfig> {
        Ok(EnergyConfig {
            power: self.power_model()?,
            threads,
            ..EnergyConfig::default()
        })
    }

    /// The serving engine's energy and cost accounting, on `threads` threads.
    ///
    /// # Errors
    /// See [`CostArgs::cost_model`] and [`CostArgs::power_model`].
    pub fn accounting(&self, threads: usize) -> Result<Accounting> {
        Ok(Accounting {
            energy: self.energy_config(threads)?,
            cost: self.cost_model()?,
        })
    }
}

/// One line that says where energy figures come from: RAPL, or the power model's values.
pub fn source_note(meter: &EnergyMeter) -> String {
    match meter.source() {
        EnergySource::Rapl => "rapl (package and DRAM counters)".into(),
        EnergySource::Estimate => {
            let p = meter.power_model();
            let why = meter
                .rapl_unavailable
                .as_ref()
                .map_or(String::new(), |e| format!("; {e}"));
            format!(
                "estimate (CPU time × power model: idle {} W over {} cores, {} W per busy core, {} W per GB/s{why})",
                p.idle_watts, p.cores, p.watts_per_busy_core, p.dram_watts_per_gbps
            )
        }
    }
}

/// `0.2 CNY/kWh` (PUE included), the price in force now.
pub fn price_note(cost: &CostModel) -> String {
    let mut s = format!(
        "{:.3} {}/kWh",
        cost.tariff.price_at(SystemTime::now()),
        cost.currency()
    );
    if cost.hardware_cost_per_hour > 0.0 {
        s += &format!(
            " + {} {}/h hardware",
            cost.hardware_cost_per_hour,
            cost.currency()
        );
    }
    s
}
