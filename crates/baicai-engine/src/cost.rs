//! Money per token: energy × the tariff in force × PUE, plus the machine's amortised hardware
//! cost for the time it worked (DESIGN.md, "Cost").

use std::time::SystemTime;

use crate::energy::{Energy, EnergyConfig, PowerModel};
use crate::tariff::{Currency, Tariff, JOULES_PER_KWH};

/// Default electricity price, CNY per kWh: a West-China data-centre rate.
pub const DEFAULT_PRICE_PER_KWH: f64 = 0.2;

/// What a unit of work costs: the site's tariff and the machine's price per hour.
#[derive(Debug, Clone, PartialEq)]
pub struct CostModel {
    pub tariff: Tariff,
    /// Amortised hardware cost per hour of the machine, in the tariff's currency.
    pub hardware_cost_per_hour: f64,
}

impl Default for CostModel {
    /// [`DEFAULT_PRICE_PER_KWH`] CNY all day, PUE 1, no hardware cost.
    fn default() -> Self {
        CostModel {
            tariff: Tariff::flat(Currency::CNY, DEFAULT_PRICE_PER_KWH, 1.0),
            hardware_cost_per_hour: 0.0,
        }
    }
}

impl CostModel {
    /// The currency of every figure.
    pub fn currency(&self) -> Currency {
        self.tariff.currency
    }

    /// Cost of an interval's energy at the price in force at `at`, plus the hardware's time.
    pub fn cost(&self, e: &Energy, at: SystemTime) -> f64 {
        self.tariff.energy_cost(e.joules, at) + self.hardware_cost_per_hour * e.seconds / 3600.0
    }

    /// Cost per million tokens of work that spends `joules_per_token` and runs at
    /// `tokens_per_s`, at the price in force at `at`.
    pub fn per_million_tokens(
        &self,
        joules_per_token: f64,
        tokens_per_s: f64,
        at: SystemTime,
    ) -> f64 {
        let energy = joules_per_token / JOULES_PER_KWH * self.tariff.price_at(at);
        let hardware = if tokens_per_s > 0.0 {
            self.hardware_cost_per_hour / 3600.0 / tokens_per_s
        } else {
            0.0
        };
        (energy + hardware) * 1e6
    }
}

/// Energy and cost accounting of the serving engine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Accounting {
    pub energy: EnergyConfig,
    pub cost: CostModel,
}

/// Estimated joules per token of work that keeps `threads` threads busy at `tokens_per_s` and
/// reads `bytes_per_token` from memory for each token (the power model at that operating point).
pub fn joules_per_token(
    power: &PowerModel,
    threads: usize,
    tokens_per_s: f64,
    bytes_per_token: f64,
) -> f64 {
    if tokens_per_s <= 0.0 {
        return 0.0;
    }
    let wall = 1.0 / tokens_per_s;
    power.joules(wall, wall * threads as f64, threads, bytes_per_token as u64)
}

/// Splits `total` over items by the tokens each computed (`weights`); all-zero weights split
/// evenly.
pub fn split_by_tokens(total: f64, tokens: &[usize]) -> Vec<f64> {
    let sum: usize = tokens.iter().sum();
    if sum == 0 {
        let n = tokens.len().max(1) as f64;
        return vec![total / n; tokens.len()];
    }
    tokens
        .iter()
        .map(|&t| total * t as f64 / sum as f64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::energy::EnergySource;

    #[test]
    fn cost_is_energy_at_the_price_plus_hardware_time() {
        let m = CostModel {
            tariff: Tariff::flat(Currency::CNY, 0.5, 1.2),
            hardware_cost_per_hour: 3.6,
        };
        let e = Energy {
            joules: 3.6e6,
            source: EnergySource::Estimate,
            seconds: 10.0,
        };
        // 1 kWh × 0.5 × 1.2 + 3.6/h × 10 s.
        let c = m.cost(&e, SystemTime::now());
        assert!((c - 0.61).abs() < 1e-12, "{c}");
        // 0.36 J/token at 100 tok/s: energy 0.36/3.6e6 × 0.6 = 6e-8, hardware 1e-5 per token.
        let pm = m.per_million_tokens(0.36, 100.0, SystemTime::now());
        assert!((pm - (0.06 + 10.0)).abs() < 1e-9, "{pm}");
    }

    #[test]
    fn joules_per_token_at_an_operating_point() {
        let p = PowerModel {
            idle_watts: 64.0,
            cores: 32,
            watts_per_busy_core: 5.0,
            dram_watts_per_gbps: 0.25,
        };
        // 2 threads at 50 tok/s: (4 W idle share + 10 W busy) / 50 + 0.4 GB × 0.25 J/GB.
        let j = joules_per_token(&p, 2, 50.0, 4e8);
        assert!((j - (14.0 / 50.0 + 0.1)).abs() < 1e-12, "{j}");
        assert_eq!(joules_per_token(&p, 2, 0.0, 4e8), 0.0);
    }

    #[test]
    fn a_batched_step_is_split_by_tokens_computed() {
        // A 480-token prefill chunk and two decoding sequences in one 10 J step.
        let parts = split_by_tokens(10.0, &[480, 1, 1]);
        assert!((parts[0] - 10.0 * 480.0 / 482.0).abs() < 1e-12);
        assert!((parts[1] - 10.0 / 482.0).abs() < 1e-12);
        assert!((parts.iter().sum::<f64>() - 10.0).abs() < 1e-12);
        assert_eq!(split_by_tokens(6.0, &[0, 0, 0]), [2.0, 2.0, 2.0]);
        assert!(split_by_tokens(1.0, &[]).is_empty());
    }
}
