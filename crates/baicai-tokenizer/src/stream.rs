//! Streaming detokenization: token ids in, complete UTF-8 text out.

use crate::Tokenizer;

/// Turns a stream of token ids into text, one id at a time, without ever emitting a broken
/// character: bytes of a UTF-8 sequence split across tokens (byte-fallback tokens, byte-level
/// BPE pieces of an emoji) are held back until the sequence is complete.
///
/// Pieces are rendered as llama.cpp's `token_to_piece` renders them for streaming: no leading
/// space is stripped and no `clean_spaces` post-processing is applied (that needs look-ahead).
/// The decoder holds no reference to the tokenizer, so it can live beside one in a sequence's
/// state.
///
/// ```no_run
/// # fn demo(tok: &baicai_tokenizer::Tokenizer, ids: &[u32]) {
/// let mut dec = baicai_tokenizer::StreamDecoder::new(true);
/// let mut text = String::new();
/// for &id in ids {
///     text.push_str(&dec.push(tok, id));
/// }
/// text.push_str(&dec.flush());
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct StreamDecoder {
    skip_special: bool,
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// A decoder; with `skip_special`, control tokens render as nothing.
    pub fn new(skip_special: bool) -> StreamDecoder {
        StreamDecoder {
            skip_special,
            pending: Vec::new(),
        }
    }

    /// Adds one token and returns the text that is now complete (possibly empty).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> String {
        tokenizer.append_piece(id, !self.skip_special, &mut self.pending);
        self.take_complete()
    }

    /// Adds raw bytes (e.g. a piece obtained elsewhere) and returns the complete text.
    pub fn push_bytes(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        self.take_complete()
    }

    /// Bytes held back, waiting for the rest of a character.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    /// Ends the stream: returns what is held back, an incomplete sequence as U+FFFD.
    pub fn flush(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }

    /// Everything up to an incomplete trailing sequence; invalid bytes (which no later byte can
    /// complete) become U+FFFD so the stream never stalls.
    fn take_complete(&mut self) -> String {
        let keep = incomplete_tail(&self.pending);
        let done = self.pending.len() - keep;
        let out = String::from_utf8_lossy(&self.pending[..done]).into_owned();
        self.pending.drain(..done);
        out
    }
}

/// Length of a trailing, possibly-completable UTF-8 sequence prefix (0 when the buffer ends on a
/// character boundary or on bytes that are invalid anyway).
fn incomplete_tail(buf: &[u8]) -> usize {
    // A sequence is at most 4 bytes: look back at most 3 bytes for its lead byte.
    for back in 1..=buf.len().min(3) {
        let b = buf[buf.len() - back];
        if b & 0xC0 == 0x80 {
            continue; // continuation byte: keep looking for the lead
        }
        let need = match b {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return 0,
        };
        if back >= need {
            return 0;
        }
        // Only hold back if the partial sequence is valid so far.
        return if std::str::from_utf8(&buf[buf.len() - back..])
            .err()
            .and_then(|e| e.error_len())
            .is_none()
        {
            back
        } else {
            0
        };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_split_multibyte_characters() {
        let mut d = StreamDecoder::new(false);
        let text = "中🚀";
        let bytes = text.as_bytes();
        let mut out = String::new();
        for b in bytes {
            let part = d.push_bytes(&[*b]);
            assert!(!part.contains('\u{FFFD}'), "broken character emitted");
            out.push_str(&part);
        }
        out.push_str(&d.flush());
        assert_eq!(out, text);
    }

    #[test]
    fn emits_complete_text_immediately() {
        let mut d = StreamDecoder::new(false);
        assert_eq!(d.push_bytes("ab".as_bytes()), "ab");
        assert_eq!(d.push_bytes(&[0xE4, 0xB8]), "");
        assert_eq!(d.pending(), &[0xE4, 0xB8]);
        assert_eq!(d.push_bytes(&[0xAD, b'x']), "中x");
    }

    #[test]
    fn invalid_bytes_do_not_stall_and_flush_marks_truncation() {
        let mut d = StreamDecoder::new(false);
        assert_eq!(d.push_bytes(&[0xFF, b'a']), "\u{FFFD}a");
        assert_eq!(d.push_bytes(&[0xF0, 0x9F]), "");
        assert_eq!(d.flush(), "\u{FFFD}");
    }
}
