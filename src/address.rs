//! Addresses for inherit-or-listen: `tcp://127.0.0.1:8080`, `tcp6://[::1]:8080`,
//! `udp://0.0.0.0:5353`, `unix:/run/app.sock`, `unix:@abstract`.
//!
//! An inherited socket is matched by the address it is actually bound to, not
//! by the text, so `tcp` vs `tcp4` or a different spelling of the same address
//! cannot pick the wrong socket, and `0.0.0.0` never matches `127.0.0.1`.
//!
//! One equivalence is made on purpose: a wildcard request (`tcp://0.0.0.0:P`,
//! `tcp://:P`, `tcp://[::]:P`) matches a dual-stack `[::]:P` socket
//! (`IPV6_V6ONLY` off), which serves IPv4 too. That is what systemd's
//! `ListenStream=P` and `systemd-socket-activate -l P` create, and binding
//! `0.0.0.0:P` beside it would fail with `EADDRINUSE`.

use std::io;
use std::mem::ManuallyDrop;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs, UdpSocket};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{self, UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::socket::{Backlog, SockType, getsockopt, listen, sockopt};

use crate::error::{fail, with_context};
use crate::sys::socket_type;

/// A parsed listen address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Address {
    Tcp(SocketAddr),
    Udp(SocketAddr),
    UnixPath(PathBuf),
    UnixAbstract(Vec<u8>),
}

impl Address {
    pub(crate) fn parse(text: &str) -> io::Result<Address> {
        let invalid = |why: &str| fail(libc::EINVAL, format!("address {text:?}: {why}"));
        if let Some(rest) = text.strip_prefix("unix:") {
            return match rest.strip_prefix('@') {
                Some(name) if !name.is_empty() => {
                    Ok(Address::UnixAbstract(name.as_bytes().to_vec()))
                }
                _ if rest.is_empty() || rest == "@" => Err(invalid("no socket path after unix:")),
                _ => Ok(Address::UnixPath(PathBuf::from(rest))),
            };
        }
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| invalid("expected tcp://HOST:PORT, udp://HOST:PORT or unix:PATH"))?;
        let (datagram, family) = match scheme {
            "tcp" => (false, None),
            "tcp4" => (false, Some(true)),
            "tcp6" => (false, Some(false)),
            "udp" => (true, None),
            "udp4" => (true, Some(true)),
            "udp6" => (true, Some(false)),
            _ => {
                return Err(invalid(
                    "the scheme must be tcp, tcp4, tcp6, udp, udp4, udp6 or unix",
                ));
            }
        };
        // ":8080" listens on every address of the family, as in Go.
        let host_port = match (rest.starts_with(':'), family) {
            (true, Some(false)) => format!("[::]{rest}"),
            (true, _) => format!("0.0.0.0{rest}"),
            (false, _) => rest.to_string(),
        };
        let resolved = host_port
            .to_socket_addrs()
            .map_err(|e| invalid(&e.to_string()))?
            .find(|a| family.is_none_or(|v4| a.is_ipv4() == v4))
            .ok_or_else(|| invalid("resolves to no address of that family"))?;
        Ok(if datagram {
            Address::Udp(resolved)
        } else {
            Address::Tcp(resolved)
        })
    }

    /// The listener name used when the caller gives none: the address with
    /// every `:` (which systemd reserves as the name separator) turned into `_`.
    pub(crate) fn default_name(text: &str) -> String {
        text.replace(':', "_")
    }

    /// Whether `fd` is a socket of this kind bound to exactly this address.
    pub(crate) fn is_bound_by(&self, fd: BorrowedFd<'_>) -> bool {
        match (self, socket_type(fd)) {
            (Address::Tcp(want), Some(SockType::Stream)) => {
                same_inet(*want, peek(fd, |s: &TcpListener| s.local_addr()), fd)
            }
            (Address::Udp(want), Some(SockType::Datagram)) => {
                same_inet(*want, peek(fd, |s: &UdpSocket| s.local_addr()), fd)
            }
            (Address::UnixPath(want), Some(SockType::Stream)) => {
                peek(fd, |s: &UnixListener| s.local_addr().ok())
                    .is_some_and(|a| a.as_pathname() == Some(want.as_path()))
            }
            (Address::UnixAbstract(want), Some(SockType::Stream)) => {
                peek(fd, |s: &UnixListener| s.local_addr().ok())
                    .is_some_and(|a| a.as_abstract_name() == Some(want.as_slice()))
            }
            _ => false,
        }
    }

    /// A new socket bound to this address (and listening, for streams).
    pub(crate) fn bind(&self) -> io::Result<OwnedFd> {
        let bound: io::Result<OwnedFd> = match self {
            Address::Tcp(addr) => TcpListener::bind(addr).map(OwnedFd::from),
            Address::Udp(addr) => UdpSocket::bind(addr).map(OwnedFd::from),
            Address::UnixPath(path) => bind_unix_path(path),
            Address::UnixAbstract(name) => net::SocketAddr::from_abstract_name(name)
                .and_then(|a| UnixListener::bind_addr(&a))
                .map(OwnedFd::from),
        };
        let fd = bound.map_err(|e| with_context(e, format!("cannot listen on {self}")))?;
        if !matches!(self, Address::Udp(_)) {
            // std listens with a small backlog; a restart under load needs room
            // for the connections that queue while generations change places.
            // Calling listen() again on a listening socket only resizes the queue.
            let _ = listen(&fd, Backlog::MAXCONN);
        }
        Ok(fd)
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Tcp(a) => write!(f, "tcp://{a}"),
            Address::Udp(a) => write!(f, "udp://{a}"),
            Address::UnixPath(p) => write!(f, "unix:{}", p.display()),
            Address::UnixAbstract(n) => write!(f, "unix:@{}", String::from_utf8_lossy(n)),
        }
    }
}

/// Binds a Unix listener at `path`, replacing a stale socket file that nobody
/// listens on any more (left by a crash). A path someone still listens on is
/// never touched: it may be our own successor's.
fn bind_unix_path(path: &Path) -> io::Result<OwnedFd> {
    match UnixListener::bind(path) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            let stale = matches!(UnixStream::connect(path), Err(c) if c.kind() == io::ErrorKind::ConnectionRefused)
                && std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
            if !stale {
                return Err(e);
            }
            std::fs::remove_file(path)?;
            UnixListener::bind(path).map(OwnedFd::from)
        }
        bound => bound.map(OwnedFd::from),
    }
}

/// Whether `fd`, bound to `bound`, is what `want` asked for. Port 0 asked for
/// "any port", so the generation that bound it may have got any. A wildcard
/// request is served by a dual-stack wildcard socket (see the module comment).
fn same_inet(want: SocketAddr, bound: io::Result<SocketAddr>, fd: BorrowedFd<'_>) -> bool {
    let Ok(bound) = bound else {
        return false;
    };
    let port_matches = bound.port() == want.port() || want.port() == 0;
    let dual_stack_wildcard = || {
        want.ip().is_unspecified()
            && matches!(bound, SocketAddr::V6(v6) if v6.ip().is_unspecified())
            && getsockopt(&fd, sockopt::Ipv6V6Only) == Ok(false)
    };
    port_matches && (bound.ip() == want.ip() || dual_stack_wildcard())
}

/// Runs `f` on `fd` seen as a `T`, without taking ownership of it.
fn peek<T: FromRawFd, R>(fd: BorrowedFd<'_>, f: impl FnOnce(&T) -> R) -> R {
    // SAFETY: `fd` is open for the whole call, and ManuallyDrop never closes it.
    let socket = ManuallyDrop::new(unsafe { T::from_raw_fd(fd.as_raw_fd()) });
    f(&socket)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn parses_every_scheme() {
        assert_eq!(
            Address::parse("tcp://127.0.0.1:80").unwrap(),
            Address::Tcp("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            Address::parse("tcp6://[::1]:80").unwrap(),
            Address::Tcp("[::1]:80".parse().unwrap())
        );
        assert_eq!(
            Address::parse("tcp4://:80").unwrap(),
            Address::Tcp("0.0.0.0:80".parse().unwrap())
        );
        assert_eq!(
            Address::parse("tcp6://:80").unwrap(),
            Address::Tcp("[::]:80".parse().unwrap())
        );
        assert_eq!(
            Address::parse("udp://127.0.0.1:53").unwrap(),
            Address::Udp("127.0.0.1:53".parse().unwrap())
        );
        assert_eq!(
            Address::parse("unix:/run/x.sock").unwrap(),
            Address::UnixPath("/run/x.sock".into())
        );
        assert_eq!(
            Address::parse("unix:@x").unwrap(),
            Address::UnixAbstract(b"x".to_vec())
        );
        for bad in [
            "",
            "127.0.0.1:80",
            "http://127.0.0.1:80",
            "tcp://127.0.0.1",
            "tcp4://[::1]:80",
            "unix:",
            "unix:@",
        ] {
            let err = Address::parse(bad).unwrap_err();
            assert_eq!(crate::error::errno_of(&err), libc::EINVAL, "{bad:?}");
        }
    }

    #[test]
    fn matches_by_bound_address_only() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let same = Address::parse(&format!("tcp4://127.0.0.1:{port}")).unwrap();
        let any = Address::parse(&format!("tcp://0.0.0.0:{port}")).unwrap();
        let udp = Address::parse(&format!("udp://127.0.0.1:{port}")).unwrap();
        assert!(same.is_bound_by(listener.as_fd()));
        assert!(!any.is_bound_by(listener.as_fd()));
        assert!(!udp.is_bound_by(listener.as_fd()));
        let any_port = Address::parse("tcp://127.0.0.1:0").unwrap();
        assert!(any_port.is_bound_by(listener.as_fd()));
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(!same.is_bound_by(file.as_fd()));
    }

    #[test]
    fn a_wildcard_request_matches_a_dual_stack_wildcard_socket() {
        // What systemd's ListenStream=PORT creates: [::]:PORT, IPV6_V6ONLY off.
        let dual = TcpListener::bind("[::]:0").unwrap();
        assert_eq!(getsockopt(&dual, sockopt::Ipv6V6Only), Ok(false));
        let port = dual.local_addr().unwrap().port();
        for text in [
            format!("tcp://0.0.0.0:{port}"),
            format!("tcp://:{port}"),
            format!("tcp://[::]:{port}"),
            format!("tcp4://:{port}"),
        ] {
            let address = Address::parse(&text).unwrap();
            assert!(address.is_bound_by(dual.as_fd()), "{text}");
        }
        for text in [
            format!("tcp://127.0.0.1:{port}"),
            format!("tcp://[::1]:{port}"),
            format!("tcp://0.0.0.0:{}", port.wrapping_add(1).max(1)),
            format!("udp://0.0.0.0:{port}"),
        ] {
            let address = Address::parse(&text).unwrap();
            assert!(!address.is_bound_by(dual.as_fd()), "{text}");
        }
        // An IPv6-only wildcard socket does not serve IPv4 clients.
        let v6_only = v6_only_listener();
        let port = v6_only.local_addr().unwrap().port();
        let address = Address::parse(&format!("tcp://0.0.0.0:{port}")).unwrap();
        assert!(!address.is_bound_by(v6_only.as_fd()));
        let address = Address::parse(&format!("tcp://[::]:{port}")).unwrap();
        assert!(address.is_bound_by(v6_only.as_fd()));
    }

    /// A listening `[::]:0` socket with `IPV6_V6ONLY` on.
    fn v6_only_listener() -> TcpListener {
        use nix::sys::socket::{
            AddressFamily, Backlog, SockFlag, SockType, SockaddrIn6, bind, listen, setsockopt,
            socket,
        };
        let fd = socket(
            AddressFamily::Inet6,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        setsockopt(&fd, sockopt::Ipv6V6Only, &true).unwrap();
        let any: SocketAddr = "[::]:0".parse().unwrap();
        let SocketAddr::V6(any) = any else {
            unreachable!()
        };
        bind(fd.as_raw_fd(), &SockaddrIn6::from(any)).unwrap();
        listen(&fd, Backlog::new(16).unwrap()).unwrap();
        TcpListener::from(fd)
    }

    #[test]
    fn binds_and_replaces_only_stale_unix_sockets() {
        let path = std::env::temp_dir().join(format!("gr-addr-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let address = Address::UnixPath(path.clone());
        let live = address.bind().unwrap();
        assert!(address.is_bound_by(live.as_fd()));
        // Someone listens there: never stolen.
        assert_eq!(address.bind().unwrap_err().kind(), io::ErrorKind::AddrInUse);
        drop(live);
        // The file remains but nobody listens: stale, replaced.
        assert!(path.exists());
        let again = address.bind().unwrap();
        assert!(address.is_bound_by(again.as_fd()));
        std::fs::remove_file(&path).unwrap();
    }
}
