//! The connection to one token: the module, the slot found by its label, a fixed pool of
//! logged-in sessions shared by the threads that call the token, and the recovery when the
//! token, the sessions or the module state go away.
//!
//! Every token call runs through [`Connection::run`]. A call that fails in a way that means
//! the token went away makes the connection reconnect once, in the order that is safe with
//! PKCS#11 modules: drop the old sessions first (a stale session handle can alias a new
//! session after a re-initialisation, and dropping it would close that one), call
//! C_Initialize (already initialised is fine), find the slot by label again (slot ids
//! change), open the sessions and log in. Object handles change too: each reconnection
//! starts a new epoch, and handles cached in an older epoch are looked up again by CKA_ID.
//! Then the call is retried once.
//!
//! A reconnection that fails leaves the connection down; calls then fail at once as
//! transient, and the next reconnection is tried no sooner than `RECONNECT_PAUSE` after the
//! last. A reconnection refused at login (a changed or locked PIN) is never retried, as
//! every try would bring the token closer to locking the PIN.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant};

use cryptoki::error::Error as CkError;
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use token_authority_jose::crypto::Algorithm;
use zeroize::Zeroizing;

use super::error::{connection_lost, failed, Pkcs11Error};
use super::health::TokenHealth;
use super::module::Module;
use super::sessions::{self, Sessions};
use super::slot;
use crate::{authority::signing_pool::SIGN_DEADLINE, telemetry::chain};

/// The shortest time between two reconnection attempts while the token is down.
pub(crate) const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// The most sessions a connection opens: tokens limit them, and a session serves one call
/// at a time, so more than the signing threads would sit idle.
const MAX_SESSIONS: usize = 8;

/// Labels of PKCS#11 tokens are at most 32 bytes (padded with spaces on the token).
const MAX_LABEL_BYTES: usize = 32;

pub(super) struct Connection {
    label: String,
    pin: Zeroizing<String>,
    module: Module,
    size: usize,
    state: RwLock<State>,
    available: AtomicBool,
    /// The calls in the token and the keys that could not sign: what `available` alone
    /// would not say (a call that never returns answers nothing).
    health: TokenHealth,
}

struct State {
    /// Counts successful connections: object handles are valid within one epoch only.
    epoch: u64,
    link: Link,
    last_attempt: Instant,
}

enum Link {
    Up(Sessions),
    Down,
    /// The login failed while reconnecting, for a reason no retry cures.
    Refused(String),
}

/// Which try of a call this is: the connection's epoch (object handles found in another
/// epoch are stale), and whether the connection was just re-established for it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Try {
    pub(super) epoch: u64,
    pub(super) after_reconnect: bool,
}

enum Attempt<R> {
    Done(Result<R, Pkcs11Error>),
    Lost { epoch: u64, error: Pkcs11Error },
    Down { epoch: u64 },
}

impl Connection {
    /// Loads the module, finds the token, checks its mechanisms and logs in.
    pub(super) fn open(
        path: &Path,
        label: &str,
        pin: Zeroizing<String>,
        algorithms: &[Algorithm],
    ) -> Result<Connection, Pkcs11Error> {
        if label.len() > MAX_LABEL_BYTES {
            return Err(Pkcs11Error::LabelTooLong {
                label: label.to_owned(),
            });
        }
        let connection = Connection {
            label: label.to_owned(),
            pin,
            module: Module::load(path)?,
            size: std::thread::available_parallelism()
                .map_or(2, usize::from)
                .clamp(2, MAX_SESSIONS),
            state: RwLock::new(State {
                epoch: 0,
                link: Link::Down,
                last_attempt: Instant::now(),
            }),
            available: AtomicBool::new(false),
            health: TokenHealth::default(),
        };
        let call = connection.module.call();
        let sessions = connection
            .initialize()
            .and_then(|()| slot::find(&connection.module, label))
            .and_then(|slot| {
                slot::check_mechanisms(&connection.module, slot, label, algorithms)?;
                connection.open_sessions(slot)
            })
            .map_err(|error| connection.unreachable_if_lost("connecting", error))?;
        drop(call);
        *connection.write() = State {
            epoch: 1,
            link: Link::Up(sessions),
            last_attempt: Instant::now(),
        };
        connection.available.store(true, Ordering::Release);
        Ok(connection)
    }

    pub(super) fn label(&self) -> &str {
        &self.label
    }

    pub(super) fn path(&self) -> &Path {
        self.module.path()
    }

    /// The token answered its last call, no call has been in it past the deadline, and
    /// every key that signed last (or that the last probe tried) could sign.
    pub(super) fn is_available(&self) -> bool {
        self.available.load(Ordering::Acquire)
            && !self.health.stalled()
            && self.health.keys_usable()
    }

    /// Notes whether key `id` could sign.
    pub(super) fn key_signed(&self, id: &[u8], usable: bool) {
        self.health.key_signed(id, usable);
    }

    /// Forgets which keys could not sign: a probe tries the current ones again (a key
    /// rotated away no longer counts).
    pub(super) fn forget_unusable_keys(&self) {
        self.health.forget_unusable_keys();
    }

    /// Whether a call has been in the token for longer than callers wait for it.
    pub(super) fn stalled(&self) -> bool {
        self.health.stalled()
    }

    /// Runs `op` on a session of its own (waiting for one if all are busy). When the token
    /// went away (or a handle went stale), reconnects once and runs `op` again. Refused at
    /// once while another call has been in the token past `SIGN_DEADLINE`.
    pub(super) fn run<R>(
        &self,
        doing: &'static str,
        mut op: impl FnMut(&Session, Try) -> Result<R, Pkcs11Error>,
    ) -> Result<R, Pkcs11Error> {
        // A token that holds a call past the deadline gets no more: each would hang a
        // thread too. Calls go in again once that one has come back.
        if self.stalled() {
            return Err(self.unreachable(
                doing,
                format!("a call has been in the token for more than {SIGN_DEADLINE:?}"),
            ));
        }
        let seen = match self.attempt(&mut op, false) {
            Attempt::Done(result) => return result,
            Attempt::Lost { epoch, error } => {
                tracing::warn!(
                    token = %self.label,
                    error = %chain(&error),
                    "the PKCS#11 token failed {doing}; reconnecting"
                );
                epoch
            }
            Attempt::Down { epoch } => epoch,
        };
        self.reconnect(seen, doing)?;
        match self.attempt(&mut op, true) {
            Attempt::Done(result) => result,
            Attempt::Lost { error, .. } if error.token_gone() => {
                self.available.store(false, Ordering::Release);
                Err(self.unreachable(doing, error))
            }
            Attempt::Lost { error, .. } => {
                self.available.store(true, Ordering::Release);
                Err(error)
            }
            Attempt::Down { .. } => Err(self.unreachable(doing, "the token is down")),
        }
    }

    fn attempt<R>(
        &self,
        op: &mut impl FnMut(&Session, Try) -> Result<R, Pkcs11Error>,
        after_reconnect: bool,
    ) -> Attempt<R> {
        let state = self.read();
        match &state.link {
            Link::Up(sessions) => {
                let _call = self.module.call();
                let session = sessions.take();
                let attempt = Try {
                    epoch: state.epoch,
                    after_reconnect,
                };
                let in_flight = self.health.enter();
                let result = op(&session, attempt);
                drop(in_flight);
                match result {
                    Err(error) if error.calls_for_reconnect() => Attempt::Lost {
                        epoch: state.epoch,
                        error,
                    },
                    result => {
                        self.available.store(true, Ordering::Release);
                        Attempt::Done(result)
                    }
                }
            }
            Link::Down => Attempt::Down { epoch: state.epoch },
            Link::Refused(reason) => Attempt::Done(Err(Pkcs11Error::LoginRefused {
                label: self.label.clone(),
                reason: reason.clone(),
            })),
        }
    }

    /// Reconnects, unless another caller already did since `seen` (then its result stands),
    /// or the last attempt failed less than `RECONNECT_PAUSE` ago.
    fn reconnect(&self, seen: u64, doing: &'static str) -> Result<(), Pkcs11Error> {
        let mut state = self.write();
        match &state.link {
            Link::Up(_) if state.epoch != seen => return Ok(()),
            Link::Up(_) => {}
            Link::Down if state.last_attempt.elapsed() < RECONNECT_PAUSE => {
                return Err(self.unreachable(
                    doing,
                    format!("the last reconnection failed less than {RECONNECT_PAUSE:?} ago"),
                ));
            }
            Link::Down => {}
            Link::Refused(reason) => {
                return Err(Pkcs11Error::LoginRefused {
                    label: self.label.clone(),
                    reason: reason.clone(),
                })
            }
        }
        state.last_attempt = Instant::now();
        // Down until it is back; and a reconnection that hangs in the token counts as a call
        // in it (`stalled`), so the calls behind the lock are refused rather than queued.
        self.available.store(false, Ordering::Release);
        let in_flight = self.health.enter();
        let connected = self.connect_again(&mut state);
        drop(in_flight);
        match connected {
            Ok(sessions) => {
                state.epoch += 1;
                state.link = Link::Up(sessions);
                self.available.store(true, Ordering::Release);
                tracing::info!(token = %self.label, "reconnected to the PKCS#11 token");
                Ok(())
            }
            Err(error) if sessions::is_login_refusal(&error) => {
                self.available.store(false, Ordering::Release);
                tracing::error!(
                    token = %self.label,
                    error = %chain(&error),
                    "the PKCS#11 token refused the login while reconnecting; not retrying"
                );
                state.link = Link::Refused(error.to_string());
                Err(error)
            }
            Err(error) => {
                self.available.store(false, Ordering::Release);
                tracing::warn!(
                    token = %self.label,
                    error = %chain(&error),
                    "cannot reconnect to the PKCS#11 token"
                );
                Err(self.unreachable(doing, error))
            }
        }
    }

    /// Drops the old sessions (first: a stale handle could alias a new session), then
    /// initialises, finds the slot and opens new sessions. When the token cannot be found or
    /// reached on the module as it is, reinitialises the module once and looks again: a
    /// module finds its tokens at C_Initialize, so one that lost a token (a network HSM gone
    /// for a while, SoftHSM's token directory moved away) only sees it back after that.
    fn connect_again(&self, state: &mut State) -> Result<Sessions, Pkcs11Error> {
        let call = self.module.call();
        state.link = Link::Down;
        let connect = || {
            self.initialize()
                .and_then(|()| slot::find(&self.module, &self.label))
                .and_then(|slot| self.open_sessions(slot))
        };
        match connect() {
            Err(error)
                if matches!(error, Pkcs11Error::TokenNotFound { .. }) || error.token_gone() =>
            {
                drop(call);
                tracing::info!(token = %self.label, error = %chain(&error), "reinitialising the PKCS#11 module to find the token again");
                self.module
                    .reinitialize()
                    .map_err(|source| self.module_error("reinitialising", source))?;
                let _call = self.module.call();
                connect()
            }
            result => result,
        }
    }

    fn initialize(&self) -> Result<(), Pkcs11Error> {
        self.module
            .initialize()
            .map_err(|source| self.module_error("initialising", source))
    }

    fn module_error(&self, doing: &'static str, source: CkError) -> Pkcs11Error {
        if connection_lost(&source) {
            self.failed(doing)(source)
        } else {
            Pkcs11Error::ModuleInit {
                path: self.module.path().to_owned(),
                source,
            }
        }
    }

    fn open_sessions(&self, slot: Slot) -> Result<Sessions, Pkcs11Error> {
        Sessions::open(&self.module, slot, &self.label, &self.pin, self.size)
    }

    fn failed(&self, doing: &'static str) -> impl FnOnce(CkError) -> Pkcs11Error + '_ {
        failed(&self.label, doing)
    }

    fn unreachable(
        &self,
        doing: &'static str,
        cause: impl Into<super::error::Cause>,
    ) -> Pkcs11Error {
        Pkcs11Error::Unreachable {
            label: self.label.clone(),
            doing,
            source: cause.into(),
        }
    }

    fn unreachable_if_lost(&self, doing: &'static str, error: Pkcs11Error) -> Pkcs11Error {
        if error.token_gone() {
            self.unreachable(doing, error)
        } else {
            error
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }
}
