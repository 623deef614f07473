//! The route table: SMH's whole business API (SMH-ROUTES.md), one row per
//! operation, read top to bottom. A new operation is a new row; a rule that differs
//! for one operation is a column. The router (`route.rs`) and the pipeline
//! (`mod.rs`) are generic over these rows.
//!
//! Columns (builder calls after `row(name, method, path)`):
//! - `flag("x")`: the selector flag that picks this row among rows of the same method
//!   and path shape; rows of one shape are listed in SMH-ROUTES.md Q3's order, which
//!   is the order flags are checked in. No flag: the row of its shape when no sibling's
//!   flag is present.
//! - `body_key("copyFrom")`: a flag-less row told apart from its siblings by a
//!   top-level key of its JSON body (`dispatch` marks the sibling that takes any
//!   other body).
//! - `params(&[..])`: the query parameters forwarded besides `access_token`,
//!   `user_id` (unless `no_user_id`) and `traffic_limit` (only with `traffic_limit`).
//! - `json()` / `json_array()`: the body is JSON, read (within `server.max_body_bytes`),
//!   checked (no repeated key) and forwarded byte for byte. Otherwise a body is read
//!   and not forwarded.
//! - `stated(expr)`: the grants SMH states; `read()`: SMH states none and the row
//!   reads (any verified token of the library and space); `write(grant)`: SMH states
//!   none and the row writes (`admin`, `space_admin` or the grant named after it);
//!   `smh_checks(..)`: SMH checks something the gateway cannot see (the share's
//!   creator), so the gateway asks only for a token of the library.
//! - `permanent(expr)`: the grants when `permanent=1` is sent (deletes).
//! - `spaces(&[..])`: spaces named in the query or body, checked like the path's.
//! - `public()`: no token (SMH serves it to anyone); `share_token()`: the token is a
//!   share token SMH issued (verifyExtractionCode), forwarded as sent, not a JWT.
//! - `renew_cache()` / `invalidates()`: the renew cache's rows.

use crate::proxy::routes::Method::*;

/// The methods SMH's API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
}

impl Method {
    pub const ALL: [Method; 5] = [Get, Head, Post, Put, Delete];

    pub fn as_str(self) -> &'static str {
        match self {
            Get => "GET",
            Head => "HEAD",
            Post => "POST",
            Put => "PUT",
            Delete => "DELETE",
        }
    }

    pub fn parse(s: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.as_str() == s)
    }

    pub fn http(self) -> http::Method {
        match self {
            Get => http::Method::GET,
            Head => http::Method::HEAD,
            Post => http::Method::POST,
            Put => http::Method::PUT,
            Delete => http::Method::DELETE,
        }
    }
}

/// How a request body is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyPolicy {
    /// No body expected: one sent anyway is read (bounded) and not forwarded.
    None,
    /// A JSON object (or empty), checked and forwarded byte for byte.
    Json,
    /// A JSON array (SMH's batch calls), checked and forwarded byte for byte.
    JsonArray,
}

/// Who vouches for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthPolicy {
    /// A JWT the gateway verifies (SPEC §2).
    Token,
    /// SMH serves it without a token; no access_token is forwarded.
    Public,
    /// A share access token SMH issued; required, forwarded as sent.
    ShareToken,
}

/// Where a row's permissions come from (the README lists every row's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantSource {
    /// SMH states them.
    Stated,
    /// SMH states none; a read needs only a valid token (SPEC §11).
    ReadRule,
    /// SMH states none; a write needs admin, space_admin or its named grant.
    WriteRule,
    /// SMH checks what the gateway cannot see (a share's creator).
    SmhChecks,
    /// SMH-ROUTES lists none: a public operation, or a share token's.
    None,
}

/// A space named outside the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpaceField {
    /// A query parameter (`space_id`).
    Query(&'static str),
    /// A top-level string field of the JSON body (`copyFromSpaceId`).
    Body(&'static str),
    /// A top-level field holding an array of space ids (`spaces`).
    BodyList(&'static str),
    /// A string field of each item of a JSON array body (batch calls).
    Items(&'static str),
    /// The target of the operation: another space than the path's needs `admin`.
    Target(&'static str),
}

impl SpaceField {
    pub fn name(self) -> &'static str {
        match self {
            SpaceField::Query(n)
            | SpaceField::Body(n)
            | SpaceField::BodyList(n)
            | SpaceField::Items(n)
            | SpaceField::Target(n) => n,
        }
    }
}

/// The row's part in the renew cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheRole {
    None,
    /// Answers are cached and coalesced (renew).
    Renew,
    /// Drops the upload's renew entries (confirm, cancel).
    Invalidate,
}

/// One operation.
#[derive(Debug, Clone, Copy)]
pub struct RouteSpec {
    pub name: &'static str,
    pub method: Method,
    pub path: &'static str,
    pub flag: Option<&'static str>,
    pub body_key: Option<&'static str>,
    /// A flag-less row that takes bodies with none of its siblings' keys.
    pub dispatch_default: bool,
    pub params: &'static [&'static str],
    pub body: BodyPolicy,
    pub auth: AuthPolicy,
    pub permissions: &'static str,
    pub permanent: Option<&'static str>,
    pub source: GrantSource,
    pub user_id: bool,
    pub traffic_limit: bool,
    pub spaces: &'static [SpaceField],
    pub cache: CacheRole,
}

const fn row(name: &'static str, method: Method, path: &'static str) -> RouteSpec {
    RouteSpec {
        name,
        method,
        path,
        flag: None,
        body_key: None,
        dispatch_default: false,
        params: &[],
        body: BodyPolicy::None,
        auth: AuthPolicy::Token,
        permissions: "",
        permanent: None,
        source: GrantSource::ReadRule,
        user_id: true,
        traffic_limit: false,
        spaces: &[],
        cache: CacheRole::None,
    }
}

impl RouteSpec {
    const fn flag(mut self, flag: &'static str) -> Self {
        self.flag = Some(flag);
        self
    }
    const fn body_key(mut self, key: &'static str) -> Self {
        self.body_key = Some(key);
        self.body = BodyPolicy::Json;
        self
    }
    const fn dispatch(mut self) -> Self {
        self.dispatch_default = true;
        self.body = BodyPolicy::Json;
        self
    }
    const fn params(mut self, params: &'static [&'static str]) -> Self {
        self.params = params;
        self
    }
    const fn json(mut self) -> Self {
        self.body = BodyPolicy::Json;
        self
    }
    const fn json_array(mut self) -> Self {
        self.body = BodyPolicy::JsonArray;
        self
    }
    const fn stated(mut self, permissions: &'static str) -> Self {
        self.permissions = permissions;
        self.source = GrantSource::Stated;
        self
    }
    const fn read(mut self) -> Self {
        self.permissions = "";
        self.source = GrantSource::ReadRule;
        self
    }
    const fn write(mut self, permissions: &'static str) -> Self {
        self.permissions = permissions;
        self.source = GrantSource::WriteRule;
        self
    }
    const fn smh_checks(mut self) -> Self {
        self.permissions = "";
        self.source = GrantSource::SmhChecks;
        self
    }
    const fn permanent(mut self, permissions: &'static str) -> Self {
        self.permanent = Some(permissions);
        self
    }
    const fn no_user_id(mut self) -> Self {
        self.user_id = false;
        self
    }
    const fn traffic_limit(mut self) -> Self {
        self.traffic_limit = true;
        self
    }
    const fn spaces(mut self, spaces: &'static [SpaceField]) -> Self {
        self.spaces = spaces;
        self
    }
    const fn public(mut self) -> Self {
        self.auth = AuthPolicy::Public;
        self.source = GrantSource::None;
        self.user_id = false;
        self
    }
    const fn share_token(mut self) -> Self {
        self.auth = AuthPolicy::ShareToken;
        self.source = GrantSource::None;
        self.user_id = false;
        self
    }
    const fn renew_cache(mut self) -> Self {
        self.cache = CacheRole::Renew;
        self
    }
    const fn invalidates(mut self) -> Self {
        self.cache = CacheRole::Invalidate;
        self
    }
}

/// SMH's upload grants (renew, begin, status, cancel).
const UPLOAD: &str =
    "admin | space_admin | upload_file | upload_file_force | begin_upload | begin_upload_force";
const ADMINS: &str = "admin | space_admin";
const CRS: &str = "conflict_resolution_strategy";

const FILE_KEY: &str = "/api/v1/file/{library}/{space}/{key}";
const FILE: &str = "/api/v1/file/{library}/{space}/{path}";
const DIR: &str = "/api/v1/directory/{library}/{space}/{path}";
const BATCH: &str = "/api/v1/batch/{library}/{space}";
const BIN: &str = "/api/v1/recycled/{library}/{space}";
const BIN_ITEM: &str = "/api/v1/recycled/{library}/{space}/{id}";
const HLS_KEY: &str = "/api/v1/hls/{library}/{space}/{key}";
const HLS: &str = "/api/v1/hls/{library}/{space}/{path}";
const SHARE_CODE: &str = "/api/v1/share/file/{id}/{path}";

/// Every operation. Within one method and path shape, rows are in the order their
/// flags are checked (SMH-ROUTES.md Q3).
pub static ROUTES: &[RouteSpec] = &[
    // ---- file: /api/v1/file/{library}/{space}/{ConfirmKey or FilePath} ----
    // POST: confirm, renew, multipart, uncompress, then form upload (no flag).
    row("complete_file_upload", Post, FILE_KEY)
        .flag("confirm")
        .params(&[CRS, "content_cas", "with_inode", "with_content_cas"])
        .json()
        .stated("admin | space_admin | upload_file | upload_file_force | confirm_upload")
        .invalidates(),
    row("renew", Post, FILE_KEY)
        .flag("renew")
        .params(&["internal_domain"])
        .traffic_limit()
        .stated(UPLOAD)
        .renew_cache(),
    row("multipart_upload_file", Post, FILE)
        .flag("multipart")
        .params(&[CRS, "content_cas", "filesize", "prefer_same_origin", "with_content_cas", "internal_domain"])
        .traffic_limit()
        .json()
        .stated(UPLOAD),
    row("uncompress_file", Post, FILE)
        .flag("uncompress")
        .params(&[CRS])
        .json()
        .spaces(&[SpaceField::Target("targetSpaceId")])
        .stated("admin | space_admin | read_only & upload_file"),
    row("form_upload_file", Post, FILE)
        .params(&[CRS, "content_cas", "filesize", "prefer_same_origin", "with_content_cas", "internal_domain"])
        .traffic_limit()
        .json()
        .stated(UPLOAD),
    // GET: upload (status), info, zip-preview, preview, transcoding, then download.
    row("get_file_upload", Get, FILE_KEY)
        .flag("upload")
        .params(&["internal_domain"])
        .stated(UPLOAD),
    row("info_file", Get, FILE)
        .flag("info")
        .params(&[
            "history_id", "content_disposition", "purpose", "pre_check", "content_cas",
            "with_content_cas", "internal_domain", "with_short_link", "period", "preview",
            "with_favorite_status",
        ])
        .traffic_limit()
        .stated(""),
    row("preview_zip_file", Get, FILE)
        .flag("zip-preview")
        .params(&["format", "password"])
        .stated(ADMINS),
    // getCover and previewFile are one route: identical on the wire.
    row("get_cover", Get, FILE)
        .flag("preview")
        .params(&["size", "scale", "width_size", "height_size", "frame_number", "type", "history_id"])
        .read(),
    row("download_transcoded_video", Get, FILE)
        .flag("transcoding_template_id")
        .params(&["transcoding_template_id"])
        .no_user_id()
        .read(),
    row("download_file", Get, FILE)
        .params(&["history_id", "content_disposition", "purpose", "content_cas", "with_content_cas", "internal_domain"])
        .traffic_limit()
        .read(),
    row("check_file_status", Head, FILE).params(&["history_id"]).read(),
    // PUT: convert, virtual file, then the flag-less four told apart by body keys.
    row("convert_file", Put, FILE)
        .flag("convert")
        .params(&[CRS])
        .json()
        .stated(ADMINS),
    row("create_virtual_file", Put, FILE)
        .flag("virtual_file")
        .params(&[CRS])
        .json()
        .stated("admin | space_admin | upload_file | upload_file_force | create_virtual"),
    row("copy_file", Put, FILE)
        .body_key("copyFrom")
        .params(&[CRS, "content_cas", "with_content_cas"])
        .spaces(&[SpaceField::Body("copyFromSpaceId")])
        .stated("admin | space_admin | copy_file | copy_file_force"),
    row("move_file", Put, FILE)
        .body_key("from")
        .params(&[CRS, "content_cas", "with_content_cas"])
        .spaces(&[SpaceField::Body("fromSpaceId")])
        .stated("admin | space_admin | move_file | move_file_force"),
    row("create_symlink", Put, FILE)
        .body_key("linkTo")
        .params(&[CRS])
        .stated("admin | space_admin | upload_file | upload_file_force | create_symlink | create_symlink_force"),
    row("simple_upload_file", Put, FILE)
        .dispatch()
        .params(&[CRS, "content_cas", "filesize", "prefer_same_origin", "with_content_cas", "internal_domain"])
        .traffic_limit()
        .stated(UPLOAD),
    // DELETE: upload (cancel), then delete.
    row("abort_file_upload", Delete, FILE_KEY)
        .flag("upload")
        .stated(UPLOAD)
        .invalidates(),
    row("delete_file", Delete, FILE)
        .params(&["permanent", "content_cas"])
        .stated("admin | space_admin | delete_file")
        .permanent("admin | space_admin | delete_file_permanent"),
    // ---- file operations under their own prefixes ----
    row("check_file_deletion", Get, "/api/v1/file-deletion-check/{library}/{space}/{id}")
        .no_user_id()
        .stated(ADMINS),
    row("get_file_info_by_inode", Get, "/api/v1/inode/{library}/{space}/{id}")
        .params(&["with_content_cas"])
        .no_user_id()
        .read(),
    row("get_delta_cursor", Get, "/api/v1/fs-delta/{library}/{space}/cursor").read(),
    row("query_delta_log", Get, "/api/v1/fs-delta/{library}/{space}/delta")
        .params(&["cursor", "limit"])
        .read(),
    row("office_edit", Get, "/api/v1/office/{library}/{space}/edit/{path}")
        .params(&["lang"])
        .read(),
    // ---- directory: /api/v1/directory/{library}/{space}/{FilePath} ----
    row("info_file_or_directory", Get, DIR)
        .flag("info")
        .params(&["with_inode", "with_favorite_status", "with_content_cas"])
        .no_user_id()
        .read(),
    row("get_directory_stats", Get, DIR)
        .flag("stats")
        .params(&["stats_type", "recycled_id"])
        .read(),
    row("list_directory", Get, DIR)
        .flag("by-marker")
        .params(&[
            "marker", "limit", "order_by", "order_by_type", "filter", "prefix", "start_name",
            "sort_type", "with_inode", "with_favorite_status", "with_content_cas",
        ])
        .read(),
    row("list_directory_by_page", Get, DIR)
        .flag("by-page")
        .params(&[
            "page", "page_size", "order_by", "order_by_type", "filter", "sort_type", "with_inode",
            "with_favorite_status", "with_content_cas",
        ])
        .read(),
    row("check_directory_status", Head, DIR).read(),
    row("calibrate_directory_stats", Put, DIR)
        .flag("calibrate")
        .params(&["stats_type", "recycled_id"])
        .stated(ADMINS),
    row("copy_directory", Put, DIR)
        .body_key("copyFrom")
        .params(&[CRS])
        .spaces(&[SpaceField::Body("copyFromSpaceId")])
        .write("admin | space_admin | copy_directory"),
    row("move_directory", Put, DIR)
        .body_key("from")
        .params(&[CRS])
        .spaces(&[SpaceField::Body("fromSpaceId")])
        .stated("admin | space_admin | move_directory"),
    row("create_directory", Put, DIR)
        .dispatch()
        .params(&[CRS, "with_inode"])
        .stated("admin | space_admin | create_directory"),
    // updateDirectoryLabels and updateFileLabels are one route: identical on the wire.
    row("update_directory_labels", Post, DIR)
        .flag("update")
        .json()
        .no_user_id()
        .stated(ADMINS),
    row("delete_directory", Delete, DIR)
        .params(&["permanent", "directory_only"])
        .write("admin | space_admin | delete_directory")
        .permanent("admin | space_admin | delete_directory_permanent"),
    // ---- batch: JSON arrays of items ----
    row("batch_copy", Post, BATCH)
        .flag("copy")
        .json_array()
        .spaces(&[SpaceField::Items("copyFromSpaceId")])
        .write(ADMINS),
    row("batch_move", Post, BATCH)
        .flag("move")
        .json_array()
        .spaces(&[SpaceField::Items("fromSpaceId")])
        .write(ADMINS),
    row("batch_delete", Post, BATCH).flag("delete").json_array().write(ADMINS),
    // ---- recycle bin ----
    row("recycle_list", Get, BIN)
        .flag("by-marker")
        .params(&["marker", "limit", "order_by", "order_by_type"])
        .read(),
    row("recycle_list_by_page", Get, BIN)
        .flag("by-page")
        .params(&["page", "page_size", "order_by", "order_by_type"])
        .read(),
    row("recycle_info", Get, BIN_ITEM)
        .flag("info")
        .params(&["internal_domain"])
        .no_user_id()
        .read(),
    row("recycle_preview", Get, BIN_ITEM)
        .flag("preview")
        .params(&["type", "size", "scale", "width_size", "height_size", "frame_number", "internal_domain"])
        .no_user_id()
        .read(),
    row("recycle_purge_batch", Post, BIN)
        .flag("delete")
        .json_array()
        .stated("admin | space_admin | delete_recycled"),
    row("recycle_restore_batch", Post, BIN)
        .flag("restore")
        .params(&["restore_path_strategy"])
        .json_array()
        .stated("admin | space_admin | restore_recycled"),
    row("recycle_set_lifecycle", Post, BIN)
        .flag("lifecycle")
        .json()
        .no_user_id()
        .write(ADMINS),
    row("recycle_restore", Post, BIN_ITEM)
        .flag("restore")
        .params(&[CRS, "restore_path_strategy"])
        .stated("admin | space_admin | restore_recycled"),
    row("recycle_empty", Delete, BIN).stated("admin | space_admin | delete_recycled"),
    row("recycle_purge", Delete, BIN_ITEM).stated("admin | space_admin | delete_recycled"),
    // ---- spaces ----
    row("create_space", Post, "/api/v1/space/{library}")
        .params(&["space_id"])
        .json()
        .spaces(&[SpaceField::Query("space_id")])
        .stated("admin | create_space"),
    row("get_library_space_count", Get, "/api/v1/space/{library}/count").read(),
    row("list_space", Get, "/api/v1/space/{library}/list")
        .params(&["marker", "limit", "ordered", "prefix", "start_name"])
        .read(),
    row("delete_space", Delete, "/api/v1/space/{library}/{space}")
        .params(&["force"])
        .stated("admin | delete_space"),
    row("get_contents_view", Get, "/api/v1/space/{library}/{space}/contents-view")
        .params(&["marker", "limit", "order_by", "order_by_type", "filter", "with_path", "category"])
        .stated("admin | space_admin | read_only"),
    row("get_file_count_in_space", Get, "/api/v1/space/{library}/{space}/file-count")
        .no_user_id()
        .stated(ADMINS),
    row("get_space_extension", Get, "/api/v1/space/{library}/{space}/extension").read(),
    row("get_space_size", Get, "/api/v1/space/{library}/{space}/size").read(),
    row("set_space_traffic_limit", Post, "/api/v1/space/{library}/{space}/traffic-limit")
        .json()
        .no_user_id()
        .stated(ADMINS),
    row("update_space_extension", Post, "/api/v1/space/{library}/{space}/extension")
        .json()
        .stated(ADMINS),
    // ---- quotas: a SpaceId and a QuotaId are the same segment; checked as a space ----
    row("create_quota", Post, "/api/v1/quota/{library}")
        .json()
        .spaces(&[SpaceField::BodyList("spaces")])
        .write(ADMINS),
    // getQuota and getQuotaInfo are one route, as are updateQuota and updateQuotaById.
    row("get_quota", Get, "/api/v1/quota/{library}/{space}").read(),
    row("update_quota", Put, "/api/v1/quota/{library}/{space}")
        .json()
        .spaces(&[SpaceField::BodyList("spaces")])
        .write(ADMINS),
    row("get_space_quota", Get, "/api/v1/space-quota/{library}/{space}").read(),
    // ---- usage ----
    row("get_library_usage", Get, "/api/v1/usage/{library}").stated("admin"),
    row("get_usage", Get, "/api/v1/usage/{library}/{spaces}").stated(ADMINS),
    // ---- search (reads by POST) ----
    row("search_ai", Post, "/api/v1/search/{library}/{space}/search-ai")
        .params(&["limit"])
        .json()
        .read(),
    row("search_fs", Post, "/api/v1/search/{library}/{space}/search-fs")
        .params(&["marker", "limit", "with_favorite_status", "with_inode"])
        .json()
        .read(),
    row("search_fs_stats", Post, "/api/v1/search/{library}/{space}/search-fs-stats")
        .json()
        .read(),
    // ---- history ----
    row("get_history_config", Get, "/api/v1/directory-history/{library}/library-history")
        .no_user_id()
        .stated("admin"),
    row("set_history_config", Post, "/api/v1/directory-history/{library}/library-history")
        .json()
        .no_user_id()
        .stated("admin"),
    row("empty_history", Delete, "/api/v1/directory-history/{library}/library-history")
        .no_user_id()
        .stated("admin"),
    row("delete_history", Post, "/api/v1/directory-history/{library}/{space}/delete")
        .json_array()
        .no_user_id()
        .stated("admin | space_admin | delete_history"),
    row("list_history", Get, "/api/v1/directory-history/{library}/{space}/history-list/{path}")
        .params(&["marker", "limit", "page", "page_size", "order_by", "order_by_type"])
        .no_user_id()
        .read(),
    row("set_history_latest", Post, "/api/v1/directory-history/{library}/{space}/latest-version/{id}")
        .no_user_id()
        .stated("admin | space_admin | set_history_latest"),
    // ---- favorites and recent files ----
    row("delete_favorite", Post, "/api/v1/favorite/{library}/{space}")
        .flag("cancel")
        .json()
        .no_user_id()
        .write(ADMINS),
    row("create_favorite", Post, "/api/v1/favorite/{library}/{space}")
        .json()
        .no_user_id()
        .write(ADMINS),
    row("list_favorite", Get, "/api/v1/favorite/{library}/{space}/list")
        .params(&["marker", "limit", "page", "page_size", "order_by", "order_by_type", "with_path"])
        .no_user_id()
        .read(),
    row("list_recently_used_file", Post, "/api/v1/recent/{library}/{space}/recently-used-file")
        .json()
        .no_user_id()
        .read(),
    // ---- shares: literals (`file`, `verify`, `url-detail`, `list`, `search`) win ----
    row("get_share_url_detail", Get, "/api/v1/share/url-detail/{id}").public(),
    row("verify_extraction_code", Post, "/api/v1/share/verify/{id}")
        .json()
        .public(),
    row("download_share_file", Get, SHARE_CODE)
        .flag("download")
        .params(&["internal_domain"])
        .share_token(),
    row("list_share_files", Get, SHARE_CODE)
        .flag("list")
        .params(&["limit", "marker", "orderBy", "orderByType"])
        .share_token(),
    row("preview_share_file", Get, SHARE_CODE)
        .flag("preview")
        .params(&["internal_domain"])
        .share_token(),
    row("save_share_file", Post, "/api/v1/share/file/{id}")
        .flag("save")
        .json()
        .no_user_id()
        .spaces(&[SpaceField::Body("targetSpaceId")])
        .stated("admin | space_admin | upload_file | upload_file_force"),
    row("list_shares", Get, "/api/v1/share/{library}/list")
        .params(&["limit", "marker", "orderBy", "orderByType", "creatorId", "with_file_info"])
        .no_user_id()
        .smh_checks(),
    row("search_shares", Post, "/api/v1/share/{library}/search")
        .params(&["limit", "marker"])
        .json()
        .no_user_id()
        .stated("admin"),
    row("get_share_detail", Get, "/api/v1/share/{library}/{id}")
        .flag("detail")
        .params(&["with_file_info"])
        .no_user_id()
        .smh_checks(),
    row("set_share_enabled", Post, "/api/v1/share/{library}/{id}")
        .flag("setEnabled")
        .json()
        .no_user_id()
        .smh_checks(),
    row("update_share", Post, "/api/v1/share/{library}/{id}")
        .flag("update")
        .json()
        .no_user_id()
        .smh_checks(),
    row("create_share", Post, "/api/v1/share/{library}/{space}")
        .json()
        .no_user_id()
        .write(ADMINS),
    row("delete_share", Delete, "/api/v1/share/{library}/{id}")
        .no_user_id()
        .smh_checks(),
    // ---- tasks ----
    row("query_library_task", Get, "/api/v1/task/{library}/{id}").read(),
    row("query_task", Get, "/api/v1/task/{library}/{space}/{id}").read(),
    row("query_library_task_v2", Get, "/api/v1/task-result/{library}/{id}").read(),
    row("query_task_v2", Get, "/api/v1/task-result/{library}/{space}/{id}").read(),
    // ---- HLS (m3u8) uploads: same flag names as /file/, JSON bodies ----
    row("get_media_file_info", Get, HLS).flag("info").read(),
    row("live_transcode_media_file", Get, HLS)
        .flag("live_transcode")
        .params(&["transcoding_template_id"])
        .stated(ADMINS),
    row("confirm_m3u8_upload", Post, HLS_KEY)
        .flag("confirm")
        .json()
        .no_user_id()
        .stated(ADMINS),
    row("modify_m3u8_segments", Post, HLS_KEY)
        .flag("modify")
        .json()
        .no_user_id()
        .traffic_limit()
        .stated(ADMINS),
    row("renew_m3u8_upload", Post, HLS_KEY)
        .flag("renew")
        .json()
        .no_user_id()
        .traffic_limit()
        .stated(ADMINS),
    row("create_transcode_task", Post, HLS)
        .flag("transcode")
        .json()
        .no_user_id()
        .stated(ADMINS),
    row("prepare_m3u8_upload", Put, HLS)
        .params(&[CRS])
        .json()
        .no_user_id()
        .traffic_limit()
        .stated(ADMINS),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::policy::Permissions;
    use crate::template::Template;

    #[test]
    fn every_row_parses() {
        for r in ROUTES {
            Template::parse(r.path).unwrap_or_else(|e| panic!("{}: {e}", r.name));
            Permissions::parse(r.permissions).unwrap_or_else(|e| panic!("{}: {e}", r.name));
            if let Some(p) = r.permanent {
                Permissions::parse(p).unwrap_or_else(|e| panic!("{}: {e}", r.name));
            }
        }
    }

    #[test]
    fn names_are_unique_snake_case() {
        let mut names: Vec<_> = ROUTES.iter().map(|r| r.name).collect();
        assert!(names.iter().all(|n| {
            n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        }));
        names.sort();
        let len = names.len();
        names.dedup();
        assert_eq!(names.len(), len, "duplicate route names");
    }

    /// SMH's 110 operations: the token group's four are not rows (SPEC §11), and
    /// four pairs identical on the wire are one row each.
    #[test]
    fn the_table_covers_the_api() {
        assert_eq!(ROUTES.len(), 110 - 4 - 4);
    }
}
