//! baicai-models (skeleton).
