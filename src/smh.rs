//! Facts about SMH itself that several floors need (config validation, the route
//! table, policy): its grant names, the space id of a single-tenant library, and
//! what an id in a path may look like. Plain values only: this module knows nothing
//! of requests.

/// The space id SMH uses for a single-tenant library.
pub const NO_SPACE: &str = "-";

/// SMH's library-wide grant.
pub const ADMIN: &str = "admin";

/// Every grant SMH names (SMH-NOTES §2, SMH-ROUTES §T): the 24 of its token API's
/// enum, the ones other SDK comments name (`create_virtual`, `delete_history`,
/// `set_history_latest`, `read_only`) and `acl`. A route rule naming anything else
/// is a config error (a typo would otherwise lock a route for everyone).
pub const GRANTS: &[&str] = &[
    "admin",
    "create_space",
    "delete_space",
    "space_admin",
    "create_directory",
    "delete_directory",
    "delete_directory_permanent",
    "move_directory",
    "copy_directory",
    "upload_file",
    "upload_file_force",
    "begin_upload",
    "begin_upload_force",
    "confirm_upload",
    "create_symlink",
    "create_symlink_force",
    "delete_file",
    "delete_file_permanent",
    "move_file",
    "move_file_force",
    "copy_file",
    "copy_file_force",
    "delete_recycled",
    "restore_recycled",
    "create_virtual",
    "delete_history",
    "set_history_latest",
    "read_only",
    "acl",
];

pub fn is_grant(name: &str) -> bool {
    GRANTS.contains(&name)
}

/// An id the gateway accepts in a path segment or configuration (library, space,
/// confirm key, other ids): non-empty, no `/`, no `%` (a double-encoding attempt
/// such as `x%252F..` decodes to something still holding `%`), no control
/// character, not `.` or `..`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id != "."
        && id != ".."
        && !id.contains(['/', '%'])
        && !id.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(is_valid_id("lib-1_x"));
        assert!(is_valid_id("-"));
        for bad in ["", ".", "..", "a/b", "a\u{7f}", "a\nb", "x%2F", "%"] {
            assert!(!is_valid_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn grants_are_unique() {
        let mut g = GRANTS.to_vec();
        g.sort();
        g.dedup();
        assert_eq!(g.len(), GRANTS.len());
        assert!(is_grant("upload_file") && !is_grant("Upload_File"));
    }
}
