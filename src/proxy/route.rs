//! Phase 1, route: method + path + query (+ the Authorization header) become a typed
//! [`Operation`] on one row of the route table, once, at the edge. Later phases never
//! re-read the raw request.
//!
//! Matching (SPEC §11): segment by segment; literals match as sent (no escapes),
//! parameters are compared percent-decoded; literal segments win over parameters;
//! then the selector flag picks among the rows of one shape, in the table's order
//! (SMH-ROUTES Q3); flag-less rows of one shape are told apart by body keys. This
//! phase also does the request-syntax checks of SPEC §3/§5: segment contents,
//! repeated parameters, traffic_limit syntax, `library_secret`. A request that is
//! no row but would become one after normalising (decoding a literal, `//`, dot
//! segments, `;` parameters, case) is a look-alike: 400, whatever `unmatched` says.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use http::{HeaderMap, Uri, header};

use crate::config::RouteRule;
use crate::error::GatewayError;
use crate::metrics::RouteMetrics;
use crate::proxy::policy::{NamedSpace, Permissions};
use crate::proxy::routes::{
    AuthPolicy, BodyPolicy, CacheRole, GrantSource, Method, ROUTES, RouteSpec, SpaceField,
};
use crate::secret::Secret;
use crate::smh::is_valid_id;
use crate::template::{Seg, Template};
use crate::text::ByteClass;

/// One row of the effective table: a built-in [`RouteSpec`] with operator rules
/// applied, its template parsed and its permissions compiled.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub method: Method,
    pub template: Template,
    pub flag: Option<String>,
    pub body_key: Option<String>,
    pub dispatch_default: bool,
    pub params: Vec<String>,
    pub body: BodyPolicy,
    pub auth: AuthPolicy,
    pub permissions: Permissions,
    pub permanent: Option<Permissions>,
    /// `None` when an operator rule set the permissions.
    pub source: Option<GrantSource>,
    pub user_id: bool,
    pub traffic_limit: bool,
    pub spaces: Vec<SpaceField>,
    pub cache: CacheRole,
    /// A bit per literal segment, the first segment highest: among rows a path fits,
    /// the greatest mask is the most literal (literals win over parameters).
    mask: u32,
    metrics: OnceLock<RouteMetrics>,
}

impl Route {
    fn from_spec(spec: &RouteSpec) -> Route {
        Route {
            name: Arc::from(spec.name),
            method: spec.method,
            template: Template::parse(spec.path).expect("built-in templates parse (tested)"),
            flag: spec.flag.map(str::to_string),
            body_key: spec.body_key.map(str::to_string),
            dispatch_default: spec.dispatch_default,
            params: spec.params.iter().map(|p| p.to_string()).collect(),
            body: spec.body,
            auth: spec.auth,
            permissions: Permissions::parse(spec.permissions).expect("built-in grants (tested)"),
            permanent: spec
                .permanent
                .map(|p| Permissions::parse(p).expect("built-in grants (tested)")),
            source: Some(spec.source),
            user_id: spec.user_id,
            traffic_limit: spec.traffic_limit,
            spaces: spec.spaces.to_vec(),
            cache: spec.cache,
            mask: 0,
            metrics: OnceLock::new(),
        }
    }

    /// The row's metric children, resolved on first use.
    pub fn metrics(&self, metrics: &crate::metrics::Metrics) -> &RouteMetrics {
        self.metrics.get_or_init(|| metrics.route(&self.name))
    }

    /// The permissions this request needs (`permanent=1` asks for the stricter set).
    pub fn required(&self, permanent: bool) -> &Permissions {
        match (&self.permanent, permanent) {
            (Some(p), true) => p,
            _ => &self.permissions,
        }
    }

    fn literal_mask(&self) -> u32 {
        self.template
            .segs
            .iter()
            .take(32)
            .enumerate()
            .filter(|(_, s)| !s.is_param())
            .fold(0, |m, (i, _)| m | (1 << (31 - i)))
    }
}

/// The effective route table, indexed for matching. Built per config (rules can
/// change on reload).
#[derive(Debug)]
pub struct Router {
    routes: Vec<Arc<Route>>,
    /// Rows by their first three literal segments (`api`, `v1`, `file`) and method:
    /// a few dozen groups, scanned (cheaper than hashing the segments).
    index: Vec<Group>,
    /// Rows whose template starts with fewer than three literals (operator rules).
    loose: Vec<usize>,
}

/// The rows whose templates start with the same three literals.
#[derive(Debug)]
struct Group {
    prefix: [String; 3],
    by_method: [Vec<usize>; Method::ALL.len()],
}

/// A request target split once: path segments (raw) and query pairs, shared by the
/// router and the parse of the row's values.
pub struct Target<'a> {
    segs: Vec<&'a str>,
    query: Query<'a>,
    uri: &'a Uri,
}

impl<'a> Target<'a> {
    pub fn new(uri: &'a Uri) -> Target<'a> {
        let path = uri.path();
        let path = path.strip_prefix('/').unwrap_or(path);
        // SMH's paths have six segments or so; a FilePath may have many more.
        // A byte loop: segments are short, and a memchr call costs more than one.
        let mut segs = Vec::with_capacity(8);
        let mut start = 0;
        for (at, &b) in path.as_bytes().iter().enumerate() {
            if b == b'/' {
                segs.push(&path[start..at]);
                start = at + 1;
            }
        }
        segs.push(&path[start..]);
        Target {
            segs,
            query: Query::parse(uri.query().unwrap_or("")),
            uri,
        }
    }
}

/// What the router made of a request head.
#[derive(Debug)]
pub enum Selected {
    /// A row; `dispatch` lists the siblings told apart by body keys (empty when the
    /// row is fixed by method, path and flag alone).
    Row {
        route: Arc<Route>,
        dispatch: Vec<Arc<Route>>,
    },
    Unmatched,
}

impl Router {
    /// The built-in table with the operator's rules applied. Errors name the rule.
    pub fn new(rules: &[RouteRule]) -> Result<Router, (usize, &'static str, String)> {
        let mut routes: Vec<Route> = ROUTES.iter().map(Route::from_spec).collect();
        for (i, rule) in rules.iter().enumerate() {
            let existing = routes.iter().position(|r| *r.name == *rule.name);
            let route = match existing {
                Some(at) => &mut routes[at],
                None => {
                    let (Some(method), Some(path), Some(_)) =
                        (&rule.method, &rule.path, &rule.permissions)
                    else {
                        return Err((
                            i,
                            "name",
                            format!(
                                "{:?} is not a built-in route: a new rule needs method, path and permissions",
                                rule.name
                            ),
                        ));
                    };
                    let method =
                        Method::parse(method).ok_or((i, "method", "unknown method".into()))?;
                    routes.push(Route {
                        name: Arc::from(rule.name.as_str()),
                        method,
                        template: path.clone(),
                        flag: None,
                        body_key: None,
                        dispatch_default: false,
                        params: Vec::new(),
                        body: BodyPolicy::Json,
                        auth: AuthPolicy::Token,
                        permissions: Permissions::default(),
                        permanent: None,
                        source: None,
                        user_id: true,
                        traffic_limit: false,
                        spaces: Vec::new(),
                        cache: CacheRole::None,
                        mask: 0,
                        metrics: OnceLock::new(),
                    });
                    routes.last_mut().expect("just pushed")
                }
            };
            if let Some(m) = &rule.method {
                route.method = Method::parse(m).ok_or((i, "method", "unknown method".into()))?;
            }
            if let Some(p) = &rule.path {
                route.template = p.clone();
            }
            if let Some(f) = &rule.flag {
                route.flag = Some(f.clone());
            }
            if let Some(p) = &rule.permissions {
                route.permissions = Permissions::any_of(p);
                route.permanent = None;
                route.source = None;
            }
            if let Some(t) = rule.traffic_limit {
                route.traffic_limit = t;
            }
            if let Some(p) = &rule.params {
                route.params = p.clone();
            }
        }
        for r in &mut routes {
            r.mask = r.literal_mask();
        }
        let routes: Vec<Arc<Route>> = routes.into_iter().map(Arc::new).collect();
        let mut index: Vec<Group> = Vec::new();
        let mut loose = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            let prefix: Vec<&str> = r.template.literal_prefix().take(3).collect();
            let [a, b, c] = prefix.as_slice() else {
                loose.push(i);
                continue;
            };
            let at = match index.iter().position(|g| g.prefix == [*a, *b, *c]) {
                Some(at) => at,
                None => {
                    index.push(Group {
                        prefix: [a.to_string(), b.to_string(), c.to_string()],
                        by_method: Default::default(),
                    });
                    index.len() - 1
                }
            };
            index[at].by_method[r.method as usize].push(i);
        }
        Ok(Router {
            routes,
            index,
            loose,
        })
    }

    /// Every row, in table order (`smh-gateway routes`, the README table).
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// The effective table as Markdown: what `smh-gateway routes` prints and the
    /// README's route table (a test keeps the two equal).
    pub fn markdown(&self) -> String {
        let mut out = String::from(
            "| route | method | path | flag | permissions (any one) | source | traffic_limit | body |\n\
             |---|---|---|---|---|---|---|---|\n",
        );
        for r in &self.routes {
            let flag = match (&r.flag, &r.body_key, r.dispatch_default) {
                (Some(f), _, _) => format!("`{f}`"),
                (None, Some(k), _) => format!("body key `{k}`"),
                (None, None, true) => "body: other keys".into(),
                (None, None, false) => "—".into(),
            };
            let mut permissions = match r.auth {
                AuthPolicy::Public => "public: no token".to_string(),
                AuthPolicy::ShareToken => "a share token (SMH checks it)".to_string(),
                AuthPolicy::Token if r.permissions.is_open() => "any valid token".to_string(),
                AuthPolicy::Token => prose(&r.permissions),
            };
            if let Some(p) = &r.permanent {
                permissions.push_str(&format!("; with `permanent=1`: {}", prose(p)));
            }
            let source = match r.source {
                Some(GrantSource::Stated) => "stated",
                Some(GrantSource::ReadRule) => "rule: read",
                Some(GrantSource::WriteRule) => "rule: write",
                Some(GrantSource::SmhChecks) => "SMH checks the creator",
                Some(GrantSource::None) => "—",
                None => "operator rule",
            };
            let body = match r.body {
                BodyPolicy::None => "none",
                BodyPolicy::Json => "JSON object",
                BodyPolicy::JsonArray => "JSON array",
            };
            let tl = if r.traffic_limit {
                "clamped"
            } else {
                "dropped"
            };
            out.push_str(&format!(
                "| `{}` | {} | `{}` | {} | {} | {} | {} | {} |\n",
                r.name,
                r.method.as_str(),
                r.template,
                flag,
                permissions,
                source,
                tl,
                body
            ));
        }
        out
    }

    /// Routes a request head. `Err` is a 400: a look-alike, two flags that select
    /// different rows, or a path too deep for the row its flag selects.
    pub fn select(
        &self,
        method: &http::Method,
        target: &Target<'_>,
    ) -> Result<Selected, GatewayError> {
        let Some(m) = known_method(method)? else {
            return Ok(Selected::Unmatched);
        };
        match self.select_segments(m, &target.segs, &target.query)? {
            Selected::Unmatched => {}
            row => return Ok(row),
        }
        // HEAD on a path only GET serves: many servers answer HEAD with the GET
        // handler, which would run the row unchecked.
        if m == Method::Head
            && !matches!(
                self.select_segments(Method::Get, &target.segs, &target.query),
                Ok(Selected::Unmatched)
            )
        {
            return Err(LOOK_ALIKE);
        }
        // Not a row as sent: would it become one after normalising?
        let normal = normalise(target.uri.path());
        let normal: Vec<&str> = normal.iter().map(String::as_str).collect();
        if normal != target.segs
            && !matches!(
                self.select_segments(m, &normal, &target.query),
                Ok(Selected::Unmatched)
            )
        {
            return Err(LOOK_ALIKE);
        }
        Ok(Selected::Unmatched)
    }

    /// The rows of method `m` whose leading literals `segs` may fit, each with how
    /// many leading segments are known to match already (the group's three).
    fn candidates<'s>(
        &'s self,
        m: Method,
        segs: &[&str],
    ) -> impl Iterator<Item = (usize, usize)> + 's {
        let indexed: &[usize] = match segs {
            [a, b, c, ..] => self
                .index
                .iter()
                .find(|g| g.prefix[0] == *a && g.prefix[1] == *b && g.prefix[2] == *c)
                .map_or(&[], |g| g.by_method[m as usize].as_slice()),
            _ => &[],
        };
        indexed.iter().map(|&i| (i, 3)).chain(
            self.loose
                .iter()
                .copied()
                .filter(move |&i| self.routes[i].method == m)
                .map(|i| (i, 0)),
        )
    }

    fn select_segments(
        &self,
        m: Method,
        segs: &[&str],
        query: &Query<'_>,
    ) -> Result<Selected, GatewayError> {
        // The rows the path fits, at the greatest literal mask; candidates come in
        // table order.
        let mut best = 0u32;
        // (row, the path fits exactly, its flag is in the query): the query is
        // looked at once per row.
        let mut fits: Vec<(usize, bool, bool)> = Vec::with_capacity(8);
        for (i, known) in self.candidates(m, segs) {
            let route = &self.routes[i];
            let Some(exact) = fit(&route.template, segs, known) else {
                continue;
            };
            if route.mask > best || fits.is_empty() {
                fits.clear();
                best = route.mask;
            }
            if route.mask == best {
                let present = route.flag.as_deref().is_some_and(|f| query.has(f));
                fits.push((i, exact, present));
            }
        }
        if fits.is_empty() {
            return Ok(Selected::Unmatched);
        }
        let flag_of = |i: usize| self.routes[i].flag.as_deref();
        // The first row whose flag is present, preferring one the path fits exactly
        // (restore one recycled item rather than the batch restore the path is too
        // deep for).
        let chosen = fits
            .iter()
            .copied()
            .filter(|&(_, _, present)| present)
            .min_by_key(|&(i, exact, _)| (!exact, i));
        if let Some((first, exact, _)) = chosen {
            let route = &self.routes[first];
            for &(other, _, present) in &fits {
                if !present {
                    continue;
                }
                let f = flag_of(other).unwrap_or_default();
                if Some(f) != route.flag.as_deref() && !route.params.iter().any(|p| p == f) {
                    return Err(GatewayError::ParamInvalid(
                        "two selector flags that select different operations",
                    ));
                }
            }
            if !exact {
                return Err(TOO_DEEP);
            }
            return Ok(Selected::Row {
                route: route.clone(),
                dispatch: Vec::new(),
            });
        }
        let flagless = || {
            fits.iter()
                .copied()
                .filter(|&(i, _, _)| flag_of(i).is_none())
                .map(|(i, exact, _)| (i, exact))
        };
        let mut exact = flagless().filter(|&(_, exact)| exact).map(|(i, _)| i);
        let Some(first) = exact.next() else {
            // Only rows the path is too deep for: say so, rather than pass it on.
            return match flagless().next() {
                Some(_) => Err(TOO_DEEP),
                None => Ok(Selected::Unmatched),
            };
        };
        if exact.next().is_none() {
            return Ok(Selected::Row {
                route: self.routes[first].clone(),
                dispatch: Vec::new(),
            });
        }
        // Several flag-less rows of one shape: told apart by body keys.
        let exact = || flagless().filter(|&(_, exact)| exact).map(|(i, _)| i);
        let default = exact()
            .find(|&i| self.routes[i].dispatch_default)
            .unwrap_or(first);
        let dispatch = exact()
            .filter(|&i| self.routes[i].body_key.is_some())
            .map(|i| self.routes[i].clone())
            .collect();
        Ok(Selected::Row {
            route: self.routes[default].clone(),
            dispatch,
        })
    }
}

/// `admin | read_only & upload_file` as Markdown table text (a `|` would split
/// the cell).
fn prose(p: &Permissions) -> String {
    p.to_string()
        .split(" | ")
        .map(|alt| {
            alt.split(" & ")
                .map(|g| format!("`{g}`"))
                .collect::<Vec<_>>()
                .join(" + ")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

const LOOK_ALIKE: GatewayError = GatewayError::ParamInvalid(
    "the path is not canonical: an escaped literal, //, a dot segment, ; or upper case",
);
const TOO_DEEP: GatewayError =
    GatewayError::ParamInvalid("path segment holds /, or the path is too deep");

/// Whether `segs` fits `template`: `Some(true)` exactly, `Some(false)` when it
/// would fit but for extra segments after a final single-segment parameter (the
/// caller refuses those), `None` when it does not fit. The first `known` segments
/// are known to match (the router's index matched them).
fn fit(template: &Template, segs: &[&str], known: usize) -> Option<bool> {
    let t = &template.segs;
    let ends_with_path = t.last() == Some(&Seg::Path);
    let fixed = if ends_with_path { t.len() - 1 } else { t.len() };
    if segs.len() < fixed {
        return None;
    }
    for (seg, raw) in t.iter().zip(segs).skip(known) {
        if let Seg::Lit(l) = seg
            && l != raw
        {
            return None;
        }
    }
    if ends_with_path || segs.len() == t.len() {
        return Some(true);
    }
    match t.last() {
        Some(s) if s.is_param() => Some(false),
        _ => None,
    }
}

/// The method, when it is one SMH's API uses. Methods that are not all upper-case
/// letters are refused (a lenient upstream might upper-case `post`).
fn known_method(method: &http::Method) -> Result<Option<Method>, GatewayError> {
    let s = method.as_str();
    if !s.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(GatewayError::ParamInvalid(
            "the method must be upper-case letters",
        ));
    }
    Ok(Method::parse(s))
}

/// The path as a lenient server might read it: `;params` cut, escapes decoded
/// (twice, for double encoding), encoded `/` split, `//` and `.` dropped, `..`
/// applied, literals lower-cased.
fn normalise(path: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for raw in path.split('/') {
        let raw = raw.split(';').next().unwrap_or_default();
        let mut s = raw.to_string();
        for _ in 0..3 {
            if !s.contains('%') {
                break;
            }
            s = percent_encoding::percent_decode_str(&s)
                .decode_utf8_lossy()
                .into_owned();
        }
        for part in s.split('/') {
            let part = part.split(';').next().unwrap_or_default();
            match part {
                "" | "." => {}
                ".." => {
                    out.pop();
                }
                p => out.push(p.to_ascii_lowercase()),
            }
        }
    }
    out
}

/// The typed values of a request's path, decoded and checked. They borrow the
/// request target unless decoding changed them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathValues<'a> {
    pub library: Option<Cow<'a, str>>,
    pub space: Option<Cow<'a, str>>,
    pub spaces: Vec<Cow<'a, str>>,
    pub key: Option<Cow<'a, str>>,
    pub id: Option<Cow<'a, str>>,
    /// The FilePath, decoded, a leading `/` kept as sent; `""` or `"/"` is the root.
    pub path: Option<Cow<'a, str>>,
}

impl<'a> PathValues<'a> {
    /// Decodes `segs` against `template` (which they fit exactly).
    pub fn parse(template: &Template, segs: &[&'a str]) -> Result<PathValues<'a>, GatewayError> {
        let mut v = PathValues::default();
        for (i, seg) in template.segs.iter().enumerate() {
            match seg {
                Seg::Lit(_) => {}
                Seg::Library => v.library = Some(id_segment(segs[i])?),
                Seg::Space => v.space = Some(id_segment(segs[i])?),
                Seg::Key => v.key = Some(id_segment(segs[i])?),
                Seg::Id => v.id = Some(id_segment(segs[i])?),
                Seg::Spaces => match decode_segment(segs[i])? {
                    Cow::Borrowed(list) => {
                        for s in list.split(',') {
                            v.spaces.push(Cow::Borrowed(valid_id(s)?));
                        }
                    }
                    Cow::Owned(list) => {
                        for s in list.split(',') {
                            v.spaces.push(Cow::Owned(valid_id(s)?.to_string()));
                        }
                    }
                },
                Seg::Path => v.path = Some(file_path(segs.get(i..).unwrap_or(&[]))?),
            }
        }
        Ok(v)
    }
}

const BAD_SEGMENT: GatewayError = GatewayError::ParamInvalid(
    "path segment is empty, holds /, %, a control character, or is . or ..",
);

fn decode_segment(raw: &str) -> Result<Cow<'_, str>, GatewayError> {
    percent_decode_cow(raw).ok_or(GatewayError::ParamInvalid(
        "malformed percent-encoding in the path",
    ))
}

fn valid_id(s: &str) -> Result<&str, GatewayError> {
    if is_valid_id(s) {
        Ok(s)
    } else {
        Err(BAD_SEGMENT)
    }
}

/// A library, space, confirm key or id segment.
fn id_segment(raw: &str) -> Result<Cow<'_, str>, GatewayError> {
    let decoded = decode_segment(raw)?;
    valid_id(&decoded)?;
    Ok(decoded)
}

/// A FilePath from one or more raw segments (SPEC §11).
fn file_path<'a>(raw: &[&'a str]) -> Result<Cow<'a, str>, GatewayError> {
    let decoded = match raw {
        [one] => decode_segment(one)?,
        _ => {
            let mut joined = String::new();
            for (i, seg) in raw.iter().enumerate() {
                if i > 0 {
                    joined.push('/');
                }
                joined.push_str(&decode_segment(seg)?);
            }
            Cow::Owned(joined)
        }
    };
    let body = decoded.strip_prefix('/').unwrap_or(&decoded);
    if !body.is_empty() {
        for part in body.split('/') {
            if part.is_empty() || part == "." || part == ".." || part.chars().any(char::is_control)
            {
                return Err(GatewayError::ParamInvalid(
                    "FilePath holds an empty part, . or .., or a control character",
                ));
            }
        }
    }
    Ok(decoded)
}

/// A request on a row, parsed: what the later phases check and forward.
///
/// Values borrow the request's target (`'a`) unless decoding changed them.
#[derive(Debug)]
pub struct Operation<'a> {
    pub route: Arc<Route>,
    pub values: PathValues<'a>,
    /// From `access_token`, or `Authorization: Bearer`; `None` when absent or empty.
    pub token: Option<Secret<'a>>,
    /// `None` when absent, empty, or not a parameter of the row.
    pub user_id: Option<Cow<'a, str>>,
    /// ASCII digits, saturated into u64; clamped later, in rewrite.
    pub traffic_limit: Option<u64>,
    /// The row's other parameters that were sent, decoded: (index in
    /// `route.params`, value), in the row's order.
    pub params: Vec<(usize, Cow<'a, str>)>,
    /// `permanent=1` (or `true`) was sent.
    pub permanent: bool,
    /// Spaces named in the query (the body's are added by the body phase).
    pub named_spaces: Vec<NamedSpace>,
}

impl<'a> Operation<'a> {
    /// Parses the path and query of a request on `route`.
    pub fn parse(
        route: Arc<Route>,
        target: &Target<'a>,
        headers: &HeaderMap,
    ) -> Result<Operation<'a>, GatewayError> {
        let values = PathValues::parse(&route.template, &target.segs)?;
        let query = &target.query;
        if query.has("library_secret") {
            return Err(LIBRARY_SECRET);
        }
        if let Some(flag) = &route.flag {
            query.single(flag)?;
        }
        let (token, user_id, traffic_limit) = match route.auth {
            AuthPolicy::Public => (None, None, None),
            AuthPolicy::Token | AuthPolicy::ShareToken => {
                let query_token = query
                    .single("access_token")?
                    .map(decode_value)
                    .transpose()?;
                let user_id = if route.user_id {
                    query.single("user_id")?.map(decode_value).transpose()?
                } else {
                    None
                };
                let traffic_limit = if route.traffic_limit {
                    query
                        .single("traffic_limit")?
                        .map(|raw| parse_traffic_limit(&decode_value(raw)?))
                        .transpose()?
                } else {
                    None
                };
                (
                    token(query_token, headers)?,
                    user_id.filter(|u| !u.is_empty()),
                    traffic_limit,
                )
            }
        };
        let mut params = Vec::new();
        let mut permanent = false;
        for (i, name) in route.params.iter().enumerate() {
            if let Some(raw) = query.single(name)? {
                let value = decode_value(raw)?;
                if name == "permanent" {
                    permanent = matches!(&*value, "1" | "true");
                }
                params.push((i, value));
            }
        }
        let mut named_spaces = Vec::new();
        for field in &route.spaces {
            if let SpaceField::Query(name) = field
                && let Some(i) = route.params.iter().position(|p| p == name)
                && let Some((_, v)) = params.iter().find(|(at, _)| *at == i)
            {
                if !is_valid_id(v) {
                    return Err(GatewayError::ParamInvalid(
                        "a space id in the query is invalid",
                    ));
                }
                named_spaces.push(NamedSpace {
                    space: v.to_string(),
                    target: false,
                });
            }
        }
        Ok(Operation {
            route,
            values,
            token,
            user_id,
            traffic_limit,
            params,
            permanent,
            named_spaces,
        })
    }
}

/// `library_secret` never passes the gateway (SPEC §11).
pub const LIBRARY_SECRET: GatewayError = GatewayError::ParamInvalid(
    "library_secret is not accepted: the gateway authorises by its own tokens",
);

/// Whether bytes (a query or a form body) name `library_secret` in any spelling a
/// lenient parser might accept: percent-decoded (twice), `+` as space, any case.
pub fn mentions_library_secret(raw: &[u8]) -> bool {
    let mut text = String::from_utf8_lossy(raw).replace('+', " ");
    for _ in 0..2 {
        text = percent_encoding::percent_decode_str(&text)
            .decode_utf8_lossy()
            .into_owned();
    }
    text.to_ascii_lowercase().contains("library_secret")
}

/// The token from the query (SMH's convention) or `Authorization: Bearer` (an
/// extension). Both present and different is a 400: one of them would go unchecked.
fn token<'a>(
    query_token: Option<Cow<'a, str>>,
    headers: &HeaderMap,
) -> Result<Option<Secret<'a>>, GatewayError> {
    let query_token = query_token.filter(|t| !t.is_empty());
    let header_token = bearer(headers)?;
    match (query_token, header_token) {
        (Some(q), Some(h)) if *q != *h => Err(GatewayError::ParamInvalid(
            "access_token in the query and the Authorization header differ",
        )),
        (Some(Cow::Borrowed(t)), _) => Ok(Some(Secret::borrowed(t))),
        (Some(Cow::Owned(t)), _) | (None, Some(t)) => Ok(Some(Secret::new(t))),
        (None, None) => Ok(None),
    }
}

fn bearer(headers: &HeaderMap) -> Result<Option<String>, GatewayError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(GatewayError::ParamInvalid("repeated Authorization header"));
    }
    let value = value
        .to_str()
        .map_err(|_| GatewayError::ParamInvalid("malformed Authorization header"))?;
    let Some((scheme, rest)) = value.split_once(' ') else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        // Another scheme is not a token for us; it is not forwarded either.
        return Ok(None);
    }
    let t = rest.trim();
    // A header value may hold a tab; a token never does, and forwarded as
    // `access_token` it would be refused on the way in (found by fuzzing: the
    // rebuilt query did not re-match its row).
    if t.bytes().any(|b| b.is_ascii_control()) {
        return Err(GatewayError::ParamInvalid(
            "control character in the Authorization header",
        ));
    }
    Ok((!t.is_empty()).then(|| t.to_string()))
}

/// SPEC §4: ASCII digits only, huge values saturate (they are clamped to max later).
pub fn parse_traffic_limit(value: &str) -> Result<u64, GatewayError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(GatewayError::ParamInvalid(
            "traffic_limit must be a whole number of bytes per second",
        ));
    }
    Ok(value.bytes().fold(0u64, |acc, b| {
        acc.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

/// A query value: `+` is a space (form encoding, as SMH's SDKs send it), `%XX` is
/// decoded, control characters are refused.
fn decode_value(raw: &str) -> Result<Cow<'_, str>, GatewayError> {
    // The common case (a JWT, an id): printable ASCII, nothing to decode.
    if PLAIN.all(raw.as_bytes()) {
        return Ok(Cow::Borrowed(raw));
    }
    let spaced;
    let raw = if raw.contains('+') {
        spaced = raw.replace('+', " ");
        spaced.as_str()
    } else {
        raw
    };
    let decoded = percent_decode_strict(raw).ok_or(GatewayError::ParamInvalid(
        "malformed percent-encoding in the query",
    ))?;
    if decoded.chars().any(char::is_control) {
        return Err(GatewayError::ParamInvalid(
            "control character in a query parameter",
        ));
    }
    Ok(Cow::Owned(decoded))
}

/// Printable ASCII but `+` and `%`: a query value made only of these is itself.
static PLAIN: ByteClass = crate::byte_class!(|c| c.is_ascii_graphic() && c != b'+' && c != b'%');

/// Percent-decoding that refuses what lenient decoders pass through: a `%` not
/// followed by two hex digits, and bytes that are not UTF-8.
fn percent_decode_strict(raw: &str) -> Option<String> {
    percent_decode_cow(raw).map(Cow::into_owned)
}

/// As [`percent_decode_strict`], borrowing when there is nothing to decode.
fn percent_decode_cow(raw: &str) -> Option<Cow<'_, str>> {
    if !raw.contains('%') {
        return Some(Cow::Borrowed(raw));
    }
    let bytes = raw.as_bytes();
    let mut i = 0;
    while let Some(off) = bytes[i..].iter().position(|&b| b == b'%') {
        let at = i + off;
        let hex = bytes.get(at + 1..at + 3)?;
        if !hex.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        i = at + 3;
    }
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()
        .map(|c| Cow::Owned(c.into_owned()))
}

/// The raw query as `key[=value]` pairs in order; keys decoded (form rules), values
/// kept raw until a phase asks for one.
struct Query<'a> {
    pairs: Vec<(Cow<'a, str>, &'a str)>,
}

impl<'a> Query<'a> {
    fn parse(query: &'a str) -> Self {
        // Pairs split by memchr: the values include the whole token, and a
        // `str::split` over it cost more than the rest of routing.
        let mut pairs = Vec::with_capacity(4);
        let mut start = 0;
        let bytes = query.as_bytes();
        while start <= bytes.len() {
            let end = memchr::memchr(b'&', &bytes[start..]).map_or(bytes.len(), |at| start + at);
            let pair = &query[start..end];
            start = end + 1;
            if pair.is_empty() {
                continue;
            }
            // Keys are short: a byte loop finds their end and tells what they hold.
            let (k, v) = match pair.bytes().position(|b| b == b'=') {
                Some(at) => (&pair[..at], &pair[at + 1..]),
                None => (pair, ""),
            };
            let key = if !k.bytes().any(|b| b == b'+' || b == b'%') {
                Cow::Borrowed(k)
            } else if k.contains('+') {
                Cow::Owned(
                    percent_decode_cow(&k.replace('+', " "))
                        .map(Cow::into_owned)
                        .unwrap_or_default(),
                )
            } else {
                // An undecodable key cannot be one we know; it is dropped with the rest.
                percent_decode_cow(k).unwrap_or_default()
            };
            pairs.push((key, v));
        }
        Query { pairs }
    }

    fn has(&self, key: &str) -> bool {
        self.pairs.iter().any(|(k, _)| k == key)
    }

    /// The raw value of a parameter that may appear at most once.
    fn single(&self, key: &str) -> Result<Option<&'a str>, GatewayError> {
        let mut found = self.pairs.iter().filter(|(k, _)| k == key).map(|(_, v)| *v);
        let first = found.next();
        if found.next().is_some() {
            return Err(GatewayError::ParamInvalid("repeated query parameter"));
        }
        Ok(first)
    }
}

#[cfg(test)]
mod tests;
