//! baicai-tokenizer (skeleton).
