//! `--api-key`: every `/v1` route needs `Authorization: Bearer KEY`.
//!
//! The key is compared in constant time (`subtle`), so the time a refusal takes says nothing
//! about how much of a guessed key was right.

use axum::http::{header, HeaderMap};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// Checks the request's bearer token against `key` (`None`: no key configured, all pass).
///
/// # Errors
/// 401 with OpenAI's `invalid_api_key` when the header is missing, malformed or wrong.
pub fn check(key: Option<&str>, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    match given {
        None => Err(ApiError::unauthorized(
            "You didn't provide an API key: send it as `Authorization: Bearer KEY`",
        )),
        // Lengths differ -> `ct_eq` is false without comparing contents; the length of the
        // configured key is not a secret worth hiding.
        Some(t) if bool::from(t.as_bytes().ct_eq(key.as_bytes())) => Ok(()),
        Some(_) => Err(ApiError::unauthorized("Incorrect API key provided")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn bearer_key_is_required_only_when_configured() {
        assert!(check(None, &HeaderMap::new()).is_ok());
        assert!(check(Some("k1"), &headers("Bearer k1")).is_ok());
        assert!(check(Some("k1"), &headers("bearer  k1 ")).is_ok());
        for bad in ["Bearer k2", "Bearer k1x", "Basic k1", "k1", "Bearer "] {
            let e = check(Some("k1"), &headers(bad)).unwrap_err();
            assert_eq!(e.status, 401, "{bad}");
            assert_eq!(e.code, Some("invalid_api_key"));
        }
        assert_eq!(
            check(Some("k1"), &HeaderMap::new()).unwrap_err().status,
            401
        );
    }
}
