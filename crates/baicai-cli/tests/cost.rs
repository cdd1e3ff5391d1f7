//! Cost accounting from the command line: `bench --json` energy and cost fields with their
//! source, tariff errors naming the line, and `baicai plan` (ordering, JSON, table, roofline or
//! bench figures) on the small test model and the example sites.

use std::path::PathBuf;

use serde_json::Value;

mod common;
use common::{baicai, stderr, stdout};

/// The small test model, or `None` (with a note) when it has not been fetched.
fn gemma() -> Option<String> {
    common::model("gemma-3-270m-q4_k_m.gguf")
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("baicai-cost-{}-{name}", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn bench_json_has_energy_and_cost_fields_with_their_source() {
    let Some(m) = gemma() else { return };
    let o = baicai(&[
        "bench",
        "-m",
        &m,
        "-p",
        "16",
        "-n",
        "4",
        "-r",
        "1",
        "--json",
        "--electricity-price",
        "0.5",
        "--hardware-cost-per-hour",
        "1.0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let source = j["energy_source"].as_str().unwrap();
    assert!(source == "rapl" || source == "estimate", "{source}");
    for key in [
        "pp_joules_per_token",
        "tg_joules_per_token",
        "pp_cost_per_million_tokens",
        "tg_cost_per_million_tokens",
    ] {
        let v = j[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing in {j}"));
        assert!(v.is_finite() && v > 0.0, "{key} = {v}");
    }
    assert_eq!(j["currency"], "CNY");
    assert_eq!(j["electricity_price_per_kwh"], 0.5);
    assert_eq!(j["hardware_cost_per_hour"], 1.0);
    // Hardware alone: 1 CNY/h ÷ 3600 ÷ tok/s per token.
    let tg = j["tg_tokens_per_s"].as_f64().unwrap();
    let floor = 1e6 / 3600.0 / tg;
    assert!(j["tg_cost_per_million_tokens"].as_f64().unwrap() > floor);
    assert_eq!(j["decode_batch"], Value::Array(Vec::new()));
}

#[test]
fn invalid_tariff_is_one_line_naming_the_line() {
    let t = temp_file(
        "bad-tariff.toml",
        "currency = \"CNY\"\n[price]\nflat = -0.1\n[[window]]\nperiod = \"flat\"\nstart = \"00:00\"\nend = \"24:00\"\n",
    );
    let o = baicai(&[
        "bench",
        "-m",
        "no-such-model.gguf",
        "--tariff",
        t.to_str().unwrap(),
    ]);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("line 3") && err.contains("flat"), "{err}");
    std::fs::remove_file(t).unwrap();
}

#[test]
fn plan_orders_sites_cheapest_first_from_bench_figures_or_the_roofline() {
    let Some(m) = gemma() else { return };
    let bench = temp_file(
        "bench.json",
        r#"{"threads": 2, "pp_tokens_per_s": 400.0, "tg_tokens_per_s": 70.0,
            "bandwidth_gb_per_s": 30.0,
            "decode_batch": [{"batch": 4, "tokens_per_s": 120.0}]}"#,
    );
    let sites = "examples/cost/sites.toml";
    let args = [
        "plan",
        "-m",
        &m,
        "--sites",
        sites,
        "--requests-per-day",
        "500000",
        "--latency-target",
        "20",
        "--json",
    ];
    let o = baicai(&[&args[..], &["--bench", bench.to_str().unwrap()]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let j: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let p = j["placements"].as_array().unwrap();
    assert_eq!(p.len(), 3);
    let costs: Vec<f64> = p
        .iter()
        .map(|x| x["cost_per_day"].as_f64().unwrap())
        .collect();
    assert!(costs.windows(2).all(|w| w[0] <= w[1]), "{costs:?}");
    // The same server is cheaper where power is cheap.
    let pos = |n: &str| p.iter().position(|x| x["site"] == n).unwrap();
    assert!(pos("west-epyc") < pos("east-epyc"));
    for x in p {
        assert_eq!(x["speed"]["source"], "bench-batched");
        assert_eq!(x["energy_source"], "estimate");
        assert!(x["replicas"].as_u64().unwrap() >= 1);
        assert!(x["cost_per_million_tokens"].as_f64().unwrap() > 0.0);
        assert_eq!(x["by_concurrency"][0]["concurrency"], 1);
    }
    // Without bench figures: the roofline, said so, in the table too.
    let o = baicai(&args[..args.len() - 1]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    assert!(
        table.contains("roofline") && table.contains("west-epyc"),
        "{table}"
    );
    assert!(table.contains("CNY"), "{table}");
    std::fs::remove_file(bench).unwrap();
}
