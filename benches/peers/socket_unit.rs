//! The baseline without a graceful restart library: a server under systemd
//! socket activation, restarted by `systemctl restart`. systemd holds the
//! listening socket (the `.socket` unit), so no connection is refused while
//! no process serves: new ones wait in its queue. What the old process was
//! serving when SIGTERM ended it is lost. The service has no start rate
//! limit (`StartLimitIntervalSec=0`): 40 restarts in a row are not a crash
//! loop, and by default the sixth start within 10 s fails. systemd runs as PID 1 of a
//! container (testkit's `Systemd`), on our network.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::{Systemd, TempDir};

use crate::{Peer, first_answer_from};

pub struct SocketUnit {
    systemd: Systemd,
    addr: SocketAddr,
    pid: i32,
}

impl SocketUnit {
    pub fn start() -> SocketUnit {
        let build = TempDir::new("peers-plain-server");
        let server = build.join("plain_server");
        let source = testkit::repo().join("benches/peers/plain_server.c");
        testkit::run(
            Command::new("cc")
                .args(["-Wall", "-Wextra", "-Werror", "-O2", "-pthread"])
                .arg(&source)
                .arg("-o")
                .arg(&server),
        );
        let systemd = Systemd::boot(&[]);
        let installed = systemd.root().join("srv/peer/plain_server");
        std::fs::create_dir_all(installed.parent().expect("a directory")).expect("/srv/peer");
        std::fs::copy(&server, &installed).expect("install the server");
        let port = testkit::free_port();
        systemd.install(
            "/etc/systemd/system/peer.socket",
            &format!("[Socket]\nListenStream=127.0.0.1:{port}\nService=peer.service\n"),
        );
        systemd.install(
            "/etc/systemd/system/peer.service",
            "[Unit]\nRequires=peer.socket\nAfter=peer.socket\nStartLimitIntervalSec=0\n\n\
             [Service]\nExecStart=/srv/peer/plain_server\nSockets=peer.socket\n",
        );
        systemd.run(&["systemctl", "daemon-reload"]);
        systemd.run(&["systemctl", "start", "peer.socket", "peer.service"]);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let (_, pid) = first_answer_from(addr, &[], Instant::now(), None);
        SocketUnit { systemd, addr, pid }
    }
}

impl Peer for SocketUnit {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn restart(&mut self) -> Duration {
        let signalled = Instant::now();
        let mut restart = self
            .systemd
            .command(&["systemctl", "restart", "peer.service"])
            .spawn()
            .expect("systemctl restart");
        let (latency, pid) = first_answer_from(self.addr, &[self.pid], signalled, None);
        assert!(
            restart.wait().expect("systemctl restart").success(),
            "systemctl restart peer.service failed"
        );
        self.pid = pid;
        latency
    }
}
