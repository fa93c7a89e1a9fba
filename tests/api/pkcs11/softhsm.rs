//! SoftHSM for this test binary: a token directory of its own under Cargo's target tmp dir,
//! `SOFTHSM2_CONF` set once before the module is first initialised in the process (the
//! server's PKCS#11 context and these tests' share the process), and a fresh token per
//! test, initialised through cryptoki on the free slot.

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex, OnceLock, PoisonError,
    },
};

use cryptoki::{
    context::{CInitializeArgs, CInitializeFlags, Pkcs11},
    error::{Error as CkError, RvError},
    session::{Session, UserType},
    types::AuthPin,
};

pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
pub const USER_PIN: &str = "user-1234";
const SO_PIN: &str = "so-5678";

static DIR: OnceLock<PathBuf> = OnceLock::new();
static CONTEXT: OnceLock<Pkcs11> = OnceLock::new();
static TOKEN_INIT: Mutex<()> = Mutex::new(());
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// This process's token directory, `SOFTHSM2_CONF` pointing at it. Fails once, with what to
/// install, when SoftHSM is missing.
fn softhsm_dir() -> &'static Path {
    DIR.get_or_init(|| {
        assert!(
            Path::new(MODULE).exists(),
            "the PKCS#11 tests need SoftHSM: apt-get install softhsm2 opensc ({MODULE} is missing)"
        );
        let root = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("softhsm-api-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("tokens")).unwrap();
        std::fs::write(
            root.join("softhsm2.conf"),
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                root.join("tokens").display()
            ),
        )
        .unwrap();
        std::env::set_var("SOFTHSM2_CONF", root.join("softhsm2.conf"));
        root
    })
}

fn context() -> &'static Pkcs11 {
    let pkcs11 = CONTEXT.get_or_init(|| {
        softhsm_dir();
        Pkcs11::new(MODULE).unwrap()
    });
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => pkcs11,
        Err(error) => panic!("initialise SoftHSM: {error}"),
    }
}

/// The first slot whose token `wanted` accepts.
fn slot(wanted: impl Fn(&cryptoki::slot::TokenInfo) -> bool) -> Option<cryptoki::slot::Slot> {
    let pkcs11 = context();
    pkcs11
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|&slot| pkcs11.get_token_info(slot).is_ok_and(|info| wanted(&info)))
}

/// A fresh token with `USER_PIN`; returns its label.
pub fn new_token(prefix: &str) -> String {
    let label = format!("{prefix}-{}", COUNTER.fetch_add(1, Ordering::Relaxed));
    let _guard = TOKEN_INIT.lock().unwrap_or_else(PoisonError::into_inner);
    let pkcs11 = context();
    let slot = slot(|info| !info.token_initialized()).expect("a free slot");
    let so_pin = AuthPin::new(SO_PIN.into());
    pkcs11.init_token(slot, &so_pin, &label).unwrap();
    let session = pkcs11.open_rw_session(slot).unwrap();
    session.login(UserType::So, Some(&so_pin)).unwrap();
    session.init_pin(&AuthPin::new(USER_PIN.into())).unwrap();
    session.logout().unwrap();
    label
}

/// A logged-in session of the tests' own on token `label`, to look at its objects.
pub fn user_session(label: &str) -> Session {
    let pkcs11 = context();
    let slot = slot(|info| info.token_initialized() && info.label() == label).expect("the token");
    let session = pkcs11.open_rw_session(slot).unwrap();
    match session.login(UserType::User, Some(&AuthPin::new(USER_PIN.into()))) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => session,
        Err(error) => panic!("log in: {error}"),
    }
}
