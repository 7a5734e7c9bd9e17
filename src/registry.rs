//! The listeners of one generation: those it registered, which every
//! successor receives at fds 3.. in registration order, and those it
//! inherited and has not claimed yet, which are closed when it becomes ready.
//! Registered entries are our own duplicates: the application keeps its fd.

use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::socket::SockType;

use crate::address::Address;
use crate::error::{fail, with_context};
use crate::log::debug;
use crate::protocol::check_name;
use crate::sys::{is_listening, socket_type};

type Entry = (String, OwnedFd);

#[derive(Default)]
pub(crate) struct Registry {
    registered: Vec<Entry>,
    inherited: Vec<Entry>,
}

impl Registry {
    pub(crate) fn new(inherited: Vec<Entry>) -> Registry {
        Registry {
            registered: Vec::new(),
            inherited,
        }
    }

    pub(crate) fn inherited_names(&self) -> Vec<&str> {
        self.inherited.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Hands `fd` (a listening socket, or a datagram socket) to every successor as `name`.
    pub(crate) fn register(&mut self, fd: BorrowedFd<'_>, name: &str) -> io::Result<()> {
        check_name(name)?;
        check_listener(fd)?;
        add(&mut self.registered, fd, name)
    }

    /// The inherited socket named `name`, registered again for the next restart.
    pub(crate) fn inherit(&mut self, name: &str) -> io::Result<Option<OwnedFd>> {
        check_name(name)?;
        match self.inherited.iter().position(|(n, _)| n == name) {
            Some(index) => self.claim(index, name).map(Some),
            None => Ok(None),
        }
    }

    /// Inherit-or-listen: an inherited socket bound to `address` (`text`
    /// parsed; preferring one named `name`), or else a new one bound now;
    /// registered either way.
    pub(crate) fn listen(
        &mut self,
        address: &Address,
        text: &str,
        name: Option<&str>,
    ) -> io::Result<OwnedFd> {
        let name = name.map_or_else(|| Address::default_name(text), String::from);
        check_name(&name)?;
        if self.registered.iter().any(|(n, _)| *n == name) {
            return Err(duplicate(&name));
        }
        let bound_here = |(_, fd): &Entry| address.is_bound_by(fd.as_fd());
        let found = (self.inherited.iter())
            .position(|entry| entry.0 == name && bound_here(entry))
            .or_else(|| self.inherited.iter().position(bound_here));
        if let Some(index) = found {
            debug!(
                "{address}: using inherited fd {}",
                self.inherited[index].1.as_raw_fd()
            );
            return self.claim(index, &name);
        }
        let fd = address.bind()?;
        add(&mut self.registered, fd.as_fd(), &name)?;
        debug!("{address}: listening on new fd {}", fd.as_raw_fd());
        Ok(fd)
    }

    /// Closes the inherited fds nobody claimed; returns their names.
    pub(crate) fn close_unclaimed(&mut self) -> Vec<String> {
        mem::take(&mut self.inherited)
            .into_iter()
            .map(|(name, _)| name)
            .collect()
    }

    /// What a successor receives: the names and fds, in registration order.
    pub(crate) fn handed_over(&self) -> (Vec<&str>, Vec<BorrowedFd<'_>>) {
        (self.registered.iter())
            .map(|(name, fd)| (name.as_str(), fd.as_fd()))
            .unzip()
    }

    /// The name `fd` is registered under: the same socket as one of ours
    /// (the application holds its own fd, we a duplicate).
    pub(crate) fn name_of(&self, fd: BorrowedFd<'_>) -> Option<&str> {
        let socket = identity(fd)?;
        (self.registered.iter())
            .find(|(_, ours)| identity(ours.as_fd()) == Some(socket))
            .map(|(name, _)| name.as_str())
    }

    /// Drops our duplicates once a successor holds its own. Closing them
    /// never shuts the sockets down.
    pub(crate) fn release(&mut self) {
        self.registered.clear();
    }

    /// Hands the inherited fd at `index` to the caller and registers it again.
    fn claim(&mut self, index: usize, name: &str) -> io::Result<OwnedFd> {
        add(&mut self.registered, self.inherited[index].1.as_fd(), name)?;
        Ok(self.inherited.remove(index).1)
    }
}

/// What makes two fds the same socket: its inode.
fn identity(fd: BorrowedFd<'_>) -> Option<(u64, u64)> {
    let stat = nix::sys::stat::fstat(fd).ok()?;
    Some((stat.st_dev as u64, stat.st_ino as u64))
}

/// Registers our own duplicate of `fd` as `name`.
fn add(registered: &mut Vec<Entry>, fd: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    if registered.iter().any(|(n, _)| n == name) {
        return Err(duplicate(name));
    }
    let ours = fd
        .try_clone_to_owned()
        .map_err(|e| with_context(e, "cannot duplicate the listener"))?;
    registered.push((name.to_string(), ours));
    Ok(())
}

fn duplicate(name: &str) -> io::Error {
    fail(
        libc::EEXIST,
        format!("a listener named {name:?} is already registered"),
    )
}

/// Refuses what cannot be handed over as a listener.
fn check_listener(fd: BorrowedFd<'_>) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    match socket_type(fd) {
        None => Err(fail(libc::ENOTSOCK, format!("fd {raw} is not a socket"))),
        Some(SockType::Stream | SockType::SeqPacket) if !is_listening(fd) => Err(fail(
            libc::EINVAL,
            format!(
                "fd {raw} is a stream socket that is not listening (call listen() before registering it)"
            ),
        )),
        Some(_) => Ok(()),
    }
}
