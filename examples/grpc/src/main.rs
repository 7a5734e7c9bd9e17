//! A gRPC server (tonic) that restarts gracefully on SIGUSR2 through grestart.
//!
//! ```text
//! cargo run --release --manifest-path examples/grpc/Cargo.toml -- 127.0.0.1:50051
//! kill -USR2 <pid>    # restart onto the binary on disk; no call fails
//! ```
//!
//! The service is `echo.proto`: a unary `Echo` answered with this process's
//! pid and generation, and a server-streaming `Ticks`. On drain tonic sends
//! HTTP/2 `GOAWAY`: clients start their next calls on a new connection, which
//! the successor accepts, while the calls and streams in flight here finish.
//! What grestart adds to a plain tonic server is marked `// grestart`.

use std::pin::Pin;
use std::time::Duration;

use tokio_stream::wrappers::{IntervalStream, TcpListenerStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use echo::echo_server::{Echo, EchoServer};
use echo::{EchoReply, EchoRequest, Tick, TicksRequest};

mod echo {
    tonic::include_proto!("echo");
}

const VERSION: &str = match option_env!("APP_VERSION") {
    Some(v) => v,
    None => "1",
};

struct Service {
    pid: u32,
    generation: u64,
}

#[tonic::async_trait]
impl Echo for Service {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        Ok(Response::new(EchoReply {
            message: request.into_inner().message,
            pid: self.pid,
            generation: self.generation,
        }))
    }

    type TicksStream = Pin<Box<dyn Stream<Item = Result<Tick, Status>> + Send>>;

    async fn ticks(
        &self,
        request: Request<TicksRequest>,
    ) -> Result<Response<Self::TicksStream>, Status> {
        let TicksRequest { count, interval_ms } = request.into_inner();
        // tokio's interval panics on a zero period, which a client may ask for.
        let interval = tokio::time::interval(Duration::from_millis(interval_ms.max(1).into()));
        let pid = self.pid;
        let mut n = 0;
        let ticks = IntervalStream::new(interval)
            .take(count as usize)
            .map(move |_| {
                n += 1;
                Ok(Tick { n, pid })
            });
        Ok(Response::new(Box::pin(ticks)))
    }
}

#[tokio::main]
async fn main() {
    let Some(address) = std::env::args().nth(1) else {
        eprintln!("usage: grpc_server HOST:PORT   (e.g. 127.0.0.1:50051)");
        std::process::exit(2);
    };
    if let Err(e) = run(&address).await {
        eprintln!("grpc_server: {e}");
        std::process::exit(1);
    }
}

async fn run(address: &str) -> Result<(), Box<dyn std::error::Error>> {
    let service = Service {
        pid: std::process::id(),
        generation: grestart::generation()?,
    };
    let (pid, generation) = (service.pid, service.generation);
    grestart::on_shutdown(move || {
        eprintln!("grpc_server: pid {pid} generation {generation} exiting");
    })?;

    let listener = grestart::tokio::listen_tcp(address)?; // grestart: inherited, or new
    let bound = listener.local_addr()?;
    println!(
        "grpc_server: pid {pid} generation {generation} version {VERSION} listening on {bound}"
    );
    grestart::ready()?; // grestart: the previous generation drains now
    tonic::transport::Server::builder()
        .add_service(EchoServer::new(service))
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(listener),
            // grestart: on drain, GOAWAY; returns once every call and stream ended
            async { grestart::tokio::shutdown_requested().await.unwrap_or(()) },
        )
        .await?;
    grestart::shutdown()?; // grestart: the hooks
    Ok(())
}
