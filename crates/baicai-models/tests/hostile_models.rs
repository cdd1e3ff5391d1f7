//! Hostile and inconsistent model files give one-line errors, never a panic or an abort: a bounded,
//! seeded run of the `model_load` fuzz target's mutations over the fixture models, and a
//! regression test for each case found by hand (issue 13) or by the fuzzer.
//!
//! An abort (an allocation the OS refuses) cannot be caught: the run writes each case to
//! `$TMPDIR/baicai-hostile-models-<pid>/current-case` before running it, so the case that killed
//! the process can be read there.

#[path = "support/hostile.rs"]
mod hostile;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use baicai_gguf::{Gguf, Value};
use baicai_models::moe::{route, top_k, GroupScore, RouterConfig, Scoring};
use baicai_models::{KvCache, Logits, ModelError, SeqInput};
use hostile::{ByteChoices, Corpus, Rng};
use serde_json::json;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A fresh working folder for this test.
fn work(name: &str) -> PathBuf {
    let dir = std::env::temp_dir()
        .join(format!("baicai-hostile-models-{}", std::process::id()))
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Mutations in the bounded run (a few seconds in release on two cores).
const CASES: u64 = 5000;
const SEED: u64 = 0xba1c_a113;

#[test]
fn thousands_of_mutated_fixtures_load_or_fail_with_an_error() {
    let dir = work("bounded");
    let corpus = Corpus::load(&root(), &dir);
    let current = dir.join("current-case");
    let t0 = Instant::now();
    let (mut loaded, mut refused) = (0, 0);
    let mut panics = Vec::new();
    for i in 0..CASES {
        let case = corpus.mutate(&mut Rng::new(SEED ^ i.wrapping_mul(0x9e37_79b9)));
        std::fs::write(&current, format!("case {i} (seed {SEED:#x}): {case}\n")).unwrap();
        match catch_unwind(AssertUnwindSafe(|| case.run())) {
            Ok(Ok(())) => loaded += 1,
            Ok(Err(e)) => {
                let msg = e.to_string();
                assert!(
                    !msg.contains('\n'),
                    "case {i}: {case}: a multi-line error: {msg}"
                );
                refused += 1;
            }
            Err(_) => panics.push(format!("case {i}: {case}")),
        }
    }
    eprintln!(
        "{CASES} mutated fixtures in {:.1?}: {loaded} loaded and ran, {refused} refused",
        t0.elapsed()
    );
    assert!(panics.is_empty(), "panics:\n{}", panics.join("\n"));
    let _ = std::fs::remove_dir_all(&dir);
    // Some mutations keep the model valid (a larger context length, a removed optional key):
    // the run is not all errors.
    assert!(loaded > CASES / 50, "only {loaded} of {CASES} cases loaded");
}

/// The same seed gives the same mutations, so a failing case of the bounded run is reproducible.
#[test]
fn mutations_are_reproducible_from_their_seed() {
    let dir = work("repro");
    let corpus = Corpus::load(&root(), &dir);
    for i in 0..20 {
        let a = corpus.mutate(&mut Rng::new(i)).to_string();
        let b = corpus.mutate(&mut Rng::new(i)).to_string();
        assert_eq!(a, b);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Loads a GGUF fixture with metadata changes; the error it gives.
fn gguf_error(fixture: &str, changes: &[(&str, Option<Value>)]) -> String {
    let bytes = hostile::gguf_with(&root().join(fixture), changes);
    let g = Gguf::from_bytes(bytes).unwrap();
    match baicai_models::load(Arc::new(g)) {
        Ok(_) => panic!("{fixture} with {changes:?} loaded"),
        Err(e) => e.to_string(),
    }
}

/// Loads a checkpoint folder fixture with `config.json` changes; the error it gives.
fn hf_error(fixture: &str, changes: &[(&str, Option<serde_json::Value>)]) -> String {
    // Tests run in parallel: each folder is its own.
    static FOLDERS: AtomicUsize = AtomicUsize::new(0);
    let name = format!("hf-{}", FOLDERS.fetch_add(1, Ordering::Relaxed));
    let dir = hostile::hf_with(&root().join(fixture), &work(&name), changes);
    let result = baicai_models::load_hf(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Ok(_) => panic!("{fixture} with {changes:?} loaded"),
        Err(e) => e.to_string(),
    }
}

const V2_LITE: &str = "fixtures/moe/deepseek-v2-lite/model-f32.gguf";
const V3: &str = "fixtures/moe/deepseek-v3/model-f32.gguf";
const LLAMA: &str = "fixtures/dense/llama/model-f32.gguf";

#[test]
fn gguf_block_count_beyond_the_tensors_is_an_error_not_an_abort() {
    let e = gguf_error(
        V2_LITE,
        &[("deepseek2.block_count", Some(Value::U32(u32::MAX)))],
    );
    assert_eq!(
        e,
        "deepseek2.block_count = 4294967295: the file has tensors for 3 layers"
    );
}

#[test]
fn checkpoint_layer_count_beyond_the_tensors_is_an_error_not_an_abort() {
    let e = hf_error(
        "fixtures/moe/deepseek-v2",
        &[("num_hidden_layers", Some(json!(4_000_000_000u64)))],
    );
    assert_eq!(
        e,
        "num_hidden_layers = 4000000000: the file has tensors for 3 layers"
    );
}

#[test]
fn more_expert_groups_than_experts_is_an_error_not_a_router_panic() {
    let e = hf_error("fixtures/moe/deepseek-v3", &[("n_group", Some(json!(16)))]);
    assert_eq!(e, "n_group = 16: more groups than n_routed_experts = 8");
    let e = gguf_error(V3, &[("deepseek2.expert_group_count", Some(Value::U32(3)))]);
    assert_eq!(
        e,
        "deepseek2.expert_group_count = 3: does not divide deepseek2.expert_count = 8 into equal groups"
    );
}

#[test]
fn routing_bounds_are_checked() {
    let e = hf_error(
        "fixtures/moe/deepseek-v3",
        &[("topk_group", Some(json!(5)))],
    );
    assert_eq!(e, "topk_group = 5: must lie in 1..=4 (n_group)");
    let e = hf_error(
        "fixtures/moe/deepseek-v3",
        &[("num_experts_per_tok", Some(json!(5)))],
    );
    assert_eq!(
        e,
        "num_experts_per_tok = 5: more than the 4 experts of the 2 groups kept (topk_group)"
    );
    let e = gguf_error(
        V2_LITE,
        &[("deepseek2.expert_used_count", Some(Value::U32(0)))],
    );
    assert_eq!(
        e,
        "deepseek2.expert_used_count = 0: must lie in 1..=8 (deepseek2.expert_count)"
    );
    let e = hf_error(
        "fixtures/moe/mixtral",
        &[("num_experts_per_tok", Some(json!(9)))],
    );
    assert_eq!(
        e,
        "num_experts_per_tok = 9: must lie in 1..=8 (num_local_experts)"
    );
}

#[test]
fn derived_sizes_are_checked_against_the_file() {
    let e = gguf_error(
        LLAMA,
        &[
            ("llama.attention.head_count", Some(Value::U32(4096))),
            ("llama.attention.head_count_kv", Some(Value::U32(4096))),
            ("llama.attention.key_length", Some(Value::U32(4096))),
        ],
    );
    let total = e
        .split("more than the ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap_or("?");
    assert_eq!(
        e,
        format!(
            "llama.attention.head_count = 4096: × llama.attention.key_length = 4096 = 16777216, \
             more than the {total} values all the file's tensors hold"
        )
    );
    // Without a file to bound them (a bare config.json), products must still not overflow.
    let mut cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("fixtures/moe/mixtral/config.json")).unwrap(),
    )
    .unwrap();
    cfg["num_attention_heads"] = json!(1u64 << 40);
    cfg["num_key_value_heads"] = json!(1u64 << 40);
    cfg["head_dim"] = json!(1u64 << 40);
    let e = baicai_models::hf::parse_config(&cfg.to_string()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "num_attention_heads = 1099511627776: × head_dim = 1099511627776 overflows"
    );
}

#[test]
fn counts_and_widths_follow_their_rules() {
    for (changes, want) in [
        (
            vec![("llama.attention.head_count_kv", Some(Value::U32(3)))],
            "llama.attention.head_count_kv = 3: does not divide llama.attention.head_count = 4 \
             (query heads share key/value heads in equal groups)",
        ),
        (
            vec![("llama.attention.key_length", Some(Value::U32(15)))],
            "llama.attention.key_length = 15: must be even and at least 2 (RoPE rotates pairs of \
             values)",
        ),
        (
            vec![("llama.embedding_length", Some(Value::U32(65)))],
            "llama.embedding_length = 65: token_embd.weight holds 64 values per token",
        ),
        (
            vec![("llama.vocab_size", Some(Value::U32(321)))],
            "llama.vocab_size = 321: token_embd.weight holds 320 tokens",
        ),
        (
            vec![("llama.block_count", Some(Value::U32(0)))],
            "llama.block_count = 0: must be at least 1",
        ),
        (
            vec![("llama.rope.freq_base", Some(Value::F32(f32::NAN)))],
            "llama.rope.freq_base = NaN: must be a finite number above 0",
        ),
        (
            vec![(
                "llama.attention.layer_norm_rms_epsilon",
                Some(Value::F32(-1.0)),
            )],
            "llama.attention.layer_norm_rms_epsilon = -1: must be a finite number, 0 or more",
        ),
        (
            vec![("llama.feed_forward_length", Some(Value::U64(u64::MAX)))],
            "llama.feed_forward_length = 18446744073709551615: more than the",
        ),
    ] {
        let e = gguf_error(LLAMA, &changes);
        assert!(e.starts_with(want), "{changes:?}:\n got  {e}\n want {want}");
    }
    let e = gguf_error(
        V3,
        &[("deepseek2.rope.dimension_count", Some(Value::U32(24)))],
    );
    assert_eq!(
        e,
        "deepseek2.attention.key_length_mla = 24: must exceed deepseek2.rope.dimension_count = \
         24 (the key's RoPE part)"
    );
    let e = gguf_error(
        V3,
        &[("deepseek2.rope.scaling.factor", Some(Value::F32(f32::NAN)))],
    );
    assert_eq!(
        e,
        "deepseek2.rope.scaling.factor = NaN: must be a finite number above 0"
    );
    let e = hf_error(
        "fixtures/moe/deepseek-v2",
        &[("q_lora_rank", Some(json!(0)))],
    );
    assert_eq!(e, "q_lora_rank = 0: must be at least 1");
    let e = hf_error(
        "fixtures/moe/qwen3-moe",
        &[("first_k_dense_replace", Some(json!(3)))],
    );
    assert!(e.starts_with("first_k_dense_replace = 3: "), "{e}");
}

/// DeepSeek-V3.2's indexer values, hostile or inconsistent, in GGUF metadata and config.json.
#[test]
fn sparse_attention_values_follow_their_rules() {
    const V32: &str = "fixtures/moe/deepseek-v32/model-f32.gguf";
    let k = |s: &str| format!("deepseek32.attention.indexer.{s}");
    for (key, value, want) in [
        ("top_k", 0, "deepseek32.attention.indexer.top_k = 0: must lie in 1..=16384 (deepseek32.context_length): more tokens than the context holds"),
        ("top_k", 1 << 20, "deepseek32.attention.indexer.top_k = 1048576: must lie in 1..=16384 (deepseek32.context_length): more tokens than the context holds"),
        ("head_count", 0, "deepseek32.attention.indexer.head_count = 0: must be at least 1"),
        ("key_length", 4, "deepseek32.attention.indexer.key_length = 4: is less than deepseek32.rope.dimension_count = 8 (the indexer rotates that many of its values)"),
        ("key_length", u32::MAX, "deepseek32.attention.indexer.key_length = 4294967295: more than the"),
    ] {
        let e = gguf_error(V32, &[(k(key).as_str(), Some(Value::U32(value)))]);
        assert!(e.starts_with(want), "{key} = {value}:\n got  {e}\n want {want}");
    }
    let e = gguf_error(V32, &[(k("head_count").as_str(), None)]);
    assert!(e.contains("deepseek32.attention.indexer.head_count"), "{e}");
    let e = gguf_error(
        V32,
        &[("deepseek32.nextn_predict_layers", Some(Value::U32(9)))],
    );
    assert_eq!(
        e,
        "deepseek32.nextn_predict_layers = 9: exceeds deepseek32.block_count = 3"
    );
    let dir = "fixtures/moe/deepseek-v32";
    let e = hf_error(dir, &[("index_topk", Some(json!(0)))]);
    assert!(
        e.starts_with("index_topk = 0: must lie in 1..=16384"),
        "{e}"
    );
    let e = hf_error(dir, &[("index_n_heads", Some(json!(-3)))]);
    assert!(e.contains("index_n_heads"), "{e}");
    let e = hf_error(dir, &[("index_head_dim", None)]);
    assert!(e.contains("'index_head_dim' missing"), "{e}");
    let e = hf_error(dir, &[("q_lora_rank", None)]);
    assert!(
        e.contains("index_n_heads = 4: is set but q_lora_rank is not"),
        "{e}"
    );
    let e = hf_error(
        dir,
        &[("mlp_layer_types", Some(json!(["dense", "sparse", "dense"])))],
    );
    assert!(e.contains("mlp_layer_types[2] is 'dense'"), "{e}");
}

/// DeepSeek-V4's values, hostile or inconsistent: compress rates of 0, no hyper-connection
/// streams, output groups that do not divide the heads, an indexer top-k of 0, a RoPE slice wider
/// than a head, hash tables naming experts that do not exist.
#[test]
fn deepseek_v4_values_follow_their_rules() {
    const V4: &str = "fixtures/moe/deepseek-v4/model-f32.gguf";
    let arr = |v: &[u32]| Value::Array(v.iter().map(|&x| Value::U32(x)).collect());
    for (changes, want) in [
        (
            vec![("deepseek4.attention.compress_ratios", Some(arr(&[0, 0, 8, 4])))],
            "deepseek4.attention.compress_ratios = 0: must be at least 1",
        ),
        (
            vec![("deepseek4.attention.compress_ratios", Some(arr(&[0, 4, 8])))],
            "deepseek4.attention.compress_ratios = 3: has 3 entries for 4 layers",
        ),
        (
            vec![("deepseek4.hyper_connection.count", Some(Value::U32(0)))],
            "deepseek4.hyper_connection.count = 0: must be at least 1",
        ),
        (
            vec![("deepseek4.attention.output_group_count", Some(Value::U32(3)))],
            "deepseek4.attention.output_group_count = 3: does not divide the 4 heads into equal groups",
        ),
        (
            vec![("deepseek4.attention.indexer.top_k", Some(Value::U32(0)))],
            "deepseek4.attention.indexer.top_k = 0: must be at least 1",
        ),
        (
            vec![("deepseek4.rope.dimension_count", Some(Value::U32(64)))],
            "deepseek4.rope.dimension_count = 64: must be even, at least 2 and at most the head dim 32",
        ),
        (
            vec![("deepseek4.hyper_connection.sinkhorn_iterations", Some(Value::U32(0)))],
            "deepseek4.hyper_connection.sinkhorn_iterations = 0: must be at least 1",
        ),
    ] {
        let e = gguf_error(V4, &changes);
        assert_eq!(e, want, "{changes:?}");
    }
    let e = hf_error(
        "fixtures/moe/deepseek-v4",
        &[(
            "compress_rates",
            Some(json!({"compressed_sparse_attention": 0, "heavily_compressed_attention": 8})),
        )],
    );
    assert_eq!(
        e,
        "compress_rates.compressed_sparse_attention = 0: must be at least 1"
    );
    let e = hf_error("fixtures/moe/deepseek-v4", &[("hc_mult", Some(json!(0)))]);
    assert_eq!(e, "hc_mult = 0: must be at least 1");
    let e = hf_error(
        "fixtures/moe/deepseek-v4",
        &[(
            "layer_types",
            Some(json!([
                "sliding_attention",
                "bogus",
                "sliding_attention",
                "sliding_attention"
            ])),
        )],
    );
    assert!(e.contains("layer_types[1] is \"bogus\""), "{e}");
    // A hash table that routes a token to expert 8 of 8.
    let seed = hostile::Seed::gguf("", &root().join(V4));
    let hostile::Seed::Gguf {
        metadata,
        mut tensors,
        ..
    } = seed
    else {
        unreachable!()
    };
    let (_, data) = tensors
        .iter_mut()
        .find(|(s, _)| s.name == "blk.0.ffn_gate_tid2eid.weight")
        .unwrap();
    data[8..12].copy_from_slice(&8i32.to_le_bytes());
    let specs: Vec<(baicai_gguf::TensorSpec, &[u8])> = tensors
        .iter()
        .map(|(s, d)| (s.clone(), d.as_slice()))
        .collect();
    let bytes = baicai_gguf::write_to_vec(&metadata, &specs).unwrap();
    let e = baicai_models::load(Arc::new(Gguf::from_bytes(bytes).unwrap()))
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        e,
        "invalid model configuration: tensor 'blk.0.ffn_gate_tid2eid.weight': token 1 routes to expert 8, outside 0..8"
    );
}

#[test]
fn checkpoint_values_of_the_wrong_type_name_their_key() {
    let e = hf_error(
        "fixtures/moe/qwen2-moe",
        &[("num_hidden_layers", Some(json!(-1)))],
    );
    assert!(
        e.contains("num_hidden_layers: invalid value: integer `-1`, expected usize"),
        "{e}"
    );
    let e = hf_error(
        "fixtures/moe/qwen2-moe",
        &[("rms_norm_eps", Some(json!("tiny")))],
    );
    assert!(
        e.contains("rms_norm_eps: invalid type: string \"tiny\""),
        "{e}"
    );
    let e = hf_error("fixtures/moe/qwen2-moe", &[("vocab_size", None)]);
    assert!(e.contains("missing field `vocab_size`"), "{e}");
    let e = hf_error(
        "fixtures/moe/deepseek-v3",
        &[("rope_scaling", Some(json!({"type": "yarn", "factor": "x"})))],
    );
    assert!(
        e.contains("rope_scaling.factor: invalid type: string \"x\""),
        "{e}"
    );
}

/// NaN router scores (a hostile file's weights) neither panic the sort nor change its length:
/// `total_cmp` ranks positive NaN first, ties to the lower index.
#[test]
fn router_scores_with_nan_sort_in_a_total_order() {
    let v = [0.5, f32::NAN, 2.0, -f32::NAN, f32::NEG_INFINITY, 2.0];
    assert_eq!(top_k(&v, 6), vec![1, 2, 5, 0, 4, 3]);
    let cfg = RouterConfig {
        n_expert: 6,
        n_used: 2,
        scoring: Scoring::Sigmoid,
        norm_topk_prob: true,
        scaling: 1.0,
        n_group: 3,
        topk_group: 2,
        group_score: GroupScore::Top2Sum,
    };
    let logits = [f32::NAN, 1.0, f32::NAN, 0.0, -1.0, f32::INFINITY];
    assert_eq!(route(&logits, &cfg, None).len(), 2);
    // A configuration that was never validated (more groups than experts) routes without groups
    // rather than panicking on a chunk size of 0.
    let bad = RouterConfig { n_group: 8, ..cfg };
    assert_eq!(route(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0], &bad, None).len(), 2);
}

/// The model's entry points refuse empty and oversized inputs with errors.
#[test]
fn forward_refuses_empty_and_oversized_inputs() {
    let g = Arc::new(Gguf::open(&root().join(V2_LITE)).unwrap());
    let m = baicai_models::load(g).unwrap();
    let mut cache = m.new_cache(4);
    assert!(matches!(
        m.forward(&[], &mut cache, Logits::Last),
        Err(ModelError::EmptyBatch)
    ));
    assert!(matches!(
        m.forward_batch(&mut []),
        Err(ModelError::EmptyBatch)
    ));
    let mut other = KvCache::new(1, 4, 1, 1);
    let mut seqs = [
        SeqInput {
            tokens: &[1],
            cache: &mut cache,
            logits: Logits::Last,
        },
        SeqInput {
            tokens: &[],
            cache: &mut other,
            logits: Logits::Last,
        },
    ];
    assert!(matches!(
        m.forward_batch(&mut seqs),
        Err(ModelError::EmptyBatch)
    ));
    assert!(matches!(
        m.forward(&[1, 2, 3, 4, 5], &mut cache, Logits::Last),
        Err(ModelError::ContextFull { .. })
    ));
    assert!(matches!(
        m.forward(&[320], &mut cache, Logits::Last),
        Err(ModelError::BadToken { id: 320, .. })
    ));
    assert_eq!(cache.len(), 0, "a refused pass appends nothing");
    m.forward(&[1, 2, 3, 4], &mut cache, Logits::Last).unwrap();
}

/// Gemma 3's local layers with a sliding window of 0 would attend to no position (a softmax over
/// nothing); the real model (`scripts/fetch-models.sh`) is the only Gemma 3 file at hand.
#[test]
fn gemma3_sliding_window_of_zero_is_an_error() {
    let path = root().join("models/gemma-3-270m-q4_k_m.gguf");
    if !path.exists() {
        eprintln!(
            "SKIP: {} missing; run scripts/fetch-models.sh",
            path.display()
        );
        return;
    }
    let bytes = hostile::gguf_with(
        &path,
        &[("gemma3.attention.sliding_window", Some(Value::U32(0)))],
    );
    let e = baicai_models::load(Arc::new(Gguf::from_bytes(bytes).unwrap())).err();
    assert_eq!(
        e.map(|e| e.to_string()).as_deref(),
        Some("gemma3.attention.sliding_window = 0: must be at least 1")
    );
}

/// Inputs of the `model_load` fuzz target replayed through the same mutation engine: those that
/// once crashed it (`tests/regressions/model_load/`; a new crash is copied there from
/// `fuzz/artifacts/model_load/` to see its case, then kept beside a named test of the fix) and
/// the committed corpus the fuzzer grew (`fuzz/corpus/model_load/`, inputs chosen for coverage).
#[test]
fn fuzzer_inputs_replay_as_errors_or_models() {
    let dirs = [
        root().join("crates/baicai-models/tests/regressions/model_load"),
        root().join("fuzz/corpus/model_load"),
    ];
    let mut inputs: Vec<PathBuf> = dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .map(|e| e.unwrap().path())
        .collect();
    inputs.sort();
    let work = work("replay");
    let corpus = Corpus::load(&root(), &work);
    for path in &inputs {
        let bytes = std::fs::read(path).unwrap();
        let case = corpus.mutate(&mut ByteChoices(&bytes));
        let result = catch_unwind(AssertUnwindSafe(|| case.run()));
        assert!(result.is_ok(), "{}: {case}: panicked", path.display());
    }
    eprintln!("{} fuzzer inputs replayed", inputs.len());
    let _ = std::fs::remove_dir_all(&work);
}
