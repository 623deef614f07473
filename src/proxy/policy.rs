//! Phase 3, policy: may this principal do this operation here? Pure: a verified
//! [`Principal`], the operation's [`Scope`] and its required permissions in, allowed
//! or the first failing check out, in SPEC §3's order:
//! library listed (404) → library match (403) → tenant mode (400) → space scope
//! (403) → permission (403) → user_id (403).

use std::fmt;

use crate::config::LibraryConfig;
use crate::error::GatewayError;
use crate::proxy::auth::Principal;
use crate::smh::{ADMIN, NO_SPACE, is_grant};

/// The permissions an operation needs: alternatives, any one of which suffices,
/// each a set of grants held together (SMH's uncompress needs a download grant and
/// an upload grant). Written `"admin | space_admin | read_only & upload_file"`; the
/// empty expression means any verified token of the library and space (SMH's reads).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Permissions {
    alternatives: Vec<Vec<String>>,
}

impl Permissions {
    /// Parses an expression; every name must be one of SMH's grants.
    pub fn parse(expr: &str) -> Result<Permissions, String> {
        let expr = expr.trim();
        if expr.is_empty() {
            return Ok(Permissions::default());
        }
        let mut alternatives = Vec::new();
        for alt in expr.split('|') {
            let mut all = Vec::new();
            for name in alt.split('&').map(str::trim) {
                if !is_grant(name) {
                    return Err(format!("unknown permission {name:?}"));
                }
                all.push(name.to_string());
            }
            alternatives.push(all);
        }
        Ok(Permissions { alternatives })
    }

    /// Any one of these grants suffices (an operator rule's `permissions`).
    pub fn any_of(names: &[String]) -> Permissions {
        Permissions {
            alternatives: names.iter().map(|n| vec![n.clone()]).collect(),
        }
    }

    /// The alternatives: any one suffices, each needs all its grants.
    pub fn alternatives(&self) -> &[Vec<String>] {
        &self.alternatives
    }

    /// True when any verified token will do.
    pub fn is_open(&self) -> bool {
        self.alternatives.is_empty()
    }

    pub fn allows(&self, principal: &Principal) -> bool {
        self.is_open()
            || self
                .alternatives
                .iter()
                .any(|all| all.iter().all(|g| principal.has(g)))
    }

    /// The grants the expression names, each once, in order.
    pub fn grants(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for g in self.alternatives.iter().flatten() {
            if !out.contains(&g.as_str()) {
                out.push(g);
            }
        }
        out
    }
}

impl fmt::Display for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, all) in self.alternatives.iter().enumerate() {
            if i > 0 {
                f.write_str(" | ")?;
            }
            f.write_str(&all.join(" & "))?;
        }
        Ok(())
    }
}

/// Where an operation acts. `library` is `None` on rows whose path names none
/// (shares by code): the token's own library is used. `space` is `None` on rows
/// whose path names no space (library-level operations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope<'a> {
    pub library: &'a str,
    pub space: Option<&'a str>,
}

/// A space a request names outside its path (query or body). A `target` space
/// other than the path's needs `admin` (SMH's cross-space uncompress).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedSpace {
    pub space: String,
    pub target: bool,
}

/// What policy needs to know about one request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub scope: Scope<'a>,
    pub named_spaces: &'a [NamedSpace],
    pub permissions: &'a Permissions,
    pub user_id: Option<&'a str>,
}

fn covers(principal: &Principal, space: &str) -> bool {
    if principal.spaces.is_empty() {
        space == NO_SPACE
    } else {
        principal.spaces.iter().any(|s| s == space)
    }
}

pub fn authorize(
    libraries: &[LibraryConfig],
    principal: &Principal,
    req: &Request<'_>,
) -> Result<(), GatewayError> {
    let scope = req.scope;
    let listed = libraries.iter().find(|l| l.id == scope.library);
    if !libraries.is_empty() && listed.is_none() {
        return Err(GatewayError::LibraryNotFound);
    }
    if principal.library.as_deref() != Some(scope.library) {
        return Err(GatewayError::AccessTokenNotMatchLibrary);
    }
    if let (Some(library), Some(space)) = (listed, scope.space) {
        let no_space = space == NO_SPACE;
        if library.multi_tenant && no_space {
            return Err(GatewayError::EmptySpaceId);
        }
        if !library.multi_tenant && !no_space {
            return Err(GatewayError::NotMultiSpaceLibrary);
        }
    }
    let is_admin = principal.has(ADMIN);
    if !is_admin {
        let path_ok = scope.space.is_none_or(|s| covers(principal, s));
        if !path_ok || !req.named_spaces.iter().all(|n| covers(principal, &n.space)) {
            return Err(GatewayError::AccessTokenNotMatchSpace);
        }
    }
    if !req.permissions.allows(principal) {
        return Err(GatewayError::NoPermission);
    }
    let cross_space = req
        .named_spaces
        .iter()
        .any(|n| n.target && Some(n.space.as_str()) != scope.space);
    if cross_space && !is_admin {
        return Err(GatewayError::NoPermission);
    }
    if req.user_id.is_some() && !(is_admin && principal.user.is_none()) {
        return Err(GatewayError::UserIdNotAllowed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TrafficLimitBounds;

    fn renew() -> Permissions {
        Permissions::parse(
            "admin | space_admin | upload_file | upload_file_force | begin_upload | begin_upload_force",
        )
        .unwrap()
    }

    fn check(
        libraries: &[LibraryConfig],
        principal: &Principal,
        at: &(&str, &str),
        permissions: &Permissions,
        user_id: Option<&str>,
    ) -> Result<(), GatewayError> {
        authorize(
            libraries,
            principal,
            &Request {
                scope: Scope {
                    library: at.0,
                    space: Some(at.1),
                },
                named_spaces: &[],
                permissions,
                user_id,
            },
        )
    }

    fn lib(id: &str, multi_tenant: bool) -> LibraryConfig {
        LibraryConfig {
            id: id.into(),
            secret: None,
            multi_tenant,
            traffic_limit: TrafficLimitBounds {
                min: 1,
                max: 2,
                default: None,
            },
            rate_limits: Default::default(),
        }
    }

    fn who(perms: &[&str], spaces: &[&str], user: Option<&str>) -> Principal {
        Principal {
            library: Some("lib1".into()),
            spaces: spaces.iter().map(|s| s.to_string()).collect(),
            user: user.map(str::to_string),
            permissions: perms.iter().map(|s| s.to_string()).collect(),
            credential: None,
            ..Principal::default()
        }
    }

    fn at<'a>(library: &'a str, space: &'a str) -> (&'a str, &'a str) {
        (library, space)
    }

    #[test]
    fn each_renew_permission_suffices() {
        for p in renew().grants() {
            assert_eq!(
                check(&[], &who(&[p], &[], None), &at("lib1", "-"), &renew(), None),
                Ok(()),
                "{p}"
            );
        }
    }

    #[test]
    fn other_permissions_do_not() {
        for p in ["view", "upload_file_x", "confirm_upload", "Upload_File", ""] {
            let e = check(&[], &who(&[p], &[], None), &at("lib1", "-"), &renew(), None);
            assert_eq!(e, Err(GatewayError::NoPermission), "{p}");
        }
    }

    #[test]
    fn library_checks_come_first() {
        let libs = [lib("lib1", false)];
        let p = who(&["view"], &[], None);
        assert_eq!(
            check(&libs, &p, &at("lib2", "-"), &renew(), None),
            Err(GatewayError::LibraryNotFound)
        );
        let other = Principal {
            library: Some("lib2".into()),
            ..p.clone()
        };
        assert_eq!(
            check(&libs, &other, &at("lib1", "-"), &renew(), None),
            Err(GatewayError::AccessTokenNotMatchLibrary)
        );
        let none = Principal { library: None, ..p };
        assert_eq!(
            check(&[], &none, &at("lib1", "-"), &renew(), None),
            Err(GatewayError::AccessTokenNotMatchLibrary)
        );
    }

    #[test]
    fn tenant_mode_is_checked_before_space_scope() {
        let p = who(&["view"], &["s9"], None);
        assert_eq!(
            check(&[lib("lib1", false)], &p, &at("lib1", "s1"), &renew(), None),
            Err(GatewayError::NotMultiSpaceLibrary)
        );
        assert_eq!(
            check(&[lib("lib1", true)], &p, &at("lib1", "-"), &renew(), None),
            Err(GatewayError::EmptySpaceId)
        );
    }

    #[test]
    fn space_scope() {
        let libs = [lib("lib1", true)];
        let p = who(&["upload_file"], &["s1", "s2"], None);
        assert_eq!(check(&libs, &p, &at("lib1", "s2"), &renew(), None), Ok(()));
        assert_eq!(
            check(&libs, &p, &at("lib1", "s3"), &renew(), None),
            Err(GatewayError::AccessTokenNotMatchSpace)
        );
        let no_claim = who(&["upload_file"], &[], None);
        assert_eq!(
            check(&libs, &no_claim, &at("lib1", "s1"), &renew(), None),
            Err(GatewayError::AccessTokenNotMatchSpace)
        );
        assert_eq!(
            check(&[], &no_claim, &at("lib1", "-"), &renew(), None),
            Ok(())
        );
        let admin = who(&["admin"], &[], None);
        assert_eq!(
            check(&libs, &admin, &at("lib1", "s3"), &renew(), None),
            Ok(())
        );
    }

    #[test]
    fn space_scope_is_checked_before_permission() {
        let p = who(&["view"], &["s1"], None);
        assert_eq!(
            check(&[], &p, &at("lib1", "s2"), &renew(), None),
            Err(GatewayError::AccessTokenNotMatchSpace)
        );
    }

    #[test]
    fn user_id_only_for_admin_without_user() {
        let s = at("lib1", "-");
        assert_eq!(
            check(&[], &who(&["admin"], &[], None), &s, &renew(), Some("u1")),
            Ok(())
        );
        assert_eq!(
            check(
                &[],
                &who(&["admin"], &[], Some("me")),
                &s,
                &renew(),
                Some("u1")
            ),
            Err(GatewayError::UserIdNotAllowed)
        );
        assert_eq!(
            check(
                &[],
                &who(&["upload_file"], &[], None),
                &s,
                &renew(),
                Some("u1")
            ),
            Err(GatewayError::UserIdNotAllowed)
        );
        assert_eq!(
            check(
                &[],
                &who(&["space_admin"], &[], None),
                &s,
                &renew(),
                Some("u1")
            ),
            Err(GatewayError::UserIdNotAllowed)
        );
    }
}
