//! The prefix cache: keys and values of finished sequences, kept so that a later request with
//! the same beginning (a shared system prompt, a chat's earlier turns) does not recompute it.
//!
//! Entries hold whole caches and count their blocks against the engine's KV budget; the
//! scheduler evicts them, least recently used first, whenever live sequences need the blocks.
//! A new sequence copies the longest matching prefix into its own cache (a copy of the rows,
//! which costs far less than recomputing them), so entries are never shared mutably and a
//! sequence never waits on another.

use baicai_models::KvCache;

struct Entry {
    tokens: Vec<u32>,
    cache: KvCache,
    blocks: usize,
    last_used: u64,
}

/// Finished sequences' caches by their tokens.
pub(crate) struct PrefixCache {
    entries: Vec<Entry>,
    clock: u64,
    /// Shorter matches are not worth a lookup's copy.
    min_tokens: usize,
}

impl PrefixCache {
    pub(crate) fn new(min_tokens: usize) -> PrefixCache {
        PrefixCache {
            entries: Vec::new(),
            clock: 0,
            min_tokens: min_tokens.max(1),
        }
    }

    /// Blocks the entries hold.
    pub(crate) fn blocks(&self) -> usize {
        self.entries.iter().map(|e| e.blocks).sum()
    }

    /// Copies the longest cached prefix of `tokens` into `cache`; returns its length (0: none).
    pub(crate) fn copy_longest(&mut self, tokens: &[u32], cache: &mut KvCache) -> usize {
        let best = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let n = e
                    .tokens
                    .iter()
                    .zip(tokens)
                    .take_while(|(a, b)| a == b)
                    .count()
                    .min(e.cache.len())
                    .min(cache.capacity());
                (n, i)
            })
            .max();
        let Some((n, i)) = best.filter(|&(n, _)| n >= self.min_tokens) else {
            return 0;
        };
        if cache.copy_prefix(&self.entries[i].cache, n).is_err() {
            return 0;
        }
        self.clock += 1;
        self.entries[i].last_used = self.clock;
        n
    }

    /// Keeps `cache` (holding `tokens`, `blocks` blocks taken from the budget). Entries it
    /// extends are dropped, and it is not kept when an entry already extends it; returns the
    /// blocks given back either way.
    pub(crate) fn insert(&mut self, tokens: Vec<u32>, cache: KvCache, blocks: usize) -> usize {
        if self.entries.iter().any(|e| e.tokens.starts_with(&tokens)) {
            return blocks;
        }
        let mut freed = 0;
        self.entries.retain(|e| {
            let superseded = tokens.starts_with(&e.tokens);
            if superseded {
                freed += e.blocks;
            }
            !superseded
        });
        self.clock += 1;
        self.entries.push(Entry {
            tokens,
            cache,
            blocks,
            last_used: self.clock,
        });
        freed
    }

    /// Drops least recently used entries until at least `blocks` blocks are freed (or none is
    /// left); returns the blocks freed.
    pub(crate) fn evict(&mut self, blocks: usize) -> usize {
        let mut freed = 0;
        while freed < blocks && !self.entries.is_empty() {
            let (i, _) = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_used)
                .expect("non-empty");
            freed += self.entries.swap_remove(i).blocks;
        }
        freed
    }
}
