//! Tiny seeded MoE models against Hugging Face transformers (fixtures/moe, made by
//! tools/moe_oracle.py): logits at every prompt position within 1e-3 (max abs, F32 weights) and
//! identical greedy continuations, for the safetensors folder and the GGUF conversion of each.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use baicai_models::{CausalLm, Logits};
use serde_json::Value;

mod common;
use common::argmax;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/moe")
}

/// A fixture folder's `reference.json`.
fn reference(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap()
}

/// Max |Δlogit| against the reference of prompt `pi` run with an f16 cache of `width` values per
/// token and layer (what quantized models get).
fn f16_cache_worst(m: &dyn CausalLm, reference: &Value, pi: usize, width: usize) -> f32 {
    let c = m.config();
    let p = &reference["prompts"][pi];
    let ids: Vec<u32> = common::u32s(&p["ids"]);
    let mut cache = baicai_models::KvCache::new_f16(c.n_layer, 64, width, 0);
    assert!(cache.is_f16());
    let logits = m.forward(&ids, &mut cache, Logits::All).unwrap();
    common::worst_logit(&logits, &p["logits"], c.n_vocab).0
}

fn check(model: &dyn CausalLm, reference: &Value, label: &str) {
    check_within(model, reference, label, Some(1e-3));
}

/// Every prompt's logits within `bound` of the reference (`None`: reported only) and its greedy
/// continuation equal.
fn check_within(model: &dyn CausalLm, reference: &Value, label: &str, bound: Option<f32>) {
    let vocab = reference["vocab_size"].as_u64().unwrap() as usize;
    for (pi, p) in reference["prompts"].as_array().unwrap().iter().enumerate() {
        let ids: Vec<u32> = common::u32s(&p["ids"]);
        let mut cache = model.new_cache(64);
        let logits = model.forward(&ids, &mut cache, Logits::All).unwrap();
        let worst = common::worst_logit(&logits, &p["logits"], vocab);
        eprintln!(
            "{label} prompt {pi}: max |Δlogit| {:.2e} at position {} token {}",
            worst.0, worst.1, worst.2
        );
        assert!(
            bound.is_none_or(|b| worst.0 < b),
            "{label} prompt {pi}: logit of token {} at position {} differs by {:.2e} from transformers",
            worst.2,
            worst.1,
            worst.0
        );
        let expected: Vec<u32> = common::u32s(&p["greedy"]);
        let mut next = argmax(&logits[(ids.len() - 1) * vocab..]);
        let mut got = Vec::new();
        for _ in 0..expected.len() {
            got.push(next);
            let l = model.forward(&[next], &mut cache, Logits::Last).unwrap();
            next = argmax(&l);
        }
        assert_eq!(
            got, expected,
            "{label} prompt {pi}: greedy continuation differs from transformers"
        );
    }
}

fn run(name: &str) {
    let dir = fixtures().join(name);
    if !dir.exists() {
        panic!("fixture {} missing", dir.display());
    }
    let reference = reference(&dir);
    let (hf, _) = baicai_models::load_hf(&dir).unwrap();
    check(hf.as_ref(), &reference, &format!("{name} (safetensors)"));
    for gguf in ["model-f32.gguf", "model-f32-kv_b.gguf"] {
        let path: &Path = &dir.join(gguf);
        if !path.exists() {
            continue;
        }
        let g = Arc::new(baicai_gguf::Gguf::open(path).unwrap());
        let m = baicai_models::load(g).unwrap();
        check(m.as_ref(), &reference, &format!("{name} ({gguf})"));
    }
}

#[test]
fn deepseek_v3_matches_transformers() {
    run("deepseek-v3");
}

/// DeepSeek-V3's published sizes (config.json of deepseek-ai/DeepSeek-V3): the absorbed MLA cache
/// holds kv_lora_rank 512 + qk_rope_head_dim 64 values per token and layer, nothing else.
#[test]
fn deepseek_v3_kv_cache_holds_latent_and_rope_key_only() {
    let cfg = baicai_models::hf::parse_config(
        r#"{"model_type": "deepseek_v3", "hidden_size": 7168, "num_hidden_layers": 61,
            "num_attention_heads": 128, "num_key_value_heads": 128, "vocab_size": 129280,
            "intermediate_size": 18432, "moe_intermediate_size": 2048, "q_lora_rank": 1536,
            "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
            "v_head_dim": 128, "n_routed_experts": 256, "num_experts_per_tok": 8,
            "n_shared_experts": 1, "n_group": 8, "topk_group": 4, "topk_method": "noaux_tc",
            "scoring_func": "sigmoid", "norm_topk_prob": true, "routed_scaling_factor": 2.5,
            "first_k_dense_replace": 3,
            "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                             "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}}"#,
    )
    .unwrap();
    let mla = cfg.mla.as_ref().unwrap();
    assert_eq!(mla.cache_width(), 512 + 64);
    let cache = baicai_models::KvCache::new(cfg.n_layer, 1, mla.cache_width(), 0);
    let per_value = cache.bytes_per_token() / (61 * 576);
    assert_eq!(cache.bytes_per_token(), 61 * 576 * per_value);
    eprintln!(
        "DeepSeek-V3 KV cache: {} bytes per token ({per_value} bytes per value)",
        cache.bytes_per_token()
    );
}

/// The tiny V3 model's cache really is that narrow (the model builds it).
#[test]
fn deepseek_v3_model_cache_is_latent_sized() {
    let dir = fixtures().join("deepseek-v3");
    let (m, _) = baicai_models::load_hf(&dir).unwrap();
    let c = m.config();
    let mla = c.mla.as_ref().unwrap();
    let bytes = m.new_cache(1).bytes_per_token();
    assert_eq!(
        bytes % (c.n_layer * (mla.kv_lora_rank + mla.qk_rope_head_dim)),
        0
    );
    assert!(bytes <= c.n_layer * (mla.kv_lora_rank + mla.qk_rope_head_dim) * 4);
}

/// DeepSeek-V3.2: MLA reads only the `index_topk` (4) cached tokens the lightning indexer
/// selects; prompts of 6 to 40 tokens, so most queries select (without the selection the
/// logits would differ from the reference by up to 4.4).
#[test]
fn deepseek_v32_matches_transformers() {
    run("deepseek-v32");
}

/// The indexer picks, at every layer and query position, the same cached tokens as transformers'
/// `DeepseekV32Indexer` (read off its top-k by the oracle tool), from the folder and the GGUF.
#[test]
fn deepseek_v32_indexer_selects_what_transformers_selects() {
    let dir = fixtures().join("deepseek-v32");
    let reference = reference(&dir);
    let p = reference["indexer_prompt"].as_u64().unwrap() as usize;
    let ids = common::u32s(&reference["prompts"][p]["ids"]);
    let (hf, _) = baicai_models::load_hf(&dir).unwrap();
    let g = Arc::new(baicai_gguf::Gguf::open(&dir.join("model-f32.gguf")).unwrap());
    for (label, mut m) in [
        ("safetensors", hf),
        ("gguf", baicai_models::load(g).unwrap()),
    ] {
        let top_k = m.config().mla.as_ref().unwrap().indexer.unwrap().top_k;
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = seen.clone();
        m.set_trace(Some(Arc::new(move |name: &str, il: usize, x: &[f32]| {
            if name == "top_k" {
                sink.lock().unwrap().push((il, x.to_vec()));
            }
        })));
        let mut cache = m.new_cache(64);
        m.forward(&ids, &mut cache, Logits::All).unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen.len(),
            m.config().n_layer,
            "{label}: one top_k trace per layer"
        );
        let mut compared = 0;
        for (il, rows) in seen.iter() {
            let want = &reference["indexer_topk"][il.to_string()];
            for (t, row) in rows.chunks_exact(top_k).enumerate() {
                if t < top_k {
                    // Fewer cached tokens than index_topk: all of them are read.
                    assert!(
                        row.iter().all(|&j| j < 0.0),
                        "{label}: layer {il} query {t}"
                    );
                    continue;
                }
                let got: Vec<u64> = row.iter().map(|&j| j as u64).collect();
                let want: Vec<u64> = want[t]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap())
                    .collect();
                assert_eq!(
                    got, want,
                    "{label}: layer {il} query {t} selects other tokens"
                );
                compared += 1;
            }
        }
        assert!(
            compared > ids.len(),
            "{label}: only {compared} selections compared"
        );
        eprintln!("{label}: {compared} sparse selections equal transformers'");
    }
}

/// Kimi K2: the DeepSeek-V3 layout under `model_type: kimi_k2` (one expert group, 8 of many
/// small experts, routed scale 2.827, YaRN ×32 with β 1/1), from the folder and llama.cpp's
/// conversion, against transformers' DeepseekV3ForCausalLM.
#[test]
fn kimi_k2_matches_transformers() {
    run("kimi-k2");
}

/// DeepSeek-V4: hyper-connections, sliding-window attention with sinks, CSA (indexer top-2 of
/// overlapping compressed windows) and HCA layers, hash and sqrt-softplus top-k MoE with clamped
/// SwiGLU; prompts of 5 to 40 tokens past the window (4) and several compress windows (4, 8).
#[test]
fn deepseek_v4_matches_transformers() {
    let dir = fixtures().join("deepseek-v4");
    let reference = reference(&dir);
    let (hf, _) = baicai_models::load_hf(&dir).unwrap();
    check(hf.as_ref(), &reference, "deepseek-v4 (safetensors)");
    // The f16 cache quantized models get: only the rounding of what it holds differs.
    let width = hf.new_cache(1).bytes_per_token() / (4 * hf.config().n_layer);
    let worst = f16_cache_worst(hf.as_ref(), &reference, 3, width);
    eprintln!("deepseek-v4 f16 cache: max |Δlogit| {worst:.2e}");
    assert!(worst < 5e-2, "f16 cache moved a logit by {worst}");
}

/// llama.cpp's converter writes V4's routed experts as MXFP4 (the release's format; the fixture's
/// expert weights are exact MXFP4 values, so the file holds the checkpoint exactly). With the
/// experts dequantized to F32 the GGUF loader matches transformers as the folder does; the
/// MXFP4 file itself, whose kernels quantize activations to Q8_0 as llama.cpp's do, keeps
/// every greedy continuation (a Q8_0 rounding can flip a near-tied expert or indexer choice,
/// which moves some logits by more).
#[test]
fn deepseek_v4_gguf_matches_transformers() {
    use baicai_gguf::{GgmlType, TensorSpec};
    let dir = fixtures().join("deepseek-v4");
    let g = baicai_gguf::Gguf::open(&dir.join("model-f32.gguf")).unwrap();
    let metadata: Vec<(String, baicai_gguf::Value)> = g
        .metadata_keys_in_file_order()
        .iter()
        .map(|k| (k.clone(), g.metadata()[k].clone()))
        .collect();
    let mut mxfp4 = 0;
    let tensors: Vec<(TensorSpec, Vec<u8>)> = g
        .tensors()
        .iter()
        .map(|t| {
            let data = g.tensor_data(t);
            if t.ggml_type == GgmlType::MXFP4 {
                mxfp4 += 1;
                let n: u64 = t.shape.iter().product();
                let mut f = vec![0f32; n as usize];
                baicai_kernels::dequantize_row(baicai_kernels::DType::MXFP4, data, &mut f);
                let bytes = f.iter().flat_map(|v| v.to_le_bytes()).collect();
                (
                    TensorSpec::new(t.name.clone(), &t.shape, GgmlType::F32),
                    bytes,
                )
            } else {
                (
                    TensorSpec::new(t.name.clone(), &t.shape, t.ggml_type),
                    data.to_vec(),
                )
            }
        })
        .collect();
    assert_eq!(mxfp4, 12, "the converter's MXFP4 experts");
    let specs: Vec<(TensorSpec, &[u8])> = tensors
        .iter()
        .map(|(s, d)| (s.clone(), d.as_slice()))
        .collect();
    let bytes = baicai_gguf::write_to_vec(&metadata, &specs).unwrap();
    let reference = reference(&dir);
    let f32_model =
        baicai_models::load(Arc::new(baicai_gguf::Gguf::from_bytes(bytes).unwrap())).unwrap();
    check(
        f32_model.as_ref(),
        &reference,
        "deepseek-v4 (GGUF, experts as F32)",
    );
    let mx = baicai_models::load(Arc::new(g)).unwrap();
    check_within(mx.as_ref(), &reference, "deepseek-v4 (MXFP4 GGUF)", None);
}

/// A GGUF that carries a multi-token-prediction layer, as llama.cpp's converter appends it
/// (`nextn_predict_layers` 1, `blk.N.nextn.*` and a full layer `blk.N.*` after the trunk's N):
/// it loads, keeps it, and runs the trunk exactly as without it. `extra` adds metadata the
/// architecture lists per layer (V4's compress ratios).
fn keeps_mtp_layer(name: &str, arch: &str, extra: &[(&str, baicai_gguf::Value)]) {
    use baicai_gguf::{TensorSpec, Value as GValue};
    let dir = fixtures().join(name);
    let g = baicai_gguf::Gguf::open(&dir.join("model-f32.gguf")).unwrap();
    let n = g.get_u64(&format!("{arch}.block_count")).unwrap().unwrap();
    let mut metadata: Vec<(String, GValue)> = g
        .metadata_keys_in_file_order()
        .iter()
        .filter(|k| !extra.iter().any(|(e, _)| e == k))
        .map(|k| (k.clone(), g.metadata()[k].clone()))
        .collect();
    for (k, v) in &mut metadata {
        if *k == format!("{arch}.block_count") {
            *v = GValue::U32(n as u32 + 1);
        }
    }
    metadata.push((format!("{arch}.nextn_predict_layers"), GValue::U32(1)));
    metadata.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let mut tensors: Vec<(TensorSpec, Vec<u8>)> = g
        .tensors()
        .iter()
        .map(|t| {
            let spec = TensorSpec::new(t.name.clone(), &t.shape, t.ggml_type);
            (spec, g.tensor_data(t).to_vec())
        })
        .collect();
    // The MTP layer's decoder layer: the last trunk layer's tensors under blk.N; its own, F32.
    let (last, mtp) = (format!("blk.{}.", n - 1), format!("blk.{n}."));
    let copied: Vec<(TensorSpec, Vec<u8>)> = tensors
        .iter()
        .filter(|(s, _)| s.name.starts_with(&last))
        .map(|(s, d)| {
            let name = s.name.replacen(&last, &mtp, 1);
            (TensorSpec::new(name, &s.shape, s.ggml_type), d.clone())
        })
        .collect();
    tensors.extend(copied);
    let d = g
        .get_u64(&format!("{arch}.embedding_length"))
        .unwrap()
        .unwrap();
    let f32s = |n: u64| {
        (0..n)
            .flat_map(|i| (0.5 + i as f32 * 1e-3).to_le_bytes())
            .collect::<Vec<u8>>()
    };
    for (t, shape) in [
        ("nextn.eh_proj.weight", vec![2 * d, d]),
        ("nextn.enorm.weight", vec![d]),
        ("nextn.hnorm.weight", vec![d]),
        ("nextn.shared_head_norm.weight", vec![d]),
    ] {
        let spec = TensorSpec::new(format!("{mtp}{t}"), &shape, baicai_gguf::GgmlType::F32);
        tensors.push((spec, f32s(shape.iter().product())));
    }
    let specs: Vec<(TensorSpec, &[u8])> = tensors
        .iter()
        .map(|(s, d)| (s.clone(), d.as_slice()))
        .collect();
    let bytes = baicai_gguf::write_to_vec(&metadata, &specs).unwrap();
    let with =
        baicai_models::load(Arc::new(baicai_gguf::Gguf::from_bytes(bytes).unwrap())).unwrap();
    let without = baicai_models::load(Arc::new(g)).unwrap();
    assert_eq!(
        with.config().n_layer,
        n as usize,
        "{name}: the trunk excludes the MTP layer"
    );
    assert_eq!((with.mtp_layers(), without.mtp_layers()), (1, 0), "{name}");
    let ids: Vec<u32> = (0..11).map(|i| (i * 29 % 300 + 3) as u32).collect();
    let run = |m: &dyn CausalLm| {
        let mut c = m.new_cache(32);
        m.forward(&ids, &mut c, Logits::All).unwrap()
    };
    assert!(
        run(with.as_ref()) == run(without.as_ref()),
        "{name}: the MTP layer changed the trunk's logits"
    );
}

#[test]
fn deepseek_v32_keeps_its_mtp_layer_and_runs_the_trunk_unchanged() {
    keeps_mtp_layer("deepseek-v32", "deepseek32", &[]);
}

/// V4: the MTP layer is a full V4 block (here a CSA layer, ratio 4) after the trunk.
#[test]
fn deepseek_v4_keeps_its_mtp_layer_and_runs_the_trunk_unchanged() {
    let ratios = [0u32, 4, 8, 4, 4].map(baicai_gguf::Value::U32).to_vec();
    keeps_mtp_layer(
        "deepseek-v4",
        "deepseek4",
        &[(
            "deepseek4.attention.compress_ratios",
            baicai_gguf::Value::Array(ratios),
        )],
    );
}

#[test]
fn deepseek_v2_lite_matches_transformers() {
    run("deepseek-v2-lite");
}

#[test]
fn deepseek_v2_group_limited_matches_transformers() {
    run("deepseek-v2");
}

#[test]
fn qwen2_moe_matches_transformers() {
    run("qwen2-moe");
}

#[test]
fn qwen3_moe_matches_transformers() {
    run("qwen3-moe");
}

#[test]
fn mixtral_matches_transformers() {
    run("mixtral");
}

/// FP8 E4M3 weights with 128×128 block scales (the official DeepSeek-V3/R1 layout), made from
/// the V3 fixture by tools/moe_oracle_fp8.py; the reference is transformers with the weights
/// dequantized as fp8 × scale_inv.
#[test]
fn deepseek_v3_fp8_block_scaled_matches_transformers() {
    run("deepseek-v3-fp8");
    let (_, hf) = baicai_models::load_hf(&fixtures().join("deepseek-v3-fp8")).unwrap();
    assert!(
        hf.held_in_memory
            .iter()
            .any(|h| h.contains("FP8 E4M3 → F32")),
        "inspect must say FP8 weights were converted: {:?}",
        hf.held_in_memory
    );
}

/// DeepSeek-V3.2 as DeepSeek publishes it: FP8 E4M3 weights with 128×128 block scales, the
/// indexer's projections included (its `weights_proj` in F32), made from the V3.2 fixture by
/// tools/moe_oracle_fp8.py; the reference is transformers on the dequantized weights.
#[test]
fn deepseek_v32_fp8_block_scaled_matches_transformers() {
    run("deepseek-v32-fp8");
}

/// The f16 latent cache (what quantized DeepSeek models get) stays close to transformers: only
/// the rounding of q, the latents and the probabilities to f16 separates it from the f32 path.
#[test]
fn deepseek_v3_f16_latent_cache_stays_close() {
    let dir = fixtures().join("deepseek-v3");
    let reference = reference(&dir);
    let (m, _) = baicai_models::load_hf(&dir).unwrap();
    let width = m.config().mla.as_ref().unwrap().cache_width();
    let worst = f16_cache_worst(m.as_ref(), &reference, 2, width);
    eprintln!("f16 latent cache: max |Δlogit| {worst:.2e}");
    assert!(worst < 2e-2, "f16 latent cache moved a logit by {worst}");
}

/// Writes a copy of a fixture folder whose F32 tensors are converted with `convert` (dtype name,
/// bytes per value, encoder).
fn convert_checkpoint(src: &Path, dst: &Path, dtype: &str, enc: fn(f32) -> [u8; 2]) {
    std::fs::create_dir_all(dst).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut out_header = serde_json::Map::new();
    let mut out_data = Vec::new();
    for (name, t) in header.as_object().unwrap() {
        if name == "__metadata__" {
            continue;
        }
        let (s, e) = (
            t["data_offsets"][0].as_u64().unwrap() as usize,
            t["data_offsets"][1].as_u64().unwrap() as usize,
        );
        let start = out_data.len();
        for c in data[s..e].chunks_exact(4) {
            out_data.extend_from_slice(&enc(f32::from_le_bytes(c.try_into().unwrap())));
        }
        out_header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": t["shape"], "data_offsets": [start, out_data.len()]}),
        );
    }
    let h = serde_json::to_vec(&Value::Object(out_header)).unwrap();
    let mut file = (h.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&h);
    file.extend_from_slice(&out_data);
    std::fs::write(dst.join("model.safetensors"), file).unwrap();
}

/// A target dtype, its encoder and the logit bound its rounding allows.
type Conversion = (&'static str, fn(f32) -> [u8; 2], f32);

/// F16 and BF16 checkpoints load memory-mapped and stay close to the F32 reference (the weights
/// themselves are rounded, so the bound is that of the rounding, not of the engine).
#[test]
fn deepseek_v3_half_precision_checkpoints_stay_close() {
    let src = fixtures().join("deepseek-v3");
    let reference = reference(&src);
    let vocab = reference["vocab_size"].as_u64().unwrap() as usize;
    let cases: [Conversion; 2] = [
        ("F16", |x| half::f16::from_f32(x).to_le_bytes(), 2e-2),
        ("BF16", |x| half::bf16::from_f32(x).to_le_bytes(), 1e-1),
    ];
    for (dtype, enc, bound) in cases {
        let dst = std::env::temp_dir().join(format!("baicai-v3-{dtype}-{}", std::process::id()));
        convert_checkpoint(&src, &dst, dtype, enc);
        let (m, hf) = baicai_models::load_hf(&dst).unwrap();
        assert!(
            hf.held_in_memory
                .iter()
                .any(|h| h.contains(&format!("{dtype}, mapped"))),
            "{:?}",
            hf.held_in_memory
        );
        let p = &reference["prompts"][0];
        let ids: Vec<u32> = common::u32s(&p["ids"]);
        let mut cache = m.new_cache(32);
        let logits = m.forward(&ids, &mut cache, Logits::All).unwrap();
        let worst = common::worst_logit(&logits, &p["logits"], vocab).0;
        eprintln!("{dtype} checkpoint: max |Δlogit| {worst:.2e} vs the F32 reference");
        assert!(worst < bound, "{dtype} checkpoint moved a logit by {worst}");
        std::fs::remove_dir_all(&dst).ok();
    }
}

/// Batch invariance (DESIGN.md): a prompt run as one batch and token by token gives bit-identical
/// logits at every position, with the f32 and the f16 latent cache.
#[test]
fn deepseek_v3_batch_and_stepwise_logits_are_bit_identical() {
    batch_and_stepwise_bit_identical("deepseek-v3");
}

/// The same with DeepSeek Sparse Attention selecting (11 tokens, index_topk 4): a query's
/// selection does not depend on how the prompt was split into passes.
#[test]
fn deepseek_v32_batch_and_stepwise_logits_are_bit_identical() {
    batch_and_stepwise_bit_identical("deepseek-v32");
}

/// DeepSeek-V4: a 23-token prompt (past the window of 4, closing CSA windows of 4 and HCA
/// windows of 8) run as one batch and token by token gives bit-identical logits, with the f32
/// cache and with an f16 one: a window's entry is the same whichever step closes it.
#[test]
fn deepseek_v4_batch_and_stepwise_logits_are_bit_identical() {
    let (m, _) = baicai_models::load_hf(&fixtures().join("deepseek-v4")).unwrap();
    let c = m.config();
    let vocab = c.n_vocab;
    let width = m.new_cache(1).bytes_per_token() / (4 * c.n_layer);
    let ids: Vec<u32> = (0..23).map(|i| (i * 37 % 300 + 3) as u32).collect();
    for half in [false, true] {
        let new = || match half {
            true => baicai_models::KvCache::new_f16(c.n_layer, 32, width, 0),
            false => m.new_cache(32),
        };
        let mut batch_cache = new();
        let batch = m.forward(&ids, &mut batch_cache, Logits::All).unwrap();
        let mut step_cache = new();
        for (t, &id) in ids.iter().enumerate() {
            let step = m.forward(&[id], &mut step_cache, Logits::Last).unwrap();
            assert!(
                step == batch[t * vocab..(t + 1) * vocab],
                "f16 cache {half}: position {t} differs between batch and stepwise"
            );
        }
        // Chunks of 5 (windows closing inside and across chunks) agree too.
        let mut chunk_cache = new();
        for (ci, chunk) in ids.chunks(5).enumerate() {
            let l = m.forward(chunk, &mut chunk_cache, Logits::All).unwrap();
            let t0 = ci * 5;
            assert!(
                l == batch[t0 * vocab..(t0 + chunk.len()) * vocab],
                "f16 cache {half}: chunk {ci} differs"
            );
        }
    }
}

fn batch_and_stepwise_bit_identical(name: &str) {
    let dir = fixtures().join(name);
    let (m, _) = baicai_models::load_hf(&dir).unwrap();
    let c = m.config();
    let mla = c.mla.as_ref().unwrap();
    let (vocab, width) = (c.n_vocab, mla.cache_width());
    let ix = mla.indexer.map_or(0, |ix| ix.head_dim);
    let ids: Vec<u32> = (0..11).map(|i| (i * 37 % 300 + 3) as u32).collect();
    for half in [false, true] {
        let new = || {
            if half {
                baicai_models::KvCache::new_f16(c.n_layer, 32, width, ix)
            } else {
                baicai_models::KvCache::new(c.n_layer, 32, width, ix)
            }
        };
        let mut batch_cache = new();
        let batch = m.forward(&ids, &mut batch_cache, Logits::All).unwrap();
        let mut step_cache = new();
        for (t, &id) in ids.iter().enumerate() {
            let step = m.forward(&[id], &mut step_cache, Logits::Last).unwrap();
            assert!(
                step == batch[t * vocab..(t + 1) * vocab],
                "f16 cache {half}: position {t} differs between batch and stepwise"
            );
        }
    }
}

/// Expert readahead (for models larger than memory) only advises the OS: logits with it on are
/// bit-identical to logits with it off, on a memory-mapped GGUF model.
#[test]
fn expert_readahead_changes_no_logits() {
    let path = fixtures().join("deepseek-v3").join("model-f32.gguf");
    let m = baicai_models::load(Arc::new(baicai_gguf::Gguf::open(&path).unwrap())).unwrap();
    let c = m.config();
    let ids: Vec<u32> = (0..9).map(|i| (i * 53 % 300 + 5) as u32).collect();
    let run = |on: bool| {
        baicai_models::moe::set_expert_readahead(on);
        let mut cache = m.new_cache(32);
        let mut logits = m.forward(&ids, &mut cache, Logits::All).unwrap();
        logits.extend(m.forward(&[7], &mut cache, Logits::Last).unwrap());
        logits
    };
    let (off, on) = (run(false), run(true));
    baicai_models::moe::set_expert_readahead(false);
    assert_eq!(off.len(), (ids.len() + 1) * c.n_vocab);
    assert!(off == on, "expert readahead changed the logits");
}
