//! smh-gateway: a reverse proxy in front of Smart Media Hosting (SMH) that verifies
//! access tokens, enforces SMH's permissions and scopes, clamps traffic_limit and
//! forwards exactly what it checked. `../README.md` has the whole picture; the
//! request pipeline starts in [`proxy`].
//!
//! Module map, in the order a request meets them:
//! - [`server`]: listeners, TLS, connection limits, graceful drain, reload
//! - [`limit`]: the connection and in-flight counters whose capacity follows reload
//! - [`proxy`]: the pipeline (`route` → `auth` → `policy` → `rewrite` → `cache` → `upstream`)
//! - [`ratelimit`]: per-library, per-user and auth-failure limits (memory or Redis)
//! - [`cache`]: renew answers cached and coalesced (memory or Redis)
//! - [`error`]: the one mapping from an error to status and SMH code
//! - [`access_log`]: one JSON line per request
//! - [`admin`]: `/healthz`, `/readyz`
//! - [`config`]: the TOML file, validated
//! - [`text`]: hot-path text writers (addresses) without `core::fmt`
//!
//! - [`tasks`]: background tasks started and stopped from one place
//!
//! Shared by the upstream client and the JWKS fetches: [`tls_client`].
//!
//! Tools around it: [`token`] (minting), [`mock_upstream`], [`demo`].

pub mod access_log;
pub mod admin;
pub mod alloc;
pub mod cache;
pub mod config;
pub mod demo;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod limit;
pub mod log;
pub mod metrics;
pub mod mock_upstream;
pub mod proxy;
pub mod ratelimit;
pub mod redis_link;
pub mod request_id;
pub mod secret;
pub mod server;
pub mod smh;
pub mod tasks;
pub mod template;
pub mod text;
pub mod tls_client;
pub mod token;
pub mod trim;
