//! Where a relayed connection is in its life: one enum for the handshake
//! and one state per side, instead of a set of booleans.

use crate::relay::session::HANDSHAKE_FRAME_MAX;

/// The connection as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Before the client's Connection.TuneOk: frames are bounded by
    /// RabbitMQ's default frame_max, no heartbeat is owed to anyone.
    Handshake,
    /// TuneOk has gone up: frame_max is settled and the relay owns the
    /// upstream heartbeats (rule R1).
    Tuned { frame_max: usize },
}

impl Phase {
    pub fn frame_max(self) -> usize {
        match self {
            Phase::Handshake => HANDSHAKE_FRAME_MAX,
            Phase::Tuned { frame_max } => frame_max,
        }
    }

    pub fn is_tuned(self) -> bool {
        matches!(self, Phase::Tuned { .. })
    }
}

/// What one side has said about closing the AMQP connection, as the relay
/// saw it pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Said {
    Nothing,
    /// It sent Connection.Close (it wants to close).
    Close,
    /// It sent Connection.CloseOk (it answered the other side's Close);
    /// final, whatever it said before.
    CloseOk,
}

/// Whether the relay can still read a side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Open,
    /// End of stream read (for the broker: also seen by the hidden read).
    Eof,
}

/// One side of the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub said: Said,
    pub stream: Stream,
}

impl Peer {
    pub const fn new() -> Peer {
        Peer {
            said: Said::Nothing,
            stream: Stream::Open,
        }
    }

    /// It sent Close or CloseOk: its going away is a clean close.
    pub fn closed_cleanly(&self) -> bool {
        self.said != Said::Nothing
    }

    pub fn saw_close(&mut self) {
        if self.said == Said::Nothing {
            self.said = Said::Close;
        }
    }

    pub fn saw_close_ok(&mut self) {
        self.said = Said::CloseOk;
    }

    pub fn at_eof(&self) -> bool {
        self.stream == Stream::Eof
    }
}

impl Default for Peer {
    fn default() -> Self {
        Self::new()
    }
}
