//! The mock's SMH state machine: uploads, directories and files in memory, and
//! SMH's answers to the routes of `SMH-ROUTES.md` §A and §B that the upload and
//! download flows of Q1 use. Everything is keyed by (library, space, decoded path
//! or confirm key), so libraries and spaces never see each other's files.
//!
//! Upload states: begin records a pending upload under a deterministic confirm key
//! ([`confirm_key_for`]); confirm turns it into a file, cancel ends it. A renew of a
//! key the mock never issued answers 200 anyway: the gateway's tests and benchmarks
//! renew made-up keys.

mod answers;
mod request;
pub(super) mod tokens;

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::Received;
pub(super) use answers::json_response;
use answers::{
    DOMAIN, conflict, cos_headers, cos_path, cos_task, cos_url, dir_json, empty, file_fields,
    file_json, in_an_hour, json, mock_ok, not_found, now, path_answer, put_headers, smh_error,
    upload_id,
};
use request::{
    Call, Query, content_type, decode, json_fields, name, normalize, parent, prefixes, segments,
};

/// The confirm key the mock issues when an upload of `file_path` begins:
/// `ck-` and the first 16 hex digits of SHA-256 over `library \0 space \0 path`,
/// where path is `file_path` without empty components (`/docs/a.bin` and
/// `docs/a.bin` are the same file). Deterministic, so a demo can print it.
pub fn confirm_key_for(library: &str, space: &str, file_path: &str) -> String {
    let path = normalize(file_path);
    let mut h = Sha256::new();
    for (i, part) in [library, space, path.as_str()].into_iter().enumerate() {
        if i > 0 {
            h.update([0u8]);
        }
        h.update(part.as_bytes());
    }
    format!("ck-{}", &hex(&h.finalize())[..16])
}

/// (library, space, decoded path or confirm key).
type Key = (String, String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Multipart,
    Simple,
    Form,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Multipart => "multipart",
            Kind::Simple => "simple",
            Kind::Form => "form",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Pending,
    Confirmed,
    Cancelled,
}

/// An upload the mock issued a confirm key for.
#[derive(Debug)]
struct Upload {
    kind: Kind,
    stage: Stage,
    path: String,
    size: u64,
    beginning_hash: Option<String>,
    full_hash: Option<String>,
    /// `conflict_resolution_strategy` at begin (SMH's default: rename); echoed only.
    strategy: String,
    traffic_limit: Option<u64>,
    creation_time: String,
    expiration: String,
}

/// A confirmed file: metadata only, the bytes went to (a fake) COS.
#[derive(Debug, Clone)]
struct File {
    size: u64,
    content_type: &'static str,
    etag: String,
    crc64: String,
    beginning_hash: Option<String>,
    full_hash: Option<String>,
    creation_time: String,
    modification_time: String,
}

/// The state behind a mock upstream.
#[derive(Debug)]
pub(super) struct MockSmh {
    /// The root directory's creation time.
    started: String,
    uploads: HashMap<Key, Upload>,
    files: BTreeMap<Key, File>,
    /// Directories other than the root (which always exists), with creation time.
    dirs: BTreeMap<Key, String>,
    /// The token API, and the check of tokens once library secrets are set.
    pub(super) tokens: tokens::Tokens,
}

impl MockSmh {
    pub(super) fn new() -> MockSmh {
        MockSmh {
            started: now(),
            uploads: HashMap::new(),
            files: BTreeMap::new(),
            dirs: BTreeMap::new(),
            tokens: tokens::Tokens::new(),
        }
    }

    /// SMH's answer to `req`, updating the state.
    pub(super) fn answer(&mut self, req: &Received) -> Response<Full<Bytes>> {
        let Some(rest) = req.path.strip_prefix("/api/v1/") else {
            return smh_error(StatusCode::NOT_FOUND, "RouteNotFound", "route not found");
        };
        let query = Query::parse(req.query.as_deref());
        if rest == "token" || rest.starts_with("token/") {
            return self.tokens.answer(req, rest, &query);
        }
        if let Some(refusal) = self.tokens.refuse(req, &query) {
            return refusal;
        }
        if needs_token(&req.method, rest) && query.get("access_token").is_none_or(str::is_empty) {
            return smh_error(
                StatusCode::BAD_REQUEST,
                "EmptyAccessToken",
                "access token is empty",
            );
        }
        let mut parts = rest.splitn(4, '/');
        let group = parts.next().unwrap_or("");
        let (Some(library), Some(space), target) = (parts.next(), parts.next(), parts.next())
        else {
            return mock_ok();
        };
        let call = Call {
            method: &req.method,
            library: decode(library),
            space: decode(space),
            target: target.map(decode).unwrap_or_default(),
            query,
            body: json_fields(&req.body),
        };
        match group {
            "file" if target.is_some() => self.file(&call),
            "directory" => self.directory(&call),
            _ => mock_ok(),
        }
    }

    /// `/api/v1/file/{L}/{S}/{X}`: the flag decides, then (flag-less PUT) body keys.
    fn file(&mut self, c: &Call) -> Response<Full<Bytes>> {
        let q = &c.query;
        match *c.method {
            Method::POST if q.has("confirm") => self.confirm(c),
            Method::POST if q.has("renew") => self.renew(c),
            Method::POST if q.has("multipart") => self.begin(c, Kind::Multipart),
            Method::POST if q.has("uncompress") => mock_ok(),
            Method::POST => self.begin(c, Kind::Form),
            Method::PUT if q.has("convert") || q.has("virtual_file") => mock_ok(),
            Method::PUT if c.body.contains_key("copyFrom") => self.copy_file(c, "copyFrom"),
            Method::PUT if c.body.contains_key("from") => self.copy_file(c, "from"),
            Method::PUT if c.body.contains_key("linkTo") => path_answer(&c.path()),
            Method::PUT => self.begin(c, Kind::Simple),
            Method::GET if q.has("upload") => self.upload_status(c),
            Method::GET if q.has("info") => self.file_info(c),
            Method::GET
                if ["zip-preview", "preview", "transcoding_template_id"]
                    .iter()
                    .any(|f| q.has(f)) =>
            {
                mock_ok()
            }
            Method::GET | Method::HEAD => self.download(c),
            Method::DELETE if q.has("upload") => self.cancel(c),
            Method::DELETE => self.delete_file(c),
            _ => mock_ok(),
        }
    }

    /// `/api/v1/directory/{L}/{S}/{P}`.
    fn directory(&mut self, c: &Call) -> Response<Full<Bytes>> {
        let q = &c.query;
        match *c.method {
            Method::GET if q.has("info") => self.path_info(c),
            Method::GET if q.has("stats") => mock_ok(),
            // by-marker, by-page, or no flag (SMH's docs list without one).
            Method::GET => self.list(c),
            Method::HEAD if self.is_dir(c, &c.path()) => empty(StatusCode::OK),
            Method::HEAD => not_found("DirectoryNotFound"),
            Method::PUT if q.has("calibrate") => mock_ok(),
            Method::PUT if c.body.contains_key("copyFrom") || c.body.contains_key("from") => {
                path_answer(&c.path())
            }
            Method::PUT => self.create_directory(c),
            Method::DELETE => self.delete_directory(c),
            _ => mock_ok(),
        }
    }

    /// Multipart (`POST ?multipart`), simple (`PUT`) and form (`POST`) begin.
    fn begin(&mut self, c: &Call, kind: Kind) -> Response<Full<Bytes>> {
        let path = c.path();
        if path.is_empty() {
            return smh_error(
                StatusCode::BAD_REQUEST,
                "EmptyFileName",
                "file name is empty",
            );
        }
        if !parent(&path).is_some_and(|p| self.is_dir(c, p)) {
            return not_found("DirectoryNotFound");
        }
        if self.dirs.contains_key(&c.key(&path)) {
            return conflict("SameNameDirectoryOrFileExists");
        }
        let beginning_hash = c.body_str("beginningHash");
        let full_hash = c.body_str("fullHash");
        let known = |want: &dyn Fn(&File) -> bool| {
            self.files
                .iter()
                .find(|((l, s, _), f)| *l == c.library && *s == c.space && want(f))
                .map(|(_, f)| f.clone())
        };
        if let Some(full) = full_hash {
            if let Some(same) = known(&|f| f.full_hash.as_deref() == Some(full)) {
                // Instant upload: the content is already stored; done, no confirm.
                let file = File {
                    content_type: content_type(&path),
                    creation_time: now(),
                    modification_time: now(),
                    ..same
                };
                return self.store_file(c, &path, file);
            }
        } else if let Some(beginning) = beginning_hash
            && known(&|f| f.beginning_hash.as_deref() == Some(beginning)).is_some()
        {
            // Ask the client for the full hash.
            return empty(StatusCode::ACCEPTED);
        }
        let confirm_key = confirm_key_for(&c.library, &c.space, &path);
        let upload = Upload {
            kind,
            stage: Stage::Pending,
            size: c.size(),
            beginning_hash: beginning_hash.map(str::to_string),
            full_hash: full_hash.map(str::to_string),
            strategy: c
                .query
                .get("conflict_resolution_strategy")
                .unwrap_or("rename")
                .to_string(),
            traffic_limit: c.query.traffic_limit(),
            creation_time: now(),
            expiration: in_an_hour(),
            path,
        };
        let body = cos_task(
            &c.library,
            &confirm_key,
            kind,
            upload.traffic_limit,
            &upload.expiration,
        );
        self.uploads.insert(c.key(&confirm_key), upload);
        json(StatusCode::CREATED, body)
    }

    /// `POST …/{ConfirmKey}?renew`: a new expiration for a pending multipart upload.
    fn renew(&mut self, c: &Call) -> Response<Full<Bytes>> {
        let confirm_key = &c.target;
        let (traffic_limit, expiration) = (c.query.traffic_limit(), in_an_hour());
        match self.uploads.get_mut(&c.key(confirm_key)) {
            // A key the mock never issued is renewed all the same (see the module doc).
            None => {}
            Some(u) if u.kind == Kind::Multipart && u.stage == Stage::Pending => {
                u.traffic_limit = traffic_limit;
                u.expiration.clone_from(&expiration);
            }
            // Confirmed, cancelled, or not multipart (SMH renews multipart tasks only).
            Some(_) => return not_found("ConfirmKeyNotFound"),
        }
        let body = cos_task(
            &c.library,
            confirm_key,
            Kind::Multipart,
            traffic_limit,
            &expiration,
        );
        json(StatusCode::OK, body)
    }

    /// `GET …/{ConfirmKey}?upload`.
    fn upload_status(&self, c: &Call) -> Response<Full<Bytes>> {
        let confirm_key = &c.target;
        let Some(u) = self
            .uploads
            .get(&c.key(confirm_key))
            .filter(|u| u.stage != Stage::Cancelled)
        else {
            return not_found("ConfirmKeyNotFound");
        };
        let upload_id = (u.kind == Kind::Multipart).then(|| upload_id(confirm_key));
        let body = json!({
            "confirmed": u.stage == Stage::Confirmed,
            "path": segments(&u.path),
            "type": u.kind.name(),
            "creationTime": u.creation_time,
            "conflictResolutionStrategy": u.strategy,
            "force": false,
            "availableDomainNum": 1,
            "uploadId": upload_id,
            "parts": [],
            "uploadPartInfo": {
                "domain": DOMAIN,
                "path": cos_path(&c.library, confirm_key),
                "uploadId": upload_id,
                "headers": cos_headers(u.traffic_limit),
                "expiration": u.expiration,
            },
        });
        json(StatusCode::OK, body)
    }

    /// `POST …/{ConfirmKey}?confirm`: the pending upload becomes a file.
    fn confirm(&mut self, c: &Call) -> Response<Full<Bytes>> {
        let confirm_key = &c.target;
        let Some(u) = self.uploads.get_mut(&c.key(confirm_key)) else {
            return not_found("ConfirmKeyNotFound");
        };
        match u.stage {
            Stage::Pending => u.stage = Stage::Confirmed,
            Stage::Confirmed => return conflict("UploadComplete"),
            Stage::Cancelled => return not_found("ConfirmKeyNotFound"),
        }
        let crc64 = c.body_str("crc64").unwrap_or("0").to_string();
        let file = File {
            size: u.size,
            content_type: content_type(&u.path),
            etag: format!(
                "\"{}\"",
                &hex(&Sha256::digest(format!("{confirm_key}\0{crc64}")))[..32]
            ),
            crc64,
            beginning_hash: u.beginning_hash.clone(),
            full_hash: u.full_hash.clone(),
            creation_time: now(),
            modification_time: now(),
        };
        let path = u.path.clone();
        self.store_file(c, &path, file)
    }

    /// `DELETE …/{ConfirmKey}?upload`.
    fn cancel(&mut self, c: &Call) -> Response<Full<Bytes>> {
        match self.uploads.get_mut(&c.key(&c.target)) {
            Some(u) if u.stage == Stage::Pending => {
                u.stage = Stage::Cancelled;
                empty(StatusCode::NO_CONTENT)
            }
            _ => not_found("ConfirmKeyNotFound"),
        }
    }

    /// A file now exists at `path` (replacing one already there); 200 file info.
    fn store_file(&mut self, c: &Call, path: &str, mut file: File) -> Response<Full<Bytes>> {
        let old = self.files.get(&c.key(path));
        let is_overwritten = old.is_some();
        if let Some(old) = old {
            file.creation_time = old.creation_time.clone();
        }
        let mut body = file_json(path, &file);
        body["isOverwritten"] = json!(is_overwritten);
        self.files.insert(c.key(path), file);
        json(StatusCode::OK, body)
    }

    /// `GET …/{FilePath}?info`: metadata and a (fake) signed COS URL.
    fn file_info(&self, c: &Call) -> Response<Full<Bytes>> {
        let path = c.path();
        let Some(f) = self.files.get(&c.key(&path)) else {
            return not_found("FileNotFound");
        };
        let mut body = file_fields(f);
        // pre_check=1 asks for the metadata only.
        if c.query.get("pre_check") != Some("1") {
            body["cosUrl"] = json!(cos_url(&c.library, &path));
        }
        json(StatusCode::OK, body)
    }

    /// `GET …/{FilePath}` (302 to COS) and `HEAD …/{FilePath}` (200), x-smh-* headers.
    fn download(&self, c: &Call) -> Response<Full<Bytes>> {
        let path = c.path();
        let Some(f) = self.files.get(&c.key(&path)) else {
            return not_found("FileNotFound");
        };
        let (status, location) = match *c.method {
            Method::HEAD => (StatusCode::OK, None),
            _ => (StatusCode::FOUND, Some(cos_url(&c.library, &path))),
        };
        let mut resp = empty(status);
        let size = f.size.to_string();
        let headers = [
            ("location", location.as_deref()),
            ("x-smh-type", Some("file")),
            ("x-smh-creation-time", Some(f.creation_time.as_str())),
            (
                "x-smh-modification-time",
                Some(f.modification_time.as_str()),
            ),
            ("x-smh-content-type", Some(f.content_type)),
            ("x-smh-size", Some(size.as_str())),
            ("x-smh-etag", Some(f.etag.as_str())),
            ("x-smh-crc64", Some(f.crc64.as_str())),
        ];
        put_headers(resp.headers_mut(), &headers);
        resp
    }

    fn delete_file(&mut self, c: &Call) -> Response<Full<Bytes>> {
        match self.files.remove(&c.key(&c.path())) {
            Some(_) => empty(StatusCode::NO_CONTENT),
            None => not_found("FileNotFound"),
        }
    }

    /// Flag-less PUT with `copyFrom` (copy) or `from` (move): when the source is a
    /// file the mock knows, the destination gets it; SMH's 200 `{path}` either way.
    fn copy_file(&mut self, c: &Call, field: &str) -> Response<Full<Bytes>> {
        let dest = c.path();
        let source = c.key(&normalize(c.body_str(field).unwrap_or_default()));
        let found = match field {
            "from" => self.files.remove(&source),
            _ => self.files.get(&source).cloned(),
        };
        if let Some(file) = found {
            self.files.insert(c.key(&dest), file);
        }
        path_answer(&dest)
    }

    /// Flag-less PUT on `/directory/`: creates the directory and its parents.
    fn create_directory(&mut self, c: &Call) -> Response<Full<Bytes>> {
        let path = c.path();
        let blocked = path.is_empty()
            || self.dirs.contains_key(&c.key(&path))
            || prefixes(&path).any(|p| self.files.contains_key(&c.key(p)));
        if blocked {
            return conflict("SameNameDirectoryOrFileExists");
        }
        let now = now();
        for p in prefixes(&path) {
            self.dirs.entry(c.key(p)).or_insert_with(|| now.clone());
        }
        let body = json!({ "path": segments(&path), "creationTime": now });
        json(StatusCode::CREATED, body)
    }

    /// Removes a directory and everything under it.
    fn delete_directory(&mut self, c: &Call) -> Response<Full<Bytes>> {
        let path = c.path();
        if self.dirs.remove(&c.key(&path)).is_none() {
            return not_found("DirectoryNotFound");
        }
        let under = format!("{path}/");
        let inside = |(l, s, p): &Key| *l == c.library && *s == c.space && p.starts_with(&under);
        self.dirs.retain(|k, _| !inside(k));
        self.files.retain(|k, _| !inside(k));
        empty(StatusCode::NO_CONTENT)
    }

    /// `GET /directory/…?info`: a directory or a file.
    fn path_info(&self, c: &Call) -> Response<Full<Bytes>> {
        let path = c.path();
        let body = if let Some(f) = self.files.get(&c.key(&path)) {
            file_json(&path, f)
        } else if let Some(created) = self.dir_time(c, &path) {
            let mut v = dir_json(&path, created);
            v["path"] = json!(segments(&path));
            v
        } else {
            return not_found("PathNotFound");
        };
        json(StatusCode::OK, body)
    }

    /// `GET /directory/…?by-marker` (one page holds everything), `?by-page`, or
    /// no flag.
    fn list(&self, c: &Call) -> Response<Full<Bytes>> {
        let path = c.path();
        if !self.is_dir(c, &path) {
            return not_found("DirectoryNotFound");
        }
        let child =
            |(l, s, p): &Key| *l == c.library && *s == c.space && parent(p) == Some(path.as_str());
        let dirs: Vec<Value> = self
            .dirs
            .iter()
            .filter(|(k, _)| child(k))
            .map(|((_, _, p), created)| dir_json(p, created))
            .collect();
        let files: Vec<Value> = self
            .files
            .iter()
            .filter(|(k, _)| child(k))
            .map(|((_, _, p), f)| {
                let mut v = file_fields(f);
                v["name"] = json!(name(p));
                v
            })
            .collect();
        let mut body = json!({ "path": segments(&path) });
        if c.query.has("by-page") {
            body["fileCount"] = json!(files.len());
            body["subDirCount"] = json!(dirs.len());
            body["totalNum"] = json!(files.len() + dirs.len());
        }
        body["contents"] = Value::Array(dirs.into_iter().chain(files).collect());
        json(StatusCode::OK, body)
    }

    fn dir_time<'a>(&'a self, c: &Call, path: &str) -> Option<&'a str> {
        match path {
            "" => Some(&self.started),
            _ => self.dirs.get(&c.key(path)).map(String::as_str),
        }
    }

    fn is_dir(&self, c: &Call, path: &str) -> bool {
        self.dir_time(c, path).is_some()
    }
}

/// Every route takes an `access_token` but SMH's public share look-ups and the
/// token group, whose credential is the library secret or the token in the path.
fn needs_token(method: &Method, rest: &str) -> bool {
    let public = (method == Method::GET && rest.starts_with("share/url-detail/"))
        || (method == Method::POST && rest.starts_with("share/verify/"));
    let token_group = rest == "token" || rest.starts_with("token/");
    !(public || token_group)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
