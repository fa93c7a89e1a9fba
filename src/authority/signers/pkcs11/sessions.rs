//! The pool's sessions: opened together, the user logged in once, each serving one call at
//! a time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

use super::error::{connection_lost, failed, rv, Pkcs11Error};
use super::module::Module;

pub(super) struct Sessions {
    sessions: Vec<Mutex<Session>>,
    next: AtomicUsize,
}

impl Sessions {
    /// Opens the pool's sessions and logs the user in once: the login belongs to the
    /// application and the token, so every session, current and future, shares it.
    pub(super) fn open(
        module: &Module,
        slot: Slot,
        label: &str,
        pin: &str,
        size: usize,
    ) -> Result<Sessions, Pkcs11Error> {
        let mut sessions = Vec::with_capacity(size);
        for _ in 0..size {
            let session = module
                .pkcs11()
                .open_rw_session(slot)
                .map_err(failed(label, "opening a session"))?;
            if sessions.is_empty() {
                login(&session, label, pin)?;
            }
            sessions.push(Mutex::new(session));
        }
        Ok(Sessions {
            sessions,
            next: AtomicUsize::new(0),
        })
    }

    /// A free session, trying each from a rotating start, or, when all are busy, waiting
    /// for one.
    pub(super) fn take(&self) -> MutexGuard<'_, Session> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let count = self.sessions.len();
        (0..count)
            .find_map(|i| match self.sessions[(start + i) % count].try_lock() {
                Ok(guard) => Some(guard),
                Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
                Err(TryLockError::WouldBlock) => None,
            })
            .unwrap_or_else(|| {
                self.sessions[start % count]
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
            })
    }
}

fn login(session: &Session, label: &str, pin: &str) -> Result<(), Pkcs11Error> {
    let pin = AuthPin::new(pin.into());
    let owned = || label.to_owned();
    match session.login(UserType::User, Some(&pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(source) => Err(match rv(&source) {
            Some(RvError::PinIncorrect) => Pkcs11Error::WrongPin { label: owned() },
            Some(RvError::PinLocked) => Pkcs11Error::PinLocked { label: owned() },
            Some(RvError::UserPinNotInitialized) => {
                Pkcs11Error::PinNotInitialized { label: owned() }
            }
            _ if connection_lost(&source) => failed(label, "logging in")(source),
            _ => Pkcs11Error::Login {
                label: owned(),
                source,
            },
        }),
    }
}

pub(super) fn is_login_refusal(error: &Pkcs11Error) -> bool {
    matches!(
        error,
        Pkcs11Error::WrongPin { .. }
            | Pkcs11Error::PinLocked { .. }
            | Pkcs11Error::PinNotInitialized { .. }
            | Pkcs11Error::Login { .. }
    )
}
