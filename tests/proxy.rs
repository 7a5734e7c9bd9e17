//! Behind a real reverse proxy: nginx with an upstream keep-alive pool in
//! front of the C example and of the aiohttp adapter, wrk sending POST requests through it (nginx
//! retries a failed GET on its own and so hides a lost request; it never
//! retries a POST), the backend restarted 10 times: not one 502. Every
//! pooled connection the old generation holds idle is handed to the
//! successor instead of being closed under nginx's feet.
//!
//! Needs nginx and wrk (Debian's packages; `scripts/test` installs them).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use testkit::{Server, TempDir};

const RESTARTS: usize = 10;

/// nginx in `dir`, proxying 127.0.0.1:`port` to `backend` with a keep-alive pool.
fn start_nginx(dir: &Path, port: u16, backend: std::net::SocketAddr) -> Child {
    let d = dir.display();
    let conf = format!(
        "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           upstream backend {{ server {backend}; keepalive 64; }}\n\
           server {{\n    listen 127.0.0.1:{port};\n\
             location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n  }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let mut child = Command::new("nginx")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdin(Stdio::null())
        .spawn()
        .expect("nginx (scripts/test installs it)");
    // Up when it answers through to the backend.
    let addr = ([127, 0, 0, 1], port).into();
    for _ in 0..500 {
        if testkit::get(addr, true).is_ok() {
            return child;
        }
        thread::sleep(Duration::from_millis(10)); // nginx gives no readiness signal
    }
    testkit::kill(child.id() as i32, libc::SIGTERM);
    let _ = child.wait();
    panic!("nginx did not answer on port {port}");
}

#[test]
fn behind_nginx_the_c_example_sees_no_502_across_restarts() {
    let dir = TempDir::new("proxy-c");
    let binary = dir.join("http_server");
    testkit::build_c_example(&binary, 1);
    behind_nginx(&dir, Command::new(&binary));
}

/// The case measured with aiohttp glued to grestart the obvious way: 252 502s
/// over 8 restarts, one per pooled connection.
#[test]
fn behind_nginx_the_aiohttp_adapter_sees_no_502_across_restarts() {
    let dir = TempDir::new("proxy-aiohttp");
    behind_nginx(&dir, testkit::python_example("aiohttp_server.py"));
}

fn behind_nginx(dir: &TempDir, mut command: Command) {
    testkit::become_subreaper();
    command.arg("127.0.0.1:0").env("GRESTART_LOG", "warn");
    let mut server = Server::launch(command);
    let port = testkit::free_port();
    let mut nginx = start_nginx(&dir.0, port, server.addr);
    std::fs::write(
        dir.join("post.lua"),
        "wrk.method = \"POST\"\nwrk.body = \"name=grestart&restarts=10\"\n\
         wrk.headers[\"Content-Type\"] = \"application/x-www-form-urlencoded\"\n",
    )
    .unwrap();
    let wrk = |connections: &str, seconds: &str| {
        Command::new("wrk")
            .args(["-t2", connections, seconds, "-s"])
            .arg(dir.join("post.lua"))
            .arg(format!("http://127.0.0.1:{port}/"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("wrk (scripts/test installs it)")
    };
    // A burst fills nginx's pool with 32 connections; a lighter load then
    // leaves most of them idle in the pool while the backend restarts, the
    // case where a draining backend closing idle connections makes 502s.
    let burst = wrk("-c32", "-d1s").wait_with_output().expect("wrk's burst");
    assert!(
        !String::from_utf8_lossy(&burst.stdout).contains("Non-2xx"),
        "{}",
        String::from_utf8_lossy(&burst.stdout)
    );
    let wrk = wrk("-c4", "-d5s");
    thread::sleep(Duration::from_millis(200)); // under way before the first restart
    let mut gone_after = Vec::new();
    for _ in 0..RESTARTS {
        let leaving = server.hand_over(libc::SIGUSR2);
        let answered = std::time::Instant::now();
        // The pooled connections, idle, go to the successor: nothing holds
        // the old generation back.
        server.wait_gone(&leaving, Duration::from_secs(10));
        gone_after.push(answered.elapsed());
        thread::sleep(Duration::from_millis(300)); // restarts spread over the run
    }
    let out = wrk.wait_with_output().expect("wrk's report");
    let report = String::from_utf8_lossy(&out.stdout);
    println!("{report}");
    // SIGTERM: the master stops its workers (SIGKILL would orphan them).
    testkit::kill(nginx.id() as i32, libc::SIGTERM);
    let _ = nginx.wait();
    let errors = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
    server.stop();
    assert!(out.status.success(), "wrk failed: {report}");
    gone_after.sort();
    println!("old generations gone after the successor's first answer: {gone_after:?}");
    assert!(
        gone_after[RESTARTS - 1] < Duration::from_secs(1),
        "the old generation lingered with idle pooled connections: {gone_after:?}"
    );
    assert!(
        report.contains("requests in"),
        "wrk reported no requests: {report}"
    );
    assert!(
        !report.contains("Non-2xx or 3xx responses"),
        "502s behind nginx: {report}\nnginx: {errors}"
    );
    assert!(!report.contains("Socket errors"), "socket errors: {report}");
    assert!(
        !errors.contains("upstream"),
        "nginx lost requests to the backend: {errors}"
    );
}
