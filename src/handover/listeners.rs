//! Which of the listeners handed to the successor a connection came from.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::sys::socket::{SockaddrStorage, getsockname};

use crate::error::fail;

/// The name of the listener `connection` came from: `name` if the heir
/// has it, else the one whose address the connection was accepted on.
pub(super) fn listener_of(
    listeners: &[(String, Option<SockaddrStorage>)],
    connection: BorrowedFd<'_>,
    name: Option<&str>,
) -> io::Result<String> {
    if let Some(name) = name {
        if listeners.iter().any(|(l, _)| l == name) {
            return Ok(name.to_owned());
        }
        return Err(fail(
            libc::EINVAL,
            format!("no listener named {name:?} was handed to the successor"),
        ));
    }
    let local = getsockname::<SockaddrStorage>(connection.as_raw_fd()).ok();
    (listeners.iter())
        .find(|(_, bound)| match (bound, &local) {
            (Some(bound), Some(local)) => accepts(bound, local),
            _ => false,
        })
        .map(|(name, _)| name.clone())
        .ok_or_else(|| {
            fail(
                libc::EINVAL,
                "the connection was accepted on none of the listeners handed to the successor",
            )
        })
}

/// Whether a listener bound to `bound` accepts connections whose local
/// address is `local`: the same port, and the same address unless the
/// listener's is the wildcard (a dual-stack `[::]` takes IPv4 too); for Unix
/// sockets, the same path.
fn accepts(bound: &SockaddrStorage, local: &SockaddrStorage) -> bool {
    if let (Some(bound), Some(local)) = (bound.as_unix_addr(), local.as_unix_addr()) {
        return bound == local;
    }
    let ip_port = |a: &SockaddrStorage| {
        (a.as_sockaddr_in()
            .map(|v4| (IpAddr::from(v4.ip()), v4.port())))
        .or_else(|| {
            a.as_sockaddr_in6()
                .map(|v6| (IpAddr::from(v6.ip()), v6.port()))
        })
    };
    match (ip_port(bound), ip_port(local)) {
        (Some((bound_ip, bound_port)), Some((local_ip, local_port))) => {
            bound_port == local_port && (bound_ip.is_unspecified() || bound_ip == local_ip)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn addr(text: &str) -> SockaddrStorage {
        SockaddrStorage::from(text.parse::<SocketAddr>().unwrap())
    }

    #[test]
    fn a_connection_belongs_to_the_listener_on_its_port_and_address() {
        assert!(accepts(&addr("127.0.0.1:80"), &addr("127.0.0.1:80")));
        assert!(accepts(&addr("0.0.0.0:80"), &addr("10.0.0.7:80")));
        assert!(accepts(&addr("[::]:80"), &addr("[::ffff:127.0.0.1]:80")));
        assert!(!accepts(&addr("127.0.0.1:80"), &addr("127.0.0.1:81")));
        assert!(!accepts(&addr("127.0.0.2:80"), &addr("127.0.0.1:80")));
        assert!(!accepts(&addr("[::1]:80"), &addr("127.0.0.1:80")));
    }
}
