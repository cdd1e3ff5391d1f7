//! Loads a fixture model whose GGUF metadata or `config.json` the input has mutated (numbers to
//! 0, 1, huge, negative or NaN, keys removed or added, types swapped; see
//! `crates/baicai-models/tests/support/hostile.rs`, shared with the bounded run in
//! `crates/baicai-models/tests/hostile_models.rs`), then runs tokens through whatever loads. An
//! error is the expected outcome; a panic or an abort is a bug.
#![no_main]

#[path = "../../crates/baicai-models/tests/support/hostile.rs"]
mod hostile;

use std::path::Path;
use std::sync::OnceLock;

use hostile::{ByteChoices, Corpus};
use libfuzzer_sys::fuzz_target;

/// The fixtures, read once per process.
fn corpus() -> &'static Corpus {
    static CORPUS: OnceLock<Corpus> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let work =
            std::env::temp_dir().join(format!("baicai-fuzz-model-load-{}", std::process::id()));
        Corpus::load(&root, &work)
    })
}

fuzz_target!(|data: &[u8]| {
    let case = corpus().mutate(&mut ByteChoices(data));
    let _ = case.run();
});
