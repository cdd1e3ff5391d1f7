//! The hook for constrained decoding: a per-sequence object that says which tokens may come
//! next, applied to the logits before sampling.
//!
//! The engine knows nothing of grammars: a [`TokenConstraint`] (the server implements one over
//! llguidance for JSON schemas and tool calls) fills a bitset of allowed tokens, the generation
//! step sets every other logit to −∞, samples, and reports the chosen token back. A sequence
//! without a constraint pays nothing: no mask is computed or applied.

/// Which tokens may come next: bit `t % 32` of word `t / 32` is set when token `t` is allowed
/// (the layout of llguidance's `SimpleVob`). Tokens past the end are not allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenMask {
    words: Vec<u32>,
}

impl TokenMask {
    /// A mask over `n_tokens` tokens, none allowed.
    pub fn new(n_tokens: usize) -> TokenMask {
        TokenMask {
            words: vec![0; n_tokens.div_ceil(32)],
        }
    }

    /// Resizes the mask to `n_tokens` tokens and clears it (keeps the allocation).
    pub fn reset(&mut self, n_tokens: usize) {
        self.words.clear();
        self.words.resize(n_tokens.div_ceil(32), 0);
    }

    /// The words of the bitset, to be filled by a constraint (e.g. copied from a `SimpleVob`).
    pub fn words_mut(&mut self) -> &mut Vec<u32> {
        &mut self.words
    }

    /// Allows token `t` (ignored past the end).
    pub fn allow(&mut self, t: u32) {
        if let Some(w) = self.words.get_mut(t as usize / 32) {
            *w |= 1 << (t % 32);
        }
    }

    /// Whether token `t` is allowed.
    pub fn is_allowed(&self, t: u32) -> bool {
        self.words
            .get(t as usize / 32)
            .is_some_and(|w| w & (1 << (t % 32)) != 0)
    }

    /// Whether no token is allowed.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// Sets the logit of every token the mask does not allow to −∞.
    pub fn apply(&self, logits: &mut [f32]) {
        for (i, chunk) in logits.chunks_mut(32).enumerate() {
            let w = self.words.get(i).copied().unwrap_or(0);
            if w == u32::MAX {
                continue;
            }
            for (b, l) in chunk.iter_mut().enumerate() {
                if w & (1 << b) == 0 {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
    }
}

/// A constraint on the tokens of one sequence (a grammar, a JSON schema).
///
/// The engine calls, per generated token: [`TokenConstraint::mask`], then samples among the
/// allowed tokens, then [`TokenConstraint::commit`] with the chosen one — except for an
/// end-of-generation token, which ends the sequence without a commit.
pub trait TokenConstraint: Send {
    /// Fills `mask` (sized to the vocabulary, nothing allowed) with the tokens that may come
    /// next. A constraint that has failed or is complete allows only end-of-generation tokens.
    fn mask(&mut self, mask: &mut TokenMask);

    /// Advances the constraint past `token`, which its last mask allowed.
    fn commit(&mut self, token: u32);

    /// Whether nothing more may be generated (the grammar is complete and allows no
    /// continuation); the sequence then ends as if at an end-of-generation token.
    fn is_done(&self) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_sets_disallowed_logits_to_minus_infinity() {
        let mut m = TokenMask::new(70);
        m.allow(3);
        m.allow(64);
        m.allow(1000); // past the end: ignored
        let mut logits = vec![1.0f32; 72];
        m.apply(&mut logits);
        for (t, l) in logits.iter().enumerate() {
            assert_eq!(l.is_finite(), t == 3 || t == 64, "token {t}");
        }
        assert!(m.is_allowed(64) && !m.is_allowed(65) && !m.is_allowed(1000));
        assert!(!m.is_empty());
        assert!(TokenMask::new(10).is_empty());
    }
}
