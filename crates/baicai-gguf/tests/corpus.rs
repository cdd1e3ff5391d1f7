//! Every input the fuzzer ever crashed on (`tests/regressions/`) and the fuzz seed corpus
//! (`fuzz/corpus/gguf_parse/`) goes through the parser without a panic; Ok and Err both pass.

use std::path::Path;

use baicai_gguf::Gguf;

fn parse_every_file_in(dir: &Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if !path.is_file() || path.extension().is_some_and(|e| e == "md") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        if let Ok(g) = Gguf::from_bytes(bytes) {
            for key in g.metadata().keys() {
                let _ = (
                    g.get_u64(key),
                    g.get_f32(key),
                    g.get_str(key),
                    g.get_str_array(key),
                );
                let _ = (g.get_f32_array(key), g.get_i64_array(key), g.get_bool(key));
            }
            for t in g.tensors() {
                assert_eq!(
                    g.tensor_data(t).len() as u64,
                    t.n_bytes,
                    "{}",
                    path.display()
                );
            }
        }
        n += 1;
    }
    n
}

#[test]
fn fuzz_regressions_parse_without_panic() {
    parse_every_file_in(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/regressions"
    )));
}

#[test]
fn fuzz_seed_corpus_parses_without_panic() {
    let n = parse_every_file_in(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fuzz/corpus/gguf_parse"
    )));
    assert!(n >= 5, "the seed corpus holds only {n} files");
}
