//! baicai-engine (skeleton).
