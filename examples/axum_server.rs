//! An axum server that restarts gracefully on SIGUSR2 through grestart.
//!
//! ```text
//! cargo build --features axum --example axum_server
//! target/debug/examples/axum_server 127.0.0.1:8080
//! kill -USR2 <pid>    # restart onto the binary on disk; nothing is lost
//! ```
//!
//! Every GET (and POST) is answered with 200 and the headers `X-Pid`,
//! `X-Generation` and `X-Version`. What grestart adds to a plain axum server
//! is marked `// grestart`: the listener, the middleware, the drain.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::middleware::map_response;
use axum::routing::get;
use grestart::limits::DEFAULT_IDLE_GRACE;

const VERSION: &str = match option_env!("APP_VERSION") {
    Some(v) => v,
    None => "1",
};

struct App {
    pid: u32,
    generation: u64,
    served: AtomicU64,
}

async fn hello(State(app): State<Arc<App>>) -> (HeaderMap, String) {
    app.served.fetch_add(1, Ordering::Relaxed);
    let mut headers = HeaderMap::new();
    headers.insert("x-pid", app.pid.into());
    headers.insert("x-generation", app.generation.into());
    headers.insert("x-version", VERSION.parse().expect("a header value"));
    let body = format!("served by pid {} generation {}\n", app.pid, app.generation);
    (headers, body)
}

#[tokio::main]
async fn main() {
    let Some(address) = std::env::args().nth(1) else {
        eprintln!("usage: axum_server HOST:PORT   (e.g. 127.0.0.1:8080)");
        std::process::exit(2);
    };
    if let Err(e) = run(&address).await {
        eprintln!("axum_server: {e}");
        std::process::exit(1);
    }
}

async fn run(address: &str) -> std::io::Result<()> {
    let app = Arc::new(App {
        pid: std::process::id(),
        generation: grestart::generation()?,
        served: AtomicU64::new(0),
    });
    let for_hook = Arc::clone(&app);
    grestart::on_shutdown(move || {
        eprintln!(
            "axum_server: pid {} generation {} exiting after {} requests",
            for_hook.pid,
            for_hook.generation,
            for_hook.served.load(Ordering::Relaxed)
        );
    })?;

    let router = Router::new()
        .route("/", get(hello).post(hello))
        .fallback(hello)
        .with_state(Arc::clone(&app))
        .layer(map_response(grestart::tokio::close_when_draining)); // grestart
    let listener = grestart::tokio::listen_tcp(address)?; // grestart: inherited, or new
    let bound = listener.local_addr()?;
    println!(
        "axum_server: pid {} generation {} version {VERSION} listening on {bound}",
        app.pid, app.generation
    );
    grestart::ready()?; // grestart: the previous generation drains now
    axum::serve(grestart::tokio::Incoming::new(listener), router) // grestart: ends on drain
        .with_graceful_shutdown(grestart::tokio::drained(DEFAULT_IDLE_GRACE)) // grestart
        .await?;
    grestart::shutdown() // grestart: the hooks, once every connection is closed
}
