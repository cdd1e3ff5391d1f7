//! Developer tool: greedy continuation of a prompt given as token ids, printing token ids.
//! `cargo run --release -p baicai-models --example greedy_ids -- MODEL N ID ID ...`

use std::sync::Arc;

use baicai_models::Logits;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: greedy_ids MODEL N_TOKENS ID...");
        std::process::exit(2);
    }
    let gguf = Arc::new(baicai_gguf::Gguf::open(args[1].as_ref()).expect("open"));
    let model = baicai_models::load(gguf).expect("load");
    let n: usize = args[2].parse().expect("N_TOKENS");
    let prompt: Vec<u32> = args[3..]
        .iter()
        .map(|s| s.parse().expect("token id"))
        .collect();
    let mut cache = model.new_cache(prompt.len() + n);
    let t = std::time::Instant::now();
    let mut logits = model
        .forward(&prompt, &mut cache, Logits::Last)
        .expect("forward");
    eprintln!("prefill {} tokens: {:?}", prompt.len(), t.elapsed());
    let t = std::time::Instant::now();
    let mut out = Vec::new();
    for _ in 0..n {
        let best = (0..logits.len()).fold(0, |b, i| if logits[i] > logits[b] { i } else { b });
        out.push(best as u32);
        logits = model
            .forward(&[best as u32], &mut cache, Logits::Last)
            .expect("forward");
    }
    eprintln!("decode {n} tokens: {:?}", t.elapsed());
    println!("{out:?}");
}
