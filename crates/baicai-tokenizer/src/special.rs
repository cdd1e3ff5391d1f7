//! Splitting text at special tokens before BPE/SPM sees it (llama.cpp's
//! `tokenizer_st_partition`).
//!
//! Special tokens are tried one after another, longest text first; each splits every remaining
//! raw-text fragment at all of its occurrences, left to right. So a longer special token wins
//! over a shorter one anywhere in the text, not only where they overlap. An Aho–Corasick pass
//! first finds which special tokens occur in the text at all, so the ordered passes run only for
//! those (Gemma 3 has ~6400 special tokens).

use std::ops::Range;

use aho_corasick::AhoCorasick;

use crate::vocab::{attr, Vocab};

/// A piece of the input: raw text to tokenize, or a special token matched whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fragment {
    Text(Range<usize>),
    Token(u32),
}

/// The special tokens in priority order and a matcher over their texts.
pub(crate) struct SpecialMatcher {
    /// Ids, longest text first; pattern `i` of `automaton` is `ids[i]`.
    ids: Vec<u32>,
    automaton: Option<AhoCorasick>,
}

impl SpecialMatcher {
    pub fn new(vocab: &Vocab, ids: Vec<u32>) -> SpecialMatcher {
        let automaton = if ids.is_empty() {
            None
        } else {
            AhoCorasick::new(ids.iter().map(|&id| vocab.text(id).as_bytes())).ok()
        };
        SpecialMatcher { ids, automaton }
    }

    /// Splits `text` into fragments. With `parse_special` false only user-defined tokens are
    /// matched (control and unknown tokens stay text), as in llama.cpp.
    pub fn partition(&self, vocab: &Vocab, text: &str, parse_special: bool) -> Vec<Fragment> {
        let mut frags = Vec::new();
        if text.is_empty() {
            return frags;
        }
        frags.push(Fragment::Text(0..text.len()));
        let Some(ac) = &self.automaton else {
            return frags;
        };
        let mut present: Vec<usize> = ac
            .find_overlapping_iter(text)
            .map(|m| m.pattern().as_usize())
            .collect();
        present.sort_unstable();
        present.dedup();
        for idx in present {
            let id = self.ids[idx];
            if !parse_special && vocab.has(id, attr::CONTROL | attr::UNKNOWN) {
                continue;
            }
            let needle = vocab.text(id);
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                let Fragment::Text(range) = f else {
                    next.push(f);
                    continue;
                };
                let mut last = range.start;
                for (pos, _) in text[range.clone()].match_indices(needle) {
                    let at = range.start + pos;
                    if at > last {
                        next.push(Fragment::Text(last..at));
                    }
                    next.push(Fragment::Token(id));
                    last = at + needle.len();
                }
                if last < range.end {
                    next.push(Fragment::Text(last..range.end));
                }
            }
            frags = next;
        }
        frags
    }
}
