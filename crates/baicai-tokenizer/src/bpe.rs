//! Byte-level BPE (`tokenizer.ggml.model = gpt2`), as llama.cpp's `llm_tokenizer_bpe_session`.
//!
//! Each pre-tokenized word is turned into bytes, each byte into one GPT-2 "byte character"
//! symbol, and adjacent symbol pairs are merged lowest merge rank first (ties: leftmost). Symbols
//! are ids, not strings: every merge's two sides and its result are interned at load (vocabulary
//! ids, plus fresh ids for the rare merge texts that are not tokens), so a merge lookup is one
//! hash of an id pair and encoding allocates no strings.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::error::Result;
use crate::pretokenize::{PreConfig, PreTokenizer};
use crate::vocab::{FxMap, Vocab};

/// GPT-2's byte → character map: printable Latin-1 bytes map to themselves, the other 68 bytes
/// to U+0100.. in byte order, so every byte has a visible, unique character.
pub(crate) const BYTE_CHARS: [char; 256] = byte_chars();

const fn keeps_itself(b: u32) -> bool {
    (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)
}

const fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut shifted = 0;
    let mut b = 0;
    while b < 256 {
        let cp = if keeps_itself(b) {
            b
        } else {
            shifted += 1;
            255 + shifted
        };
        table[b as usize] = match char::from_u32(cp) {
            Some(c) => c,
            None => panic!("GPT-2 byte characters are valid code points"),
        };
        b += 1;
    }
    table
}

/// Inverse of [`BYTE_CHARS`].
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    if cp < 256 && keeps_itself(cp) {
        return Some(cp as u8);
    }
    if (256..256 + 68).contains(&cp) {
        // The (cp - 256)-th byte that does not keep itself.
        return (0u32..256)
            .filter(|&b| !keeps_itself(b))
            .nth((cp - 256) as usize)
            .map(|b| b as u8);
    }
    None
}

/// Appends the bytes a BPE token text stands for. A character outside the byte map is written
/// as llama.cpp's `llama_decode_text` writes it: `[UNK_BYTE_0x<hex>` + the token text + `]`.
pub(crate) fn decode_token_text(text: &str, out: &mut Vec<u8>) {
    for c in text.chars() {
        match char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                let mut utf8 = [0u8; 4];
                for b in c.encode_utf8(&mut utf8).bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
}

/// A symbol id that no merge mentions and that is no token.
const NO_SYMBOL: u32 = u32::MAX;

#[inline]
fn pair_key(left: u32, right: u32) -> u64 {
    ((left as u64) << 32) | right as u64
}

/// Byte-level BPE tables.
pub(crate) struct Bpe {
    pre: PreTokenizer,
    /// (left, right) symbol ids → (rank, merged symbol id). Ids below `n_vocab` are tokens.
    merges: FxMap<u64, (u32, u32)>,
    /// Symbol of each byte's GPT-2 character.
    byte_symbol: [u32; 256],
    ignore_merges: bool,
    n_vocab: u32,
}

#[derive(Clone, Copy)]
struct Symbol {
    start: u32,
    len: u32,
    prev: i32,
    next: i32,
    id: u32,
}

/// A candidate merge of symbols `left` and `right`. The derived order compares `rank`, then
/// `left`: with `Reverse`, the queue pops the lowest rank, ties leftmost (llama.cpp's
/// `llm_bigram_bpe::comparator`).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    rank: u32,
    left: u32,
    right: u32,
    left_id: u32,
    right_id: u32,
    merged: u32,
}

/// Reusable buffers for encoding many words.
#[derive(Default)]
pub(crate) struct BpeScratch {
    symbols: Vec<Symbol>,
    queue: BinaryHeap<Reverse<Candidate>>,
    encoded: String,
}

impl Bpe {
    /// Interns the merge list (`"left right"` strings; the position in the list is the rank)
    /// and compiles the pre-tokenizer.
    ///
    /// # Errors
    /// A pre-tokenizer regex that does not compile.
    pub fn new(vocab: &Vocab, merges: &[String], pre_name: &str, cfg: PreConfig) -> Result<Bpe> {
        let pre = PreTokenizer::new(pre_name, cfg.regexes)?;
        let n_vocab = vocab.len() as u32;
        let mut extra: FxMap<String, u32> = FxMap::default();
        let mut intern = |s: &str| -> u32 {
            if let Some(id) = vocab.id(s) {
                return id;
            }
            if let Some(&id) = extra.get(s) {
                return id;
            }
            let id = n_vocab + extra.len() as u32;
            extra.insert(s.to_string(), id);
            id
        };
        let mut table = FxMap::with_capacity_and_hasher(merges.len(), Default::default());
        let mut joined = String::new();
        for (rank, merge) in merges.iter().enumerate() {
            // llama.cpp splits at the first space after the first byte; a line without one
            // yields an empty pair that can never match.
            let Some(pos) = merge.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1) else {
                continue;
            };
            let (left, right) = (&merge[..pos], &merge[pos + 1..]);
            joined.clear();
            joined.push_str(left);
            joined.push_str(right);
            let (l, r, m) = (intern(left), intern(right), intern(&joined));
            // The first occurrence of a pair keeps its rank, as `bpe_ranks.emplace` does.
            table.entry(pair_key(l, r)).or_insert((rank as u32, m));
        }
        let mut byte_symbol = [NO_SYMBOL; 256];
        let mut buf = [0u8; 4];
        for (b, sym) in byte_symbol.iter_mut().enumerate() {
            let s: &str = BYTE_CHARS[b].encode_utf8(&mut buf);
            *sym = vocab
                .id(s)
                .or_else(|| extra.get(s).copied())
                .unwrap_or(NO_SYMBOL);
        }
        Ok(Bpe {
            pre,
            merges: table,
            byte_symbol,
            ignore_merges: cfg.ignore_merges,
            n_vocab,
        })
    }

    /// Encodes one raw-text fragment (no special tokens in it).
    pub fn encode(&self, vocab: &Vocab, text: &str, out: &mut Vec<u32>, s: &mut BpeScratch) {
        for word in self.pre.split(text) {
            self.encode_word(vocab, &text.as_bytes()[word], out, s);
        }
    }

    fn try_add(&self, s: &mut BpeScratch, left: i32, right: i32) {
        if left < 0 || right < 0 {
            return;
        }
        let (l, r) = (s.symbols[left as usize].id, s.symbols[right as usize].id);
        if let Some(&(rank, merged)) = self.merges.get(&pair_key(l, r)) {
            s.queue.push(Reverse(Candidate {
                rank,
                left: left as u32,
                right: right as u32,
                left_id: l,
                right_id: r,
                merged,
            }));
        }
    }

    fn encode_word(&self, vocab: &Vocab, word: &[u8], out: &mut Vec<u32>, s: &mut BpeScratch) {
        if self.ignore_merges {
            s.encoded.clear();
            s.encoded
                .extend(word.iter().map(|&b| BYTE_CHARS[b as usize]));
            if let Some(id) = vocab.id(&s.encoded) {
                out.push(id);
                return;
            }
        }
        s.symbols.clear();
        s.queue.clear();
        let n = word.len() as i32;
        s.symbols
            .extend(word.iter().enumerate().map(|(i, &b)| Symbol {
                start: i as u32,
                len: 1,
                prev: i as i32 - 1,
                next: if i as i32 + 1 == n { -1 } else { i as i32 + 1 },
                id: self.byte_symbol[b as usize],
            }));
        for i in 1..n {
            self.try_add(s, i - 1, i);
        }
        while let Some(Reverse(c)) = s.queue.pop() {
            let (left, right) = (c.left, c.right);
            let (l, r) = (s.symbols[left as usize], s.symbols[right as usize]);
            // Skip candidates made stale by an earlier merge of either side.
            if l.len == 0
                || r.len == 0
                || l.id != c.left_id
                || r.id != c.right_id
                || l.next != right as i32
            {
                continue;
            }
            let sl = &mut s.symbols[left as usize];
            sl.len += r.len;
            sl.id = c.merged;
            sl.next = r.next;
            let prev = sl.prev;
            s.symbols[right as usize].len = 0;
            if r.next >= 0 {
                s.symbols[r.next as usize].prev = left as i32;
            }
            self.try_add(s, prev, left as i32);
            self.try_add(s, left as i32, r.next);
        }
        let mut i = 0i32;
        while i >= 0 && (i as usize) < s.symbols.len() {
            let sym = s.symbols[i as usize];
            if sym.id < self.n_vocab {
                out.push(sym.id);
            } else {
                // Not a token: llama.cpp looks each byte of the symbol's text up as a token of
                // its own, which can only succeed for printable ASCII.
                let bytes = &word[sym.start as usize..(sym.start + sym.len) as usize];
                for &b in bytes {
                    if (0x21..=0x7E).contains(&b) {
                        if let Some(id) = vocab.id(std::str::from_utf8(&[b]).unwrap_or("")) {
                            out.push(id);
                        }
                    }
                }
            }
            i = sym.next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_a_bijection() {
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(BYTE_CHARS[b as usize]), Some(b));
        }
        assert_eq!(BYTE_CHARS[b' ' as usize], 'Ġ');
        assert_eq!(BYTE_CHARS[b'\n' as usize], 'Ċ');
        assert_eq!(char_to_byte('€'), None);
    }
}
