//! The process's one context per PKCS#11 module, shared by every connection to its tokens.
//!
//! Every context of a module shares one module state, and unloading a module (the last
//! context dropped) while its own threads may still run is unsafe with some vendors'
//! libraries: a module, once loaded, stays loaded. Calls into it hold `call`, shared; a
//! reinitialisation (C_Finalize, which PKCS#11 forbids while other calls are in flight, then
//! C_Initialize) holds it alone.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};

use super::error::Pkcs11Error;

static MODULES: Mutex<Vec<Module>> = Mutex::new(Vec::new());

#[derive(Clone)]
pub(super) struct Module {
    path: PathBuf,
    pkcs11: Pkcs11,
    calls: Arc<RwLock<()>>,
}

impl Module {
    /// The process's context for the module at `path`, loading it the first time.
    pub(super) fn load(path: &Path) -> Result<Module, Pkcs11Error> {
        let mut modules = MODULES.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(module) = modules.iter().find(|module| module.path == path) {
            return Ok(module.clone());
        }
        let pkcs11 = Pkcs11::new(path).map_err(|source| match source {
            CkError::MissingSymbol(_) => Pkcs11Error::NotAModule {
                path: path.to_owned(),
            },
            source => Pkcs11Error::ModuleNotLoadable {
                path: path.to_owned(),
                source,
            },
        })?;
        let module = Module {
            path: path.to_owned(),
            pkcs11,
            calls: Arc::new(RwLock::new(())),
        };
        modules.push(module.clone());
        Ok(module)
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn pkcs11(&self) -> &Pkcs11 {
        &self.pkcs11
    }

    /// Held for the length of a call (or a few): a reinitialisation waits for it.
    pub(super) fn call(&self) -> RwLockReadGuard<'_, ()> {
        self.calls.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// C_Initialize; a module already initialised (by this or another connection) is fine.
    /// Call it holding `call`.
    pub(super) fn initialize(&self) -> Result<(), CkError> {
        match self
            .pkcs11
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
            Err(source) => Err(source),
        }
    }

    /// C_Finalize then C_Initialize, once no call is in flight: the module forgets its
    /// slots, sessions and logins, and finds its tokens again (a token it lost, such as a
    /// network HSM that went away or SoftHSM's token directory, may be back). Every session
    /// of the module ends; each connection reconnects at its next call. Call it holding no
    /// `call` guard and no session.
    pub(super) fn reinitialize(&self) -> Result<(), CkError> {
        let _alone = self.calls.write().unwrap_or_else(PoisonError::into_inner);
        match self.pkcs11.clone().finalize() {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiNotInitialized, _)) => {}
            Err(source) => return Err(source),
        }
        self.initialize()
    }
}
