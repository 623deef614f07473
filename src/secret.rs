//! Secrets as a type: tokens, HMAC secrets and upstream credentials are held in
//! [`Secret`], whose `Debug` and `Display` print `[redacted]`, so that logging one by
//! accident (in a `{:?}` of a larger struct, say) cannot leak it.

use std::borrow::Cow;
use std::fmt;

/// A string that must never reach a log, a metric label or an error body. Held
/// (`Secret<'static>`, from [`Secret::new`]) or borrowed from the request it came
/// in ([`Secret::borrowed`]): a caller's token is checked and forwarded without
/// a copy.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret<'a>(Cow<'a, str>);

impl Secret<'static> {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(Cow::Owned(value.into()))
    }
}

impl<'a> Secret<'a> {
    /// A secret that lives in a request (its token in the query).
    pub fn borrowed(value: &'a str) -> Self {
        Secret(Cow::Borrowed(value))
    }

    /// The secret itself. Call sites are few and greppable: the verifier, the
    /// canonical query builder and the token minter.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("eyJhbGciOiJIUzI1NiJ9.payload.sig");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some([redacted])");
        assert_eq!(s.expose(), "eyJhbGciOiJIUzI1NiJ9.payload.sig");
        let b = Secret::borrowed("in.a.query");
        assert_eq!(format!("{b:?} {b}"), "[redacted] [redacted]");
        assert_eq!(b.expose(), "in.a.query");
    }
}
