//! PKCE (RFC 7636), `S256` only: OAuth 2.1 and the MCP authorization spec require it, and the
//! `plain` method would hand the verifier to anyone who sees the authorization request.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

/// Why a PKCE parameter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PkceError {
    /// Only `S256` is accepted.
    #[error("code_challenge_method must be S256")]
    Method,
    /// The challenge is not a base64url SHA-256 (43 characters).
    #[error("code_challenge must be the base64url SHA-256 of the verifier (43 characters)")]
    Challenge,
    /// The verifier is not 43 to 128 unreserved characters.
    #[error("code_verifier must be 43 to 128 characters of A-Z a-z 0-9 - . _ ~")]
    Verifier,
    /// The verifier does not hash to the challenge.
    #[error("code_verifier does not match the code_challenge")]
    Mismatch,
}

/// Checks an authorization request's challenge: method `S256` (required) and a well-formed
/// challenge.
///
/// ```
/// use paygate_mcp::oauth::pkce::{check_challenge, PkceError};
/// let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
/// assert_eq!(check_challenge(challenge, Some("S256")), Ok(()));
/// assert_eq!(check_challenge(challenge, Some("plain")), Err(PkceError::Method));
/// assert_eq!(check_challenge(challenge, None), Err(PkceError::Method));
/// ```
pub fn check_challenge(challenge: &str, method: Option<&str>) -> Result<(), PkceError> {
    if method != Some("S256") {
        return Err(PkceError::Method);
    }
    let decoded = URL_SAFE_NO_PAD
        .decode(challenge)
        .map_err(|_| PkceError::Challenge)?;
    if challenge.len() != 43 || decoded.len() != 32 {
        return Err(PkceError::Challenge);
    }
    Ok(())
}

/// Checks a token request's verifier against the challenge the code was issued for, in
/// constant time.
///
/// ```
/// use paygate_mcp::oauth::pkce::verify;
/// // The example of RFC 7636, appendix B.
/// let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
/// let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
/// assert!(verify(verifier, challenge).is_ok());
/// assert!(verify(&verifier.replace('d', "e"), challenge).is_err());
/// ```
pub fn verify(verifier: &str, challenge: &str) -> Result<(), PkceError> {
    let well_formed = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    if !well_formed {
        return Err(PkceError::Verifier);
    }
    let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    if computed.as_bytes().ct_eq(challenge.as_bytes()).into() {
        Ok(())
    } else {
        Err(PkceError::Mismatch)
    }
}
