//! A one-shot stop signal that waiting threads `select!` on.
//!
//! Firing it drops the only sender, so every clone of the receiver sees a
//! disconnect at once: nothing polls, nothing can miss it, and it stays
//! fired.

use std::sync::{Arc, Mutex};

use crossbeam_channel::{bounded, Receiver, Sender};

/// A stop signal shared by clones; see the module docs.
#[derive(Debug, Clone)]
pub(crate) struct StopSignal {
    tx: Arc<Mutex<Option<Sender<()>>>>,
    rx: Receiver<()>,
}

impl StopSignal {
    /// A signal not fired yet.
    pub(crate) fn new() -> StopSignal {
        let (tx, rx) = bounded(0);
        StopSignal { tx: Arc::new(Mutex::new(Some(tx))), rx }
    }

    /// Fires it (again is harmless).
    pub(crate) fn fire(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Whether it was fired.
    pub(crate) fn is_fired(&self) -> bool {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).is_none()
    }

    /// Ready (disconnected) once fired: `recv(signal.receiver())` in a
    /// `select!`. Never carries a message.
    pub(crate) fn receiver(&self) -> &Receiver<()> {
        &self.rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_clone_sees_the_fire() {
        let signal = StopSignal::new();
        let other = signal.clone();
        assert!(!other.is_fired() && other.receiver().try_recv().is_err());
        signal.fire();
        assert!(other.is_fired());
        assert!(other.receiver().recv().is_err(), "a fired signal is ready at once");
    }
}
