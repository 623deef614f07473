//! Path templates: the little language of the route table and of operators'
//! `[[routes.rules]]` (SPEC §11). A template is `/`-separated segments, each a
//! literal (`api`, `v1`, `file`, `list`) or a typed parameter: `{library}`,
//! `{space}`, `{spaces}` (a comma-separated list of space ids in one segment),
//! `{key}` (a confirm key), `{id}` (any other opaque id) or `{path}` (a FilePath:
//! the rest of the path, last). Parsing is shared by the config (to name a bad
//! rule's key) and the router, so both read templates alike.

use std::fmt;

/// One segment of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Lit(String),
    Library,
    Space,
    Spaces,
    Key,
    Id,
    Path,
}

impl Seg {
    pub fn is_param(&self) -> bool {
        !matches!(self, Seg::Lit(_))
    }
}

impl fmt::Display for Seg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seg::Lit(s) => f.write_str(s),
            Seg::Library => f.write_str("{library}"),
            Seg::Space => f.write_str("{space}"),
            Seg::Spaces => f.write_str("{spaces}"),
            Seg::Key => f.write_str("{key}"),
            Seg::Id => f.write_str("{id}"),
            Seg::Path => f.write_str("{path}"),
        }
    }
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub segs: Vec<Seg>,
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.segs {
            write!(f, "/{s}")?;
        }
        Ok(())
    }
}

/// Characters a literal segment may hold: what SMH's own literals use. No `%`
/// (literals match as sent, never decoded), no `;`, `.`-only segments or spaces.
fn is_literal(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Template {
    /// Parses `"/api/v1/file/{library}/{space}/{path}"`. The error is a fixed phrase
    /// for a config message.
    pub fn parse(text: &str) -> Result<Template, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err("must start with /".into());
        };
        let mut segs = Vec::new();
        for part in rest.split('/') {
            let seg = match part {
                "{library}" => Seg::Library,
                "{space}" => Seg::Space,
                "{spaces}" => Seg::Spaces,
                "{key}" => Seg::Key,
                "{id}" => Seg::Id,
                "{path}" => Seg::Path,
                lit if is_literal(lit) => Seg::Lit(lit.to_string()),
                other if other.starts_with('{') => {
                    return Err(format!(
                        "unknown parameter {other:?}; use {{library}}, {{space}}, {{spaces}}, {{key}}, {{id}} or {{path}}"
                    ));
                }
                other => {
                    return Err(format!(
                        "segment {other:?} is neither a parameter nor a literal (A-Z a-z 0-9 - _ .)"
                    ));
                }
            };
            segs.push(seg);
        }
        if let Some(at) = segs.iter().position(|s| *s == Seg::Path)
            && at != segs.len() - 1
        {
            return Err("{path} must be the last segment".into());
        }
        for kind in [
            Seg::Library,
            Seg::Space,
            Seg::Spaces,
            Seg::Key,
            Seg::Id,
            Seg::Path,
        ] {
            if segs.iter().filter(|s| **s == kind).count() > 1 {
                return Err(format!("{kind} appears more than once"));
            }
        }
        if segs.contains(&Seg::Space) && segs.contains(&Seg::Spaces) {
            return Err("{space} and {spaces} exclude each other".into());
        }
        if segs.first().is_none_or(|s| s.is_param()) {
            return Err("must start with a literal segment".into());
        }
        Ok(Template { segs })
    }

    /// The literal segments the template starts with, up to the first parameter:
    /// the router indexes rows by them.
    pub fn literal_prefix(&self) -> impl Iterator<Item = &str> {
        self.segs.iter().map_while(|s| match s {
            Seg::Lit(l) => Some(l.as_str()),
            _ => None,
        })
    }

    pub fn has(&self, kind: &Seg) -> bool {
        self.segs.contains(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_back() {
        for t in [
            "/api/v1/file/{library}/{space}/{key}",
            "/api/v1/office/{library}/{space}/edit/{path}",
            "/api/v1/usage/{library}/{spaces}",
            "/api/v1/space/{library}/list",
        ] {
            assert_eq!(Template::parse(t).unwrap().to_string(), t);
        }
    }

    #[test]
    fn refuses_what_would_not_match_as_written() {
        for bad in [
            "api/v1",
            "/api/v1/{nope}",
            "/api/v1/%66ile",
            "/api/v1/file;x",
            "/api//v1",
            "/api/../v1",
            "/api/v1/{path}/x",
            "/api/{space}/{space}",
            "/{library}/x",
            "/api/{space}/{spaces}",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn literal_prefix_stops_at_the_first_parameter() {
        let t = Template::parse("/api/v1/file/{library}/x").unwrap();
        assert_eq!(
            t.literal_prefix().collect::<Vec<_>>(),
            ["api", "v1", "file"]
        );
    }
}
