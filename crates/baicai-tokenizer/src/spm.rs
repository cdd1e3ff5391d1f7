//! SentencePiece BPE (`tokenizer.ggml.model = llama`), as llama.cpp's `llm_tokenizer_spm`.
//!
//! The text (spaces already escaped to U+2581) is split into UTF-8 characters; repeatedly the
//! adjacent pair whose concatenation is a vocabulary token with the highest score is merged
//! (ties: leftmost). Symbols that end up not being tokens are written as byte-fallback tokens
//! `<0xXX>`. Merged symbols are always contiguous in the text, so a candidate lookup hashes a
//! slice of the input and nothing is allocated per pair.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use crate::vocab::Vocab;

/// Byte-fallback tokens: `<0xXX>`, else the byte itself as a one-character token (llama.cpp's
/// `byte_to_token` for SPM).
pub(crate) fn byte_tokens(vocab: &Vocab) -> [Option<u32>; 256] {
    let mut t = [None; 256];
    for (b, slot) in t.iter_mut().enumerate() {
        *slot = vocab.id(&format!("<0x{b:02X}>")).or_else(|| {
            let c = char::from_u32(b as u32).filter(|_| b < 0x80)?;
            vocab.id(c.encode_utf8(&mut [0u8; 4]))
        });
    }
    t
}

#[derive(Clone, Copy)]
struct Symbol {
    start: u32,
    len: u32,
    prev: i32,
    next: i32,
}

/// A candidate merge, ordered so that `BinaryHeap::pop` yields the highest score, then the
/// leftmost pair.
struct Candidate {
    score: f32,
    left: u32,
    right: u32,
    size: u32,
}

impl Ord for Candidate {
    fn cmp(&self, o: &Self) -> Ordering {
        self.score
            .total_cmp(&o.score)
            .then(Reverse(self.left).cmp(&Reverse(o.left)))
            .then(self.right.cmp(&o.right))
    }
}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl PartialEq for Candidate {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Candidate {}

/// Reusable buffers.
#[derive(Default)]
pub(crate) struct SpmScratch {
    symbols: Vec<Symbol>,
    queue: BinaryHeap<Candidate>,
}

fn try_add(vocab: &Vocab, text: &str, s: &mut SpmScratch, left: i32, right: i32) {
    if left < 0 || right < 0 {
        return;
    }
    let (l, r) = (s.symbols[left as usize], s.symbols[right as usize]);
    let span = &text[l.start as usize..(r.start + r.len) as usize];
    if let Some(id) = vocab.id(span) {
        s.queue.push(Candidate {
            score: vocab.scores[id as usize],
            left: left as u32,
            right: right as u32,
            size: span.len() as u32,
        });
    }
}

/// Encodes `text` (whitespace already escaped) and appends the ids.
pub(crate) fn encode(
    vocab: &Vocab,
    byte_tokens: &[Option<u32>; 256],
    unk: Option<u32>,
    text: &str,
    out: &mut Vec<u32>,
    s: &mut SpmScratch,
) {
    s.symbols.clear();
    s.queue.clear();
    let n = text.chars().count() as i32;
    s.symbols.extend(
        text.char_indices()
            .enumerate()
            .map(|(i, (start, c))| Symbol {
                start: start as u32,
                len: c.len_utf8() as u32,
                prev: i as i32 - 1,
                next: if i as i32 + 1 == n { -1 } else { i as i32 + 1 },
            }),
    );
    for i in 1..n {
        try_add(vocab, text, s, i - 1, i);
    }
    while let Some(c) = s.queue.pop() {
        let (l, r) = (s.symbols[c.left as usize], s.symbols[c.right as usize]);
        // Stale if either side was merged away or has grown since the candidate was made.
        if l.len == 0 || r.len == 0 || l.len + r.len != c.size {
            continue;
        }
        s.symbols[c.left as usize].len += r.len;
        s.symbols[c.left as usize].next = r.next;
        s.symbols[c.right as usize].len = 0;
        if r.next >= 0 {
            s.symbols[r.next as usize].prev = c.left as i32;
        }
        try_add(vocab, text, s, l.prev, c.left as i32);
        try_add(vocab, text, s, c.left as i32, r.next);
    }
    let mut i = if s.symbols.is_empty() { -1 } else { 0 };
    while i >= 0 {
        let sym = s.symbols[i as usize];
        let piece = &text[sym.start as usize..(sym.start + sym.len) as usize];
        match vocab.id(piece) {
            Some(id) => out.push(id),
            None => {
                // llama.cpp throws when a byte has no token at all; we write the unknown token.
                for &b in piece.as_bytes() {
                    if let Some(id) = byte_tokens[b as usize].or(unk) {
                        out.push(id);
                    }
                }
            }
        }
        i = sym.next;
    }
}
