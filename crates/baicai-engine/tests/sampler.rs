//! Sampler behaviour: determinism, greedy, truncation sets, penalties, logprobs, stop strings.

use baicai_engine::sampler::{log_softmax_top_n, Sampler, SamplerConfig, StopMatcher, StopResult};

/// Logits whose softmax at temperature 1 is exactly `probs`.
fn logits_of(probs: &[f32]) -> Vec<f32> {
    probs.iter().map(|p| p.ln()).collect()
}

/// Deterministic pseudo-random logits (no RNG dependency in the test).
fn noisy_logits(n: usize, salt: u64) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let x = (i ^ salt)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .rotate_left(17);
            (x % 10_000) as f32 / 1000.0 - 5.0
        })
        .collect()
}

/// Relative frequency of each token over `draws` samples of the same logits.
fn frequencies(cfg: SamplerConfig, logits: &[f32], draws: usize) -> Vec<f64> {
    let mut s = Sampler::new(cfg);
    let mut counts = vec![0usize; logits.len()];
    for _ in 0..draws {
        counts[s.sample(&mut logits.to_vec()) as usize] += 1;
    }
    counts.iter().map(|&c| c as f64 / draws as f64).collect()
}

fn assert_close(got: &[f64], want: &[f64], tol: f64) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol,
            "token {i}: got {g:.4}, want {w:.4} (all: {got:?})"
        );
    }
}

fn unfiltered(temperature: f32) -> SamplerConfig {
    SamplerConfig {
        temperature,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        seed: Some(1),
        ..SamplerConfig::default()
    }
}

#[test]
fn default_config_matches_llamacpp_defaults() {
    let d = SamplerConfig::default();
    assert_eq!(
        (d.temperature, d.top_k, d.top_p, d.min_p),
        (0.8, 40, 0.95, 0.05)
    );
    assert_eq!((d.repeat_penalty, d.repeat_last_n), (1.0, 64));
    assert_eq!(
        (d.presence_penalty, d.frequency_penalty, d.seed),
        (0.0, 0.0, None)
    );
}

#[test]
fn same_seed_gives_same_sequence_and_other_seed_differs() {
    let run = |seed: u64| -> Vec<u32> {
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.5,
            seed: Some(seed),
            repeat_penalty: 1.1,
            ..SamplerConfig::default()
        });
        (0..200)
            .map(|step| {
                let t = s.sample(&mut noisy_logits(5000, step % 3));
                s.accept(t);
                t
            })
            .collect()
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(43));
}

#[test]
fn entropy_seed_is_reported_and_reproduces_the_run() {
    let cfg = SamplerConfig {
        temperature: 2.0,
        ..SamplerConfig::default()
    };
    let mut a = Sampler::new(cfg.clone());
    let mut b = Sampler::new(SamplerConfig {
        seed: Some(a.seed()),
        ..cfg
    });
    for step in 0..50 {
        let logits = noisy_logits(1000, step);
        assert_eq!(a.sample(&mut logits.clone()), b.sample(&mut logits.clone()));
    }
}

#[test]
fn greedy_is_argmax_with_ties_to_lowest_id() {
    let mut s = Sampler::new(SamplerConfig::greedy());
    assert_eq!(s.sample(&mut [0.1, 2.0, -1.0, 2.0, 1.9]), 1);
    assert_eq!(s.sample(&mut [f32::NEG_INFINITY, f32::NAN, -3.0, -3.0]), 2);
    for salt in 0..20 {
        let logits = noisy_logits(10_000, salt);
        let want = (0..logits.len())
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a)))
            .unwrap() as u32;
        assert_eq!(s.sample(&mut logits.clone()), want, "salt {salt}");
    }
}

#[test]
fn top_k_one_equals_greedy_at_any_temperature() {
    for temperature in [0.1, 1.0, 5.0, 100.0] {
        let mut top1 = Sampler::new(SamplerConfig {
            temperature,
            top_k: 1,
            seed: Some(9),
            ..SamplerConfig::default()
        });
        let mut greedy = Sampler::new(SamplerConfig::greedy());
        for salt in 0..30 {
            let mut logits = noisy_logits(3000, salt);
            logits[17] = logits[5]; // a tie somewhere
            let want = greedy.sample(&mut logits.clone());
            assert_eq!(top1.sample(&mut logits), want, "temperature {temperature}");
        }
    }
}

#[test]
fn temperature_one_draws_follow_the_softmax() {
    let probs = [0.4, 0.3, 0.2, 0.1];
    let got = frequencies(unfiltered(1.0), &logits_of(&probs), 40_000);
    assert_close(&got, &[0.4, 0.3, 0.2, 0.1], 0.015);
}

#[test]
fn temperature_sharpens_the_distribution() {
    // At T = 0.5 the weights are p², renormalised.
    let probs = [0.4, 0.3, 0.2, 0.1];
    let sq: Vec<f64> = probs.iter().map(|p: &f64| p * p).collect();
    let z: f64 = sq.iter().sum();
    let want: Vec<f64> = sq.iter().map(|w| w / z).collect();
    let got = frequencies(
        unfiltered(0.5),
        &logits_of(&probs.map(|p| p as f32)),
        40_000,
    );
    assert_close(&got, &want, 0.015);
}

#[test]
fn top_k_keeps_the_k_most_likely() {
    let probs = [0.1, 0.35, 0.05, 0.3, 0.2];
    let cfg = SamplerConfig {
        top_k: 2,
        ..unfiltered(1.0)
    };
    let got = frequencies(cfg, &logits_of(&probs), 30_000);
    assert_close(&got, &[0.0, 0.35 / 0.65, 0.0, 0.3 / 0.65, 0.0], 0.015);
}

#[test]
fn top_p_keeps_the_smallest_set_reaching_p() {
    // Sorted: 0.5 (id 2), 0.3 (id 0), 0.1, 0.05, 0.05. p = 0.75 needs the first two.
    let probs = [0.3, 0.05, 0.5, 0.1, 0.05];
    let cfg = SamplerConfig {
        top_p: 0.75,
        ..unfiltered(1.0)
    };
    let got = frequencies(cfg, &logits_of(&probs), 30_000);
    assert_close(&got, &[0.375, 0.0, 0.625, 0.0, 0.0], 0.015);
    // p = 0.85 needs the third as well.
    let cfg = SamplerConfig {
        top_p: 0.85,
        ..unfiltered(1.0)
    };
    let got = frequencies(cfg, &logits_of(&probs), 30_000);
    assert_close(&got, &[0.3 / 0.9, 0.0, 0.5 / 0.9, 0.1 / 0.9, 0.0], 0.015);
}

#[test]
fn top_p_on_a_large_vocab_without_top_k() {
    // Three heavy tokens among 200k light ones: the light tail holds ~ 1.5 % of the mass, so
    // top_p = 0.9 keeps exactly the three heavy ones.
    let mut logits = vec![-6.0f32; 200_000];
    logits[1234] = 8.0;
    logits[99_999] = 7.0;
    logits[150_000] = 6.0;
    let cfg = SamplerConfig {
        top_p: 0.9,
        ..unfiltered(1.0)
    };
    let mut s = Sampler::new(cfg);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..2000 {
        seen.insert(s.sample(&mut logits.clone()));
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        [1234, 99_999, 150_000]
    );
}

#[test]
fn min_p_drops_tokens_below_fraction_of_the_top() {
    // p_max = 0.5, min_p = 0.15 → bound 0.075: keeps 0.5, 0.2, 0.1 and drops 0.07 and below.
    let probs = [0.07, 0.5, 0.1, 0.2, 0.06, 0.07];
    let cfg = SamplerConfig {
        min_p: 0.15,
        ..unfiltered(1.0)
    };
    let got = frequencies(cfg, &logits_of(&probs), 30_000);
    assert_close(&got, &[0.0, 0.625, 0.125, 0.25, 0.0, 0.0], 0.015);
}

#[test]
fn filters_run_before_temperature() {
    // min-p is judged on the untempered distribution: at T = 10 the survivors become nearly
    // uniform, but the dropped token stays dropped.
    let probs = [0.6, 0.3, 0.01, 0.09];
    let cfg = SamplerConfig {
        min_p: 0.1,
        ..unfiltered(10.0)
    };
    let got = frequencies(cfg, &logits_of(&probs), 20_000);
    assert_eq!(got[2], 0.0);
    assert!(got[3] > 0.25, "{got:?}");
}

#[test]
fn repeat_penalty_divides_positive_and_multiplies_negative_logits() {
    let mut s = Sampler::new(SamplerConfig {
        repeat_penalty: 2.0,
        ..SamplerConfig::greedy()
    });
    for t in [0, 1, 0] {
        s.accept(t);
    }
    let mut logits = [4.0, -2.0, 1.0, 0.0];
    // Penalised: [2, -4, 1, 0] → argmax is still 0.
    assert_eq!(s.sample(&mut logits), 0);
    assert_eq!(logits, [2.0, -4.0, 1.0, 0.0]);
}

#[test]
fn presence_and_frequency_penalties_subtract_per_count() {
    let mut s = Sampler::new(SamplerConfig {
        presence_penalty: 1.0,
        frequency_penalty: 0.5,
        ..SamplerConfig::greedy()
    });
    for t in [0, 0, 0, 2] {
        s.accept(t);
    }
    let mut logits = [5.0, 3.0, 1.0];
    s.sample(&mut logits);
    assert_eq!(logits, [5.0 - 1.5 - 1.0, 3.0, 1.0 - 0.5 - 1.0]);
}

#[test]
fn penalties_only_see_the_last_n_tokens() {
    let mut s = Sampler::new(SamplerConfig {
        repeat_penalty: 2.0,
        repeat_last_n: 2,
        ..SamplerConfig::greedy()
    });
    for t in [0, 1, 2] {
        s.accept(t);
    }
    let mut logits = [2.0, 2.0, 2.0];
    // Token 0 fell out of the window; 1 and 2 are penalised, so greedy picks 0.
    assert_eq!(s.sample(&mut logits), 0);
    assert_eq!(logits, [2.0, 1.0, 1.0]);
    // repeat_last_n = 0 turns the penalties off altogether.
    let mut off = Sampler::new(SamplerConfig {
        repeat_penalty: 2.0,
        repeat_last_n: 0,
        ..SamplerConfig::greedy()
    });
    off.accept(0);
    let mut logits = [2.0, 1.0];
    off.sample(&mut logits);
    assert_eq!(logits, [2.0, 1.0]);
}

#[test]
fn log_softmax_top_n_gives_sorted_log_probabilities() {
    let probs = [0.1f32, 0.4, 0.2, 0.3];
    // Shift the logits: log-probabilities do not depend on the offset.
    let logits: Vec<f32> = probs.iter().map(|p| p.ln() + 12.0).collect();
    let top = log_softmax_top_n(&logits, 3);
    let ids: Vec<u32> = top.iter().map(|x| x.0).collect();
    assert_eq!(ids, [1, 3, 2]);
    for (id, lp) in top {
        assert!((lp - probs[id as usize].ln()).abs() < 1e-5, "{id}: {lp}");
    }
    assert_eq!(log_softmax_top_n(&logits, 10).len(), 4);
}

fn pushes(stops: &[&str], chunks: &[&str]) -> (Vec<StopResult>, String) {
    let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
    let results: Vec<StopResult> = chunks.iter().map(|c| m.push(c)).collect();
    let rest = m.finish();
    (results, rest)
}

fn emitted(results: &[StopResult]) -> String {
    results.iter().map(|r| r.emit.as_str()).collect()
}

#[test]
fn stop_string_spanning_chunks_is_never_emitted() {
    let (r, rest) = pushes(&["</end>"], &["Hello </", "en", "d> world"]);
    assert_eq!(r[0].emit, "Hello ");
    assert_eq!(r[1].emit, "");
    assert!(r[2].stopped && !r[1].stopped);
    assert_eq!(emitted(&r), "Hello ");
    assert_eq!(rest, "");
}

#[test]
fn held_prefix_that_fails_to_match_is_released() {
    let (r, rest) = pushes(&["STOP"], &["a ST", "OR", "E b S"]);
    assert_eq!(r[0].emit, "a ");
    assert_eq!(r[1].emit, "STOR");
    assert_eq!(r[2].emit, "E b ");
    assert!(r.iter().all(|x| !x.stopped));
    assert_eq!(rest, "S");
}

#[test]
fn earliest_of_several_stop_strings_wins() {
    let (r, _) = pushes(&["world", "lo w"], &["hel", "lo world"]);
    assert_eq!(emitted(&r), "hel");
    assert!(r[1].stopped);
    // After stopping, nothing more comes out.
    let mut m = StopMatcher::new(vec!["x".into()]);
    assert!(m.push("axb").stopped);
    assert_eq!(
        m.push("more"),
        StopResult {
            emit: String::new(),
            stopped: true
        }
    );
    assert!(m.is_stopped());
}

#[test]
fn overlapping_partial_matches_and_multibyte_text() {
    // "aab": after "aa" the held text must stay "aa" (both 'a's could start the match).
    let (r, _) = pushes(&["aab"], &["xa", "a", "ab"]);
    assert_eq!(emitted(&r), "xa");
    assert!(r[2].stopped);
    let (r, rest) = pushes(&["<|im_end|>"], &["你好<|im", "_e", "nd|>"]);
    assert_eq!(emitted(&r), "你好");
    assert_eq!(rest, "");
    let (r, rest) = pushes(&["é!"], &["caf", "é", "s"]);
    assert_eq!(emitted(&r) + &rest, "cafés");
    let (r, _) = pushes(&[""], &["text"]);
    assert_eq!(emitted(&r), "text");
}
