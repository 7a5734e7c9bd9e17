//! Idle connections handed to the successor, so that a restart closes none
//! (see docs/architecture.md, "Connections across a restart").
//!
//! The two generations share a private Unix stream socket pair (made in
//! `spawn/`, the heir's end known to `link.rs`). What travels on it:
//!
//! * heir to old: `R` ready (the first byte, as every grestart has said it),
//!   `A` "I adopt connections" (with `R`, or later) followed by `I` "my
//!   receipts name the connection" and `B` "I read batches", then per
//!   connection adopted `T` and its id (8 bytes, little-endian), or `K` from an
//!   heir that never said `I`;
//! * old to heir, to an heir that said `B`: batches of up to 253 connections
//!   (the most fds a message carries): a 0 byte, the number of connections, and
//!   per connection the length of its listener's name in a byte, the name and
//!   its id, with the sockets as `SCM_RIGHTS` in the same order. The kernel
//!   hands the fds over with the message's first bytes and may cut the rest, so
//!   the heir keeps them until the batch is whole. To an older heir: one message
//!   per connection, the name's length, the name, the id when the heir said
//!   `I`, one fd; the kernel never merges data across a message that carries
//!   fds, so each `recvmsg` returns one whole message.
//!
//! A burst of connections handed over travels in few messages: one goes at once
//! when no message went out lately, else it joins the batch, which goes when
//! full or [`BATCH_WAIT`](send::BATCH_WAIT) after its first connection.
//!
//! Receipts name the connection, not its place in the order: an heir that
//! loses one (out of fds, `MSG_CTRUNC`) sends no receipt for it, and receipts
//! counted in order would then make the old generation shut down another one,
//! which the heir serves. The heir never waits to send a receipt: a message
//! takes a whole buffer's worth of the socket's send budget, so a few hundred
//! fill it while a busy old generation reads none. A burst's receipts go
//! together; what does not fit waits in the heir's memory, and its receiving
//! thread sends it when there is room.
//!
//! The old generation keeps its own duplicate of each connection until the
//! heir's receipt for it. An heir that asked for connections but never takes them
//! cannot strand a client: after [`BOUND`](send::BOUND) the old generation shuts those
//! connections down (an orderly close) and stops handing over. An heir that
//! never said `A` (an older grestart, or one that does not poll) gets none:
//! [`Heir::hand_over`] fails at once and the application closes as before.
//! Bytes a client sends meanwhile wait in the kernel's socket buffer.
//!
//! The parts: what travels on the link is `wire.rs`; the old generation's
//! side ([`Heir`]) is `send.rs`, with `listeners.rs`, which tells the listener
//! a connection came from; the heir's side ([`Adoption`]) is `adopt.rs`, with
//! `queue.rs`, the connections it has not adopted yet.

mod adopt;
mod listeners;
mod queue;
mod send;
#[cfg(test)]
mod tests;
mod wire;

use std::time::Duration;

use nix::poll::PollTimeout;

pub(crate) use adopt::Adoption;
pub(crate) use queue::Handed;
pub(crate) use send::{Heir, Offer};
pub(crate) use wire::{ADOPT_BYTE, BATCHES_BYTE, IDS_BYTE};

/// `left` for `poll`, in whole milliseconds rounded up: a wait of less than
/// one is one, never a busy loop of zeros.
fn poll_timeout(left: Duration) -> PollTimeout {
    let millis = left.as_nanos().div_ceil(1_000_000);
    PollTimeout::try_from(Duration::from_millis(millis.try_into().unwrap_or(u64::MAX)))
        .unwrap_or(PollTimeout::MAX)
}
