//! The `/metrics` endpoint.
use std::{net::SocketAddr, sync::Arc};

use axum::{
    Router,
    extract::{Query, State},
    http::StatusCode,
    response::IntoResponse,
    routing::get,
};
use tokio::net::TcpListener;

use super::{heatmap, metrics::Metrics};
use crate::collect::{alloc::AllocProfile, maps::MapView};

const INDEX: &str = "mapscope: Prometheus metrics at /metrics, allocation profile (pprof) at \
                     /debug/pprof/allocs, map snapshots at /debug/maps (JSON) and \
                     /debug/maps/heatmap.svg (?site=PATTERN filters both)\n";

/// What the endpoints serve.
#[derive(Clone)]
pub struct Served {
    pub metrics: Arc<Metrics>,
    pub allocs: AllocProfile,
    pub maps: MapView,
}

#[derive(serde::Deserialize)]
struct MapQuery {
    site: Option<String>,
}

/// Serve until `shutdown` resolves. The listener is bound by the caller, so a taken address
/// is reported before any probe is attached.
pub async fn serve(
    listener: TcpListener,
    served: Served,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = Router::new()
        .route("/", get(|| async { INDEX }))
        .route("/metrics", get(scrape))
        .route("/debug/pprof/allocs", get(allocs))
        .route("/debug/maps", get(maps_json))
        .route("/debug/maps/heatmap.svg", get(maps_svg))
        .with_state(served);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// The allocations sampled since mapscope attached, as a gzipped pprof profile (`go tool pprof
/// http://ADDR/debug/pprof/allocs`).
async fn allocs(State(served): State<Served>) -> impl IntoResponse {
    let profile = served.allocs.lock().ok().and_then(|current| {
        current
            .as_ref()
            .map(|snapshot| snapshot.to_pprof().encode())
    });
    match profile {
        Some(Ok(bytes)) => (
            StatusCode::OK,
            [("content-type", "application/octet-stream")],
            bytes,
        ),
        Some(Err(error)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/plain; charset=utf-8")],
            format!("encoding the profile failed: {error}\n").into_bytes(),
        ),
        None => (
            StatusCode::NOT_FOUND,
            [("content-type", "text/plain; charset=utf-8")],
            b"no allocation profile: sampling is off in this target or nothing was read yet\n"
                .to_vec(),
        ),
    }
}

/// The latest snapshot of each tracked map, with distributions and heatmap bands.
async fn maps_json(
    State(served): State<Served>,
    Query(query): Query<MapQuery>,
) -> impl IntoResponse {
    let reports = served
        .maps
        .lock()
        .map(|view| view.clone())
        .unwrap_or_default();
    match heatmap::to_json(&heatmap::matching(&reports, query.site.as_deref())) {
        Ok(json) => (StatusCode::OK, [("content-type", "application/json")], json),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/plain; charset=utf-8")],
            format!("encoding the maps failed: {error}\n"),
        ),
    }
}

async fn maps_svg(
    State(served): State<Served>,
    Query(query): Query<MapQuery>,
) -> impl IntoResponse {
    let reports = served
        .maps
        .lock()
        .map(|view| view.clone())
        .unwrap_or_default();
    let svg = heatmap::to_svg(&heatmap::matching(&reports, query.site.as_deref()));
    (StatusCode::OK, [("content-type", "image/svg+xml")], svg)
}

async fn scrape(State(served): State<Served>) -> impl IntoResponse {
    match served.metrics.encode() {
        Ok(text) => (
            StatusCode::OK,
            [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
            text,
        ),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/plain; charset=utf-8")],
            format!("encoding metrics failed: {error}\n"),
        ),
    }
}

/// Bind now (synchronously) so "address in use" is known before attaching.
pub fn bind(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(address)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}
