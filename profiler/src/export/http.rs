//! The HTTP endpoint: `/metrics` for Prometheus, and per target its allocation profile and map
//! snapshots (`?pid=N` picks the target when there are several). Optionally behind TLS and
//! basic auth (`webconfig`).
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    extract::{Query, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::net::TcpListener;

use super::{heatmap, metrics::Metrics, webconfig::WebConfig};
use crate::collect::{
    alloc::AllocProfile,
    maps::{MapReport, MapView},
};

const INDEX: &str = "mapscope: Prometheus metrics at /metrics, allocation profile (pprof) at \
                     /debug/pprof/allocs, native (C allocator) allocation profile at \
                     /debug/pprof/native, the maps with their heatmaps for a person at /maps, \
                     map snapshots at /debug/maps (JSON), /debug/maps/heatmap.svg and \
                     /debug/maps/heatmap.png (?site=PATTERN filters them; ?pid=N picks the \
                     target when there are several; ?addresses=1 shows the maps' addresses in \
                     the target, withheld otherwise)\n";

/// One target's latest allocation profile and map snapshots.
#[derive(Clone)]
pub struct TargetView {
    /// How the target is named on pages: `PID 123 (checkout, go1.27.3)`.
    pub name: String,
    pub allocs: AllocProfile,
    /// The sampled native allocations, when its C allocator is probed.
    pub native: AllocProfile,
    pub maps: MapView,
}

/// The views of every target being profiled, by PID.
#[derive(Clone, Default)]
pub struct TargetViews(Arc<Mutex<BTreeMap<u32, TargetView>>>);

impl TargetViews {
    pub fn insert(&self, pid: u32, view: TargetView) {
        if let Ok(mut views) = self.0.lock() {
            views.insert(pid, view);
        }
    }

    pub fn remove(&self, pid: u32) {
        if let Ok(mut views) = self.0.lock() {
            views.remove(&pid);
        }
    }

    /// The target `pid`, or the only one when no PID is given.
    fn pick(&self, pid: Option<u32>) -> Result<TargetView, (StatusCode, String)> {
        let views = self
            .0
            .lock()
            .map_err(|_| (StatusCode::INTERNAL_SERVER_ERROR, "poisoned\n".to_owned()))?;
        match pid {
            Some(pid) => views.get(&pid).cloned().ok_or_else(|| {
                (
                    StatusCode::NOT_FOUND,
                    format!("PID {pid} is not profiled here\n"),
                )
            }),
            None if views.len() == 1 => views.values().next().cloned().ok_or((
                StatusCode::NOT_FOUND,
                "no target is profiled yet\n".to_owned(),
            )),
            None if views.is_empty() => Err((
                StatusCode::NOT_FOUND,
                "no target is profiled yet\n".to_owned(),
            )),
            None => Err((
                StatusCode::BAD_REQUEST,
                format!(
                    "several targets are profiled here: add ?pid= one of {}\n",
                    views
                        .keys()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }
}

/// What the endpoints serve.
#[derive(Clone)]
pub struct Served {
    pub metrics: Arc<Metrics>,
    pub targets: TargetViews,
}

#[derive(serde::Deserialize)]
struct TargetQuery {
    pid: Option<u32>,
    site: Option<String>,
    /// `?addresses=1`: show the maps' addresses in the target (withheld otherwise).
    addresses: Option<String>,
}

impl TargetQuery {
    fn addresses(&self) -> bool {
        self.addresses
            .as_deref()
            .is_some_and(|value| !matches!(value, "0" | "false" | "no"))
    }
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// Serve until `shutdown` resolves. The listener is bound by the caller, so a taken address
/// is reported before any probe is attached. With `web`, requests need its credentials and,
/// if it has a certificate, TLS.
pub async fn serve(
    listener: TcpListener,
    served: Served,
    web: Option<Arc<WebConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut router = Router::new()
        .route("/", get(|| async { INDEX }))
        .route("/metrics", get(scrape))
        .route("/debug/pprof/allocs", get(allocs))
        .route("/debug/pprof/native", get(native))
        .route("/debug/maps", get(maps_json))
        .route("/debug/maps/heatmap.svg", get(maps_svg))
        .route("/debug/maps/heatmap.png", get(maps_png))
        .route("/maps", get(maps_page))
        .with_state(served);
    if let Some(web) = web.as_ref().filter(|web| web.requires_auth()) {
        router = router.layer(middleware::from_fn_with_state(Arc::clone(web), basic_auth));
    }
    accept(
        listener,
        router,
        web.and_then(|web| web.tls.clone()),
        shutdown,
    )
    .await;
    Ok(())
}

async fn basic_auth(State(web): State<Arc<WebConfig>>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    // Credentials seen lately are answered at once (Prometheus sends the same every scrape).
    // Others take a bcrypt check, tens of milliseconds by design: off the async workers, and a
    // few at a time, so a flood of wrong passwords neither burns every core nor holds up the
    // scrapes.
    let allowed = match web.cached(given) {
        Some(allowed) => allowed,
        None => {
            let _turn = web.turn().await;
            let given = given.map(str::to_owned);
            let check = Arc::clone(&web);
            tokio::task::spawn_blocking(move || check.authorized(given.as_deref()))
                .await
                .unwrap_or(false)
        }
    };
    if allowed {
        return next.run(request).await;
    }
    let mut response = text(StatusCode::UNAUTHORIZED, "unauthorized\n".to_owned());
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"mapscope\""),
    );
    response
}

/// Connections served at once at most; more wait in the kernel's backlog until one ends.
const MAX_CONNECTIONS: usize = 64;
/// A client must finish its TLS handshake, and send each request's headers, within this.
const CLIENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Accept connections until `shutdown`, each served on its own task, over TLS with `tls`. A
/// client that does not finish its handshake or its request headers within `CLIENT_TIMEOUT` is
/// dropped (a half-sent request must not hold a connection forever), and at most
/// `MAX_CONNECTIONS` are served at once.
async fn accept(
    listener: TcpListener,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            () = &mut shutdown => return,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        let (tcp, _) = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::debug!("accepting a connection: {error}");
                    continue;
                }
            },
        };
        let tls = tls.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tls {
                None => serve_connection(tcp, router).await,
                Some(acceptor) => {
                    // A TLS connection opens with a handshake record (0x16); anything else is
                    // plain HTTP to the HTTPS port, answered in HTTP with what to do instead of
                    // a TLS alert no HTTP client shows.
                    let mut first = [0_u8; 1];
                    match tokio::time::timeout(CLIENT_TIMEOUT, tcp.peek(&mut first)).await {
                        Ok(Ok(1)) if first[0] != TLS_HANDSHAKE => {
                            refuse_plain_http(tcp).await;
                            return;
                        }
                        Ok(Ok(_)) => {}
                        _ => return,
                    }
                    let handshake = tokio::time::timeout(CLIENT_TIMEOUT, acceptor.accept(tcp));
                    if let Ok(Ok(stream)) = handshake.await {
                        serve_connection(stream, router).await;
                    }
                }
            }
        });
    }
}

/// The first byte of a TLS connection: a handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Answer plain HTTP on the HTTPS port with 400 and the reason, then hang up.
async fn refuse_plain_http(mut tcp: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt as _;
    let body = "this port speaks HTTPS (the web config has tls_server_config): use https://\n";
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: \
         {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(CLIENT_TIMEOUT, tcp.write_all(response.as_bytes())).await;
    let _ = tcp.shutdown().await;
}

/// HTTP/1.1 (or HTTP/2) on one connection, with a deadline for each request's headers.
async fn serve_connection(
    stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    router: Router,
) {
    let service = hyper_util::service::TowerToHyperService::new(router);
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(CLIENT_TIMEOUT);
    let _ = builder
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await;
}

/// A target's allocations sampled since mapscope attached, as a gzipped pprof profile (`go
/// tool pprof http://ADDR/debug/pprof/allocs`).
async fn allocs(State(served): State<Served>, Query(query): Query<TargetQuery>) -> Response {
    let view = match served.targets.pick(query.pid) {
        Ok(view) => view,
        Err((status, message)) => return text(status, message),
    };
    profile_response(
        &view.allocs,
        "no allocation profile: sampling is off in this target or nothing was read yet\n",
    )
}

/// A target's native (C allocator) allocations sampled since mapscope attached, as a gzipped
/// pprof profile (`go tool pprof http://ADDR/debug/pprof/native`).
async fn native(State(served): State<Served>, Query(query): Query<TargetQuery>) -> Response {
    let view = match served.targets.pick(query.pid) {
        Ok(view) => view,
        Err((status, message)) => return text(status, message),
    };
    profile_response(
        &view.native,
        "no native allocation profile: no C allocator is probed in this target, or nothing was \
         sampled yet\n",
    )
}

/// `profile` gzipped as pprof, or `missing` (404) when there is none.
fn profile_response(profile: &AllocProfile, missing: &str) -> Response {
    let profile = profile.lock().ok().and_then(|current| {
        current
            .as_ref()
            .map(|snapshot| snapshot.to_pprof().encode())
    });
    match profile {
        Some(Ok(bytes)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/octet-stream")],
            bytes,
        )
            .into_response(),
        Some(Err(error)) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the profile failed: {error}\n"),
        ),
        None => text(StatusCode::NOT_FOUND, missing.to_owned()),
    }
}

/// The latest map snapshots of the target `pid` picks, or why there are none.
fn map_reports(served: &Served, pid: Option<u32>) -> Result<Vec<MapReport>, (StatusCode, String)> {
    let view = served.targets.pick(pid)?;
    Ok(view
        .maps
        .lock()
        .map(|view| view.clone())
        .unwrap_or_default())
}

/// Draw a target's maps with `draw`, off the async workers (comparing a big swiss map with a
/// random hash simulates up to a million inserts; a PNG takes tens of milliseconds and up to
/// hundreds of MB), one drawing at a time, so that requests cannot pile up CPU and memory.
async fn drawn<T: Send + 'static>(
    served: &Served,
    query: TargetQuery,
    draw: impl FnOnce(&[&MapReport]) -> Result<T, String> + Send + 'static,
) -> Result<T, Response> {
    static DRAWING: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    let mut reports =
        map_reports(served, query.pid).map_err(|(status, message)| text(status, message))?;
    if !query.addresses() {
        reports = reports.into_iter().map(MapReport::withhold).collect();
    }
    let failed = |error: String| {
        text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("drawing the maps failed: {error}\n"),
        )
    };
    let _turn = DRAWING
        .get_or_init(|| tokio::sync::Semaphore::new(1))
        .acquire()
        .await
        .map_err(|error| failed(error.to_string()))?;
    tokio::task::spawn_blocking(move || draw(&heatmap::matching(&reports, query.site.as_deref())))
        .await
        .map_err(|error| failed(error.to_string()))?
        .map_err(failed)
}

/// A target's latest snapshot of each tracked map, with distributions, heatmap bands and the
/// comparison with a random hash.
async fn maps_json(State(served): State<Served>, Query(query): Query<TargetQuery>) -> Response {
    let json = |maps: &[&MapReport]| heatmap::to_json(maps).map_err(|error| error.to_string());
    match drawn(&served, query, json).await {
        Ok(json) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            json,
        )
            .into_response(),
        Err(response) => response,
    }
}

async fn maps_svg(State(served): State<Served>, Query(query): Query<TargetQuery>) -> Response {
    match drawn(&served, query, |maps| Ok(heatmap::to_svg(maps))).await {
        Ok(svg) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "image/svg+xml")],
            svg,
        )
            .into_response(),
        Err(response) => response,
    }
}

async fn maps_png(State(served): State<Served>, Query(query): Query<TargetQuery>) -> Response {
    let png = |maps: &[&MapReport]| {
        heatmap::to_png(&heatmap::to_svg(maps)).map_err(|error| error.to_string())
    };
    match drawn(&served, query, png).await {
        Ok(png) => (StatusCode::OK, [(header::CONTENT_TYPE, "image/png")], png).into_response(),
        Err(response) => response,
    }
}

/// The targets profiled here, each linking to its maps page.
fn targets_page(targets: &[(u32, String)]) -> String {
    let escape = heatmap::escape;
    let items: String = targets
        .iter()
        .map(|(pid, name)| {
            format!(
                "<li><a href=\"/maps?pid={pid}\">{}</a></li>\n",
                escape(name)
            )
        })
        .collect();
    let body = if targets.is_empty() {
        "<p>No target is profiled yet: the daemon attaches to the processes its selectors pick \
         as they start.</p>"
            .to_owned()
    } else {
        format!("<p>Pick a target:</p>\n<ul>\n{items}</ul>")
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>mapscope: \
         maps</title></head>\n<body style=\"font-family: sans-serif\"><h1>mapscope: Go maps</h1>\n\
         {body}\n</body></html>\n"
    )
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

/// The maps of a target for a person: each with its figures, verdict, advice and heatmap.
/// With several targets and no `?pid=`, a list of them to pick from.
async fn maps_page(State(served): State<Served>, Query(query): Query<TargetQuery>) -> Response {
    if query.pid.is_none() {
        let targets: Vec<(u32, String)> = served
            .targets
            .0
            .lock()
            .map(|views| {
                views
                    .iter()
                    .map(|(pid, view)| (*pid, view.name.clone()))
                    .collect()
            })
            .unwrap_or_default();
        if targets.len() != 1 {
            return html(StatusCode::OK, targets_page(&targets));
        }
    }
    let name = match served.targets.pick(query.pid) {
        Ok(view) => view.name,
        Err((status, message)) => return text(status, message),
    };
    let title = format!("mapscope: maps of {name}");
    match drawn(&served, query, move |maps| {
        Ok(heatmap::to_html(&title, maps))
    })
    .await
    {
        Ok(page) => html(StatusCode::OK, page),
        Err(response) => response,
    }
}

async fn scrape(State(served): State<Served>) -> Response {
    match served.metrics.encode() {
        Ok(body) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(error) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
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
