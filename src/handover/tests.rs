//! The two sides of the hand-over against each other, over a real socket pair.

use std::io;
use std::io::{IoSliceMut, Read};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, send};

use super::send::BOUND;
use super::wire::{
    ACK_BYTE, BATCHES_BYTE, ID_LEN, Incoming, MAX_BATCH, NAME_MAX, TAKEN_BYTE, add_record,
    empty_batch, send_connection,
};
use super::*;

/// The old generation's side on `old_end`, for an heir (this process) that
/// inherited the listener "http" and said `said`.
fn heir_on(old_end: UnixStream, said: &[u8]) -> Heir {
    let pid = std::process::id() as i32;
    Heir::new(
        OwnedFd::from(old_end),
        pid,
        vec![("http".into(), None)],
        said,
    )
}

/// Receives one connection message on `heir_end`: its id and the fd.
fn receive_one(heir_end: &UnixStream) -> (u64, OwnedFd) {
    let mut message = [0u8; 64];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [IoSliceMut::new(&mut message)];
    let received = recvmsg::<()>(
        heir_end.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .unwrap();
    let bytes = received.bytes;
    let fd = received.cmsgs().unwrap().find_map(|cmsg| match cmsg {
        // SAFETY: installed for us by the kernel just now.
        ControlMessageOwned::ScmRights(fds) => Some(unsafe { OwnedFd::from_raw_fd(fds[0]) }),
        _ => None,
    });
    let id = u64::from_le_bytes(message[bytes - ID_LEN..bytes].try_into().unwrap());
    (id, fd.unwrap())
}

/// Whether the connection `client` is the far end of is still open: nothing
/// to read, and no end of stream.
fn is_open(client: &mut UnixStream) -> bool {
    client.set_nonblocking(true).unwrap();
    let read = client.read(&mut [0u8; 1]);
    read.is_err_and(|e| e.kind() == io::ErrorKind::WouldBlock)
}

/// The heir loses a connection (out of fds: no receipt for it) and takes
/// the next: only the lost one is shut down, never one the heir serves.
#[test]
fn a_receipt_names_its_connection_so_a_lost_one_closes_only_itself() {
    let (old_end, heir_end) = UnixStream::pair().unwrap();
    let said = [ADOPT_BYTE, IDS_BYTE];
    let mut heir = heir_on(old_end, &said);
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (connection, client) = UnixStream::pair().unwrap();
        heir.hand_over(connection.as_fd(), Some("http")).unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        clients.push(client);
    }
    let (first, kept_first) = receive_one(&heir_end);
    let (_, lost) = receive_one(&heir_end);
    drop(lost);
    let (third, kept_third) = receive_one(&heir_end);
    let mut receipts = vec![TAKEN_BYTE];
    receipts.extend_from_slice(&first.to_le_bytes());
    receipts.push(TAKEN_BYTE);
    receipts.extend_from_slice(&third.to_le_bytes());
    // Cut in two, as a stream may deliver it.
    send(heir_end.as_raw_fd(), &receipts[..5], MsgFlags::empty()).unwrap();
    send(heir_end.as_raw_fd(), &receipts[5..], MsgFlags::empty()).unwrap();
    heir.finish(); // waits the bound for the lost one, then shuts it down
    let mut byte = [0u8; 1];
    for (i, client) in clients.iter_mut().enumerate() {
        let read = client.read(&mut byte);
        if i == 1 {
            assert!(matches!(read, Ok(0)), "the lost one is closed: {read:?}");
        } else {
            let open = read.is_err_and(|e| e.kind() == io::ErrorKind::WouldBlock);
            assert!(open, "connection {i}, adopted, stays open");
        }
    }
    drop((kept_first, kept_third));
}

/// The heir never waits to send a receipt, though the old generation
/// reads none for a while (it is busy): each receipt takes a whole
/// buffer's worth of the socket's send budget, and a few hundred would
/// fill it. They all arrive, naming their connections, once it reads.
#[test]
fn receipts_never_make_the_heir_wait() {
    const CONNECTIONS: u64 = 1000;
    let (old_end, heir_end) = UnixStream::pair().unwrap();
    let link = Arc::new(OwnedFd::from(heir_end));
    let adoption = Adoption::start(Some((link, std::process::id() as i32))).unwrap();
    let sender = old_end.try_clone().unwrap();
    let (done, finished) = std::sync::mpsc::channel();
    let heir = thread::spawn(move || {
        for id in 0..CONNECTIONS {
            let (connection, _client) = UnixStream::pair().unwrap();
            send_connection(sender.as_fd(), "http", Some(id), connection.as_fd()).unwrap();
            let handed = adoption.adopt(Some(Duration::from_secs(10)), |_| true);
            assert_eq!(handed.unwrap().unwrap().id, Some(id));
        }
        let _ = done.send(());
        sender
    });
    let finished = finished.recv_timeout(Duration::from_secs(10));
    // Now the old generation reads: every receipt comes, in order.
    old_end
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut receipts = vec![0u8; CONNECTIONS as usize * (1 + ID_LEN)];
    (&old_end).read_exact(&mut receipts).unwrap();
    let _sender = heir.join().unwrap();
    assert!(finished.is_ok(), "the heir waited to send a receipt");
    for (id, receipt) in receipts.chunks(1 + ID_LEN).enumerate() {
        assert_eq!(receipt[0], TAKEN_BYTE);
        assert_eq!(
            u64::from_le_bytes(receipt[1..].try_into().unwrap()),
            id as u64
        );
    }
}

/// A generation that drains behind a successor of its own relays what
/// its predecessor still hands over (those waiting and those to come) to
/// that successor, and says "taken" for each: nothing waits unadopted.
#[test]
fn a_draining_heir_relays_to_the_newest_generation() {
    let (old_end, heir_end) = UnixStream::pair().unwrap();
    let link = Arc::new(OwnedFd::from(heir_end));
    let adoption = Adoption::start(Some((link, std::process::id() as i32))).unwrap();
    let (waiting, _client) = UnixStream::pair().unwrap();
    send_connection(old_end.as_fd(), "http", Some(1), waiting.as_fd()).unwrap();
    let relayed = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&relayed);
    // Before the relay is set, the first one waits for the application.
    let mut fds = [PollFd::new(adoption.fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::from(10_000u16)).unwrap();
    adoption.relay(Box::new(move |_, name| {
        seen.lock().unwrap().push(name.to_string());
        true
    }));
    let (coming, _client) = UnixStream::pair().unwrap();
    send_connection(old_end.as_fd(), "admin", Some(2), coming.as_fd()).unwrap();
    old_end
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut receipts = [0u8; 2 * (1 + ID_LEN)];
    (&old_end).read_exact(&mut receipts).unwrap();
    assert_eq!(*relayed.lock().unwrap(), ["http", "admin"]);
    assert_eq!(
        (receipts[0], receipts[1 + ID_LEN]),
        (TAKEN_BYTE, TAKEN_BYTE)
    );
    assert!(
        adoption
            .adopt(Some(Duration::ZERO), |_| true)
            .unwrap()
            .is_none(),
        "nothing is left for the application"
    );
}

/// A connection handed over long after the heir became ready (say, after
/// a slow request) still gets the whole bound to be taken: the old
/// generation must not shut it down under the heir that adopts it.
#[test]
fn a_late_hand_over_gets_the_whole_bound() {
    let (old_end, heir_end) = UnixStream::pair().unwrap();
    let mut heir = heir_on(old_end, &[ADOPT_BYTE]);
    thread::sleep(BOUND + Duration::from_millis(100)); // the heir has been ready a while
    let (connection, mut client) = UnixStream::pair().unwrap();
    heir.hand_over(connection.as_fd(), Some("http")).unwrap();
    drop(connection);
    let adopter = thread::spawn(move || {
        // The heir adopts it a moment later, and keeps it.
        let mut message = [0u8; 64];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let mut iov = [IoSliceMut::new(&mut message)];
        let received = recvmsg::<()>(
            heir_end.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .unwrap();
        let mut kept = Vec::new();
        for cmsg in received.cmsgs().into_iter().flatten() {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                // SAFETY: installed for us by the kernel just now.
                kept.extend(
                    fds.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        thread::sleep(Duration::from_millis(50));
        send(heir_end.as_raw_fd(), &[ACK_BYTE], MsgFlags::empty()).unwrap();
        (heir_end, kept)
    });
    heir.finish();
    let _kept = adopter.join().unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let read = client.read(&mut [0u8; 1]);
    assert!(
        read.as_ref()
            .is_err_and(|e| e.kind() == io::ErrorKind::WouldBlock),
        "the adopted connection stays open: {read:?}"
    );
}

/// A burst of connections on two listeners goes in batches (more than
/// one's worth of fds) to an heir that reads them: each arrives once, in
/// order, on its listener, and the heir's receipts reach the old generation,
/// which then closes none of them.
#[test]
fn a_burst_goes_in_batches_and_every_connection_arrives_on_its_listener() {
    const CONNECTIONS: usize = 2 * MAX_BATCH + 100;
    let (old_end, heir_end) = UnixStream::pair().unwrap();
    let pid = std::process::id() as i32;
    let adoption = Adoption::start(Some((Arc::new(OwnedFd::from(heir_end)), pid))).unwrap();
    let listeners = vec![("http".into(), None), ("admin".into(), None)];
    let said = [ADOPT_BYTE, IDS_BYTE, BATCHES_BYTE];
    let mut heir = Heir::new(OwnedFd::from(old_end), pid, listeners, &said);
    let mut clients = Vec::new();
    for i in 0..CONNECTIONS {
        let (connection, client) = UnixStream::pair().unwrap();
        let name = ["http", "admin"][i % 2];
        assert_eq!(
            heir.hand_over(connection.as_fd(), Some(name)).unwrap(),
            Offer::Taken
        );
        clients.push(client);
    }
    let adopter = thread::spawn(move || {
        let mut kept = Vec::new();
        for i in 0..CONNECTIONS {
            let handed = adoption.adopt(Some(Duration::from_secs(10)), |_| true);
            let handed = handed.unwrap().expect("every connection arrives");
            assert_eq!(handed.listener, ["http", "admin"][i % 2], "connection {i}");
            assert_eq!(handed.id, Some(i as u64), "in order");
            kept.push(handed.connection);
        }
        kept
    });
    heir.finish(); // sends the last batch, waits for every receipt
    let kept = adopter.join().unwrap();
    for (i, client) in clients.iter_mut().enumerate() {
        assert!(is_open(client), "connection {i}, adopted, stays open");
    }
    drop(kept);
}

/// A batch larger than the room in the heir's buffer goes in parts: the
/// kernel takes its fds with the first bytes, and the old generation sends
/// the rest as the heir reads. Every connection arrives, once its record is
/// whole, on its listener and in order, and none is closed.
#[test]
fn a_batch_sent_in_parts_arrives_whole() {
    // Records of 250 bytes: a few dozen connections' worth is more than the
    // 4 KB buffer (8 KB as the kernel counts it) holds at once.
    let name = "h".repeat(NAME_MAX - 14);
    let (old_end, heir_end) = UnixStream::pair().unwrap();
    nix::sys::socket::setsockopt(&old_end, nix::sys::socket::sockopt::SndBuf, &4096).unwrap();
    let pid = std::process::id() as i32;
    let adoption = Adoption::start(Some((Arc::new(OwnedFd::from(heir_end)), pid))).unwrap();
    let said = [ADOPT_BYTE, IDS_BYTE, BATCHES_BYTE];
    let listeners = vec![(name.clone(), None)];
    let mut heir = Heir::new(OwnedFd::from(old_end), pid, listeners, &said);
    let expected = name.clone();
    let adopter = thread::spawn(move || {
        let mut kept = Vec::new();
        for i in 0..MAX_BATCH {
            let handed = adoption.adopt(Some(Duration::from_secs(10)), |_| true);
            let handed = handed.unwrap().expect("every connection arrives");
            assert_eq!(
                (handed.listener.as_str(), handed.id),
                (expected.as_str(), Some(i as u64))
            );
            kept.push(handed.connection);
        }
        kept
    });
    let mut clients = Vec::new();
    for _ in 0..MAX_BATCH {
        let (connection, client) = UnixStream::pair().unwrap();
        let offer = heir.hand_over(connection.as_fd(), Some(&name)).unwrap();
        assert_eq!(offer, Offer::Taken);
        clients.push(client);
    }
    heir.finish(); // sends what is left, waits for every receipt
    let kept = adopter.join().unwrap();
    for (i, client) in clients.iter_mut().enumerate() {
        assert!(is_open(client), "connection {i}, adopted, stays open");
    }
    drop(kept);
}

/// The kernel may cut a batch's bytes in parts, its fds with the first:
/// each connection comes out once its record is whole, and a batch whose
/// fds were cut (the heir out of fds) gives the ones that came.
#[test]
fn a_batch_cut_in_parts_gives_its_connections_once_whole() {
    let mut batch = empty_batch();
    for (name, id) in [("http", 7), ("admin", 8), ("http", 9)] {
        add_record(&mut batch, name, id);
    }
    for cut in 1..batch.len() {
        let mut incoming = Incoming::default();
        let fds = (0..3)
            .map(|_| OwnedFd::from(UnixStream::pair().unwrap().0))
            .collect();
        incoming.add(&batch[..cut], fds, false);
        let mut records = Vec::new();
        assert_eq!(incoming.take(&mut records), Ok(0));
        assert!(
            records.is_empty(),
            "cut at {cut}: nothing before the last record"
        );
        incoming.add(&batch[cut..], Vec::new(), false);
        assert_eq!(incoming.take(&mut records), Ok(0));
        let got: Vec<_> = records
            .iter()
            .map(|r| (r.listener.as_str(), r.id))
            .collect();
        assert_eq!(
            got,
            [("http", 7), ("admin", 8), ("http", 9)],
            "cut at {cut}"
        );
        assert!(incoming.is_empty());
    }
    // One read may bring a batch's last bytes and the next batch with its fds.
    let fds = |n| {
        (0..n)
            .map(|_| OwnedFd::from(UnixStream::pair().unwrap().0))
            .collect()
    };
    let mut incoming = Incoming::default();
    incoming.add(&batch[..5], fds(3), false);
    incoming.add(&[&batch[5..], &batch[..]].concat(), fds(3), false);
    let mut records = Vec::new();
    assert_eq!(incoming.take(&mut records), Ok(0));
    assert_eq!(records.len(), 6, "both batches, each with its fds");
    assert!(incoming.is_empty());
    let mut incoming = Incoming::default();
    incoming.add(&batch, fds(1), true);
    let mut records = Vec::new();
    assert_eq!(incoming.take(&mut records), Ok(2), "two lost");
    assert_eq!((records.len(), records[0].id), (1, 7), "the first came");
}

/// A batch that cannot go (the heir reads nothing for the whole bound) ends
/// the hand-over and closes that batch's connections in order, but not those
/// sent before it, which the heir may serve while their receipts come, nor
/// the connection of the call that found out, which goes back to its caller.
#[test]
fn a_batch_that_cannot_go_closes_only_its_own_connections() {
    let (old_end, heir_end) = UnixStream::pair().unwrap();
    nix::sys::socket::setsockopt(&old_end, nix::sys::socket::sockopt::SndBuf, &4096).unwrap();
    let said = [ADOPT_BYTE, IDS_BYTE, BATCHES_BYTE];
    let mut heir = heir_on(old_end, &said);
    let mut clients = Vec::new();
    let (declined, mut its_client) = loop {
        assert!(
            clients.len() < 100 * MAX_BATCH,
            "the heir's buffer never filled"
        );
        let (connection, client) = UnixStream::pair().unwrap();
        match heir.hand_over(connection.as_fd(), Some("http")).unwrap() {
            Offer::Taken => clients.push(client),
            Offer::Declined(_) => break (connection, client),
        }
    };
    let read = |client: &mut UnixStream| {
        client.set_nonblocking(true).unwrap();
        client.read(&mut [0u8; 1])
    };
    let open = |read: io::Result<usize>| read.is_err_and(|e| e.kind() == io::ErrorKind::WouldBlock);
    // The ids of the connections that went: those the heir's end holds.
    let sent = sent_ids(&heir_end);
    assert!(
        !sent.is_empty(),
        "some batches went before the buffer filled"
    );
    for (id, client) in clients.iter_mut().enumerate() {
        let read = read(client);
        if sent.contains(&(id as u64)) {
            assert!(open(read), "connection {id}, sent: it stays open");
        } else {
            assert!(matches!(read, Ok(0)), "connection {id}, not sent: closed");
        }
    }
    assert!(
        open(read(&mut its_client)),
        "the declined one is its caller's, untouched"
    );
    drop((declined, heir_end));
}

/// The ids of every connection waiting at `heir_end`, read without waiting.
fn sent_ids(heir_end: &UnixStream) -> Vec<u64> {
    let mut incoming = Incoming::default();
    let mut message = vec![0u8; 1 << 16];
    loop {
        let mut space = nix::cmsg_space!([RawFd; MAX_BATCH]);
        let mut iov = [IoSliceMut::new(&mut message)];
        let flags = MsgFlags::MSG_DONTWAIT;
        let Ok(received) = recvmsg::<()>(heir_end.as_raw_fd(), &mut iov, Some(&mut space), flags)
        else {
            break;
        };
        let mut fds = Vec::new();
        for cmsg in received.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(rights) = cmsg {
                // SAFETY: installed for us by the kernel just now.
                fds.extend(
                    rights
                        .into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        let bytes = received.bytes;
        incoming.add(&message[..bytes], fds, false);
    }
    let mut records = Vec::new();
    assert_eq!(incoming.take(&mut records), Ok(0));
    records.iter().map(|r| r.id).collect()
}

/// `hand_over` takes connected stream sockets only, TCP ones (known by
/// their state alone) and any other (by their type and their peer), and
/// says with its errno what is wrong with anything else.
#[test]
fn only_a_connected_stream_socket_is_handed_over() {
    use std::net::{TcpListener, TcpStream, UdpSocket};
    use std::os::unix::net::UnixDatagram;

    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

    let (old_end, _heir_end) = UnixStream::pair().unwrap();
    let mut heir = heir_on(old_end, &[ADOPT_BYTE, IDS_BYTE, BATCHES_BYTE]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (established, _) = listener.accept().unwrap();
    let client_gone = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (half_closed, _) = listener.accept().unwrap();
    drop(client_gone);
    let unconnected = |family| socket(family, SockType::Stream, SockFlag::empty(), None).unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.connect(udp.local_addr().unwrap()).unwrap();
    let (unix, _unix_peer) = UnixStream::pair().unwrap();
    let (datagrams, _datagram_peer) = UnixDatagram::pair().unwrap();
    let (pipe, _pipe_write) = nix::unistd::pipe().unwrap();
    let cases: [(OwnedFd, Result<Offer, i32>, &str); 9] = [
        (
            established.into(),
            Ok(Offer::Taken),
            "an established TCP connection",
        ),
        (
            half_closed.into(),
            Ok(Offer::Taken),
            "one its client closed",
        ),
        (unix.into(), Ok(Offer::Taken), "a Unix stream socket"),
        (listener.into(), Err(libc::ENOTCONN), "a TCP listener"),
        (
            unconnected(AddressFamily::Inet),
            Err(libc::ENOTCONN),
            "a TCP socket never connected",
        ),
        (
            unconnected(AddressFamily::Unix),
            Err(libc::ENOTCONN),
            "a Unix one",
        ),
        (udp.into(), Err(libc::EINVAL), "a connected UDP socket"),
        (datagrams.into(), Err(libc::EINVAL), "a Unix datagram pair"),
        (pipe, Err(libc::EINVAL), "a pipe"),
    ];
    for (fd, expected, what) in cases {
        let offer = heir.hand_over(fd.as_fd(), Some("http"));
        assert_eq!(
            offer.map_err(|e| crate::error::errno_of(&e)),
            expected,
            "{what}"
        );
    }
    drop(client);
}
