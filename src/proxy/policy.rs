//! Phase 3, policy: may this principal do this operation here? Pure: a verified
//! [`Principal`], the operation's [`Scope`] and its required permissions in, allowed
//! or the first failing check out, in SPEC §3's order:
//! library listed (404) → library match (403) → tenant mode (400) → space scope
//! (403) → permission (403) → user_id (403).

use crate::config::LibraryConfig;
use crate::error::GatewayError;
use crate::proxy::auth::Principal;
use crate::proxy::route::{NO_SPACE, Scope};

/// SMH's library-wide grant.
pub const ADMIN: &str = "admin";

pub fn authorize(
    libraries: &[LibraryConfig],
    principal: &Principal,
    scope: &Scope,
    required: &[&str],
    user_id: Option<&str>,
) -> Result<(), GatewayError> {
    let listed = libraries.iter().find(|l| l.id == scope.library);
    if !libraries.is_empty() && listed.is_none() {
        return Err(GatewayError::LibraryNotFound);
    }
    if principal.library.as_deref() != Some(scope.library.as_str()) {
        return Err(GatewayError::AccessTokenNotMatchLibrary);
    }
    if let Some(library) = listed {
        let no_space = scope.space == NO_SPACE;
        if library.multi_tenant && no_space {
            return Err(GatewayError::EmptySpaceId);
        }
        if !library.multi_tenant && !no_space {
            return Err(GatewayError::NotMultiSpaceLibrary);
        }
    }
    let is_admin = principal.has(ADMIN);
    if !is_admin {
        let covered = if principal.spaces.is_empty() {
            scope.space == NO_SPACE
        } else {
            principal.spaces.contains(&scope.space)
        };
        if !covered {
            return Err(GatewayError::AccessTokenNotMatchSpace);
        }
    }
    if !required.iter().any(|p| principal.has(p)) {
        return Err(GatewayError::NoPermission);
    }
    if user_id.is_some() && !(is_admin && principal.user.is_none()) {
        return Err(GatewayError::UserIdNotAllowed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TrafficLimitBounds;
    use crate::proxy::route::RouteName;

    const RENEW: &[&str] = RouteName::Renew.permissions();

    fn lib(id: &str, multi_tenant: bool) -> LibraryConfig {
        LibraryConfig {
            id: id.into(),
            multi_tenant,
            traffic_limit: TrafficLimitBounds {
                min: 1,
                max: 2,
                default: None,
            },
        }
    }

    fn who(perms: &[&str], spaces: &[&str], user: Option<&str>) -> Principal {
        Principal {
            library: Some("lib1".into()),
            spaces: spaces.iter().map(|s| s.to_string()).collect(),
            user: user.map(str::to_string),
            permissions: perms.iter().map(|s| s.to_string()).collect(),
            credential: None,
        }
    }

    fn at(library: &str, space: &str) -> Scope {
        Scope {
            library: library.into(),
            space: space.into(),
        }
    }

    #[test]
    fn each_renew_permission_suffices() {
        for p in RENEW {
            assert_eq!(
                authorize(&[], &who(&[p], &[], None), &at("lib1", "-"), RENEW, None),
                Ok(()),
                "{p}"
            );
        }
    }

    #[test]
    fn other_permissions_do_not() {
        for p in ["view", "upload_file_x", "confirm_upload", "Upload_File", ""] {
            let e = authorize(&[], &who(&[p], &[], None), &at("lib1", "-"), RENEW, None);
            assert_eq!(e, Err(GatewayError::NoPermission), "{p}");
        }
    }

    #[test]
    fn library_checks_come_first() {
        let libs = [lib("lib1", false)];
        let p = who(&["view"], &[], None);
        assert_eq!(
            authorize(&libs, &p, &at("lib2", "-"), RENEW, None),
            Err(GatewayError::LibraryNotFound)
        );
        let other = Principal {
            library: Some("lib2".into()),
            ..p.clone()
        };
        assert_eq!(
            authorize(&libs, &other, &at("lib1", "-"), RENEW, None),
            Err(GatewayError::AccessTokenNotMatchLibrary)
        );
        let none = Principal { library: None, ..p };
        assert_eq!(
            authorize(&[], &none, &at("lib1", "-"), RENEW, None),
            Err(GatewayError::AccessTokenNotMatchLibrary)
        );
    }

    #[test]
    fn tenant_mode_is_checked_before_space_scope() {
        let p = who(&["view"], &["s9"], None);
        assert_eq!(
            authorize(&[lib("lib1", false)], &p, &at("lib1", "s1"), RENEW, None),
            Err(GatewayError::NotMultiSpaceLibrary)
        );
        assert_eq!(
            authorize(&[lib("lib1", true)], &p, &at("lib1", "-"), RENEW, None),
            Err(GatewayError::EmptySpaceId)
        );
    }

    #[test]
    fn space_scope() {
        let libs = [lib("lib1", true)];
        let p = who(&["upload_file"], &["s1", "s2"], None);
        assert_eq!(authorize(&libs, &p, &at("lib1", "s2"), RENEW, None), Ok(()));
        assert_eq!(
            authorize(&libs, &p, &at("lib1", "s3"), RENEW, None),
            Err(GatewayError::AccessTokenNotMatchSpace)
        );
        let no_claim = who(&["upload_file"], &[], None);
        assert_eq!(
            authorize(&libs, &no_claim, &at("lib1", "s1"), RENEW, None),
            Err(GatewayError::AccessTokenNotMatchSpace)
        );
        assert_eq!(
            authorize(&[], &no_claim, &at("lib1", "-"), RENEW, None),
            Ok(())
        );
        let admin = who(&["admin"], &[], None);
        assert_eq!(
            authorize(&libs, &admin, &at("lib1", "s3"), RENEW, None),
            Ok(())
        );
    }

    #[test]
    fn space_scope_is_checked_before_permission() {
        let p = who(&["view"], &["s1"], None);
        assert_eq!(
            authorize(&[], &p, &at("lib1", "s2"), RENEW, None),
            Err(GatewayError::AccessTokenNotMatchSpace)
        );
    }

    #[test]
    fn user_id_only_for_admin_without_user() {
        let s = at("lib1", "-");
        assert_eq!(
            authorize(&[], &who(&["admin"], &[], None), &s, RENEW, Some("u1")),
            Ok(())
        );
        assert_eq!(
            authorize(
                &[],
                &who(&["admin"], &[], Some("me")),
                &s,
                RENEW,
                Some("u1")
            ),
            Err(GatewayError::UserIdNotAllowed)
        );
        assert_eq!(
            authorize(
                &[],
                &who(&["upload_file"], &[], None),
                &s,
                RENEW,
                Some("u1")
            ),
            Err(GatewayError::UserIdNotAllowed)
        );
        assert_eq!(
            authorize(
                &[],
                &who(&["space_admin"], &[], None),
                &s,
                RENEW,
                Some("u1")
            ),
            Err(GatewayError::UserIdNotAllowed)
        );
    }
}
