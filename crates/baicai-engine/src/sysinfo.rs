//! Machine facts: peak RSS, memory bandwidth (skeleton).
